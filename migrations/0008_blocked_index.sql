-- outboxd migration 8: pending rows parked behind a dead letter stay out of the fetch's index.
--
-- With on_dead_letter = "block_aggregate" every fetch walked all pending rows of aggregates
-- waiting behind a dead letter (they sit in the pending index among the deliverable ones). The
-- fetch now marks a row it finds blocked with the position of the dead letter it waits behind
-- ({blocked_by}), and walks only the rows not so marked ({ready_index}). The marks are cleared
-- when that dead letter is retried, skipped or gone ({blocked_index} finds them by it).
--
-- A nullable column without default: no table rewrite. Rows stay in the pending index, which
-- on_dead_letter = "skip", the statistics and `status` still read.

ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {blocked_by} bigint;

CREATE INDEX IF NOT EXISTS {ready_index} ON {table} ({position})
    WHERE {sent_at} IS NULL AND {failed_at} IS NULL AND {blocked_by} IS NULL;

CREATE INDEX IF NOT EXISTS {blocked_index} ON {table} ({blocked_by})
    WHERE {blocked_by} IS NOT NULL AND {sent_at} IS NULL AND {failed_at} IS NULL;
