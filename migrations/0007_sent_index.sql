-- outboxd migration 7: find sent rows by when they were sent.
--
-- Cleanup deletes sent rows older than the retention, oldest first, and `status` reads the
-- last confirmation. Without this index both walked every kept sent row (or, for the last
-- confirmation, every pending row after it) on every round, even when nothing had expired.
-- Partial: pending rows are not in it.

CREATE INDEX IF NOT EXISTS {sent_index} ON {table} ({sent_at})
    WHERE {sent_at} IS NOT NULL;
