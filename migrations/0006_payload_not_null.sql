-- outboxd migration 6: an event has a body. A NULL payload is not JSON `null`; outboxd makes such
-- a row a dead letter ("payload is NULL"), and this constraint refuses new ones at insert time,
-- in the writing transaction, where the application can still fix them.
--
-- NOT VALID: rows already in the table are not checked (no long scan, no failure on an upgrade
-- of a table that holds some); the relay dead-letters those, which the `failed_at` clause allows
-- (a constraint also applies to updates). `dlq retry` of such a row fails on this constraint
-- until the payload is repaired. Write `'null'::jsonb` for a body that is deliberately JSON null.

DO $$
BEGIN
    ALTER TABLE {table} ADD CONSTRAINT {payload_check}
        CHECK ({payload} IS NOT NULL OR {failed_at} IS NOT NULL) NOT VALID;
EXCEPTION WHEN duplicate_object THEN
    NULL; -- already there (applied by hand, or the migration history was reset)
END
$$;
