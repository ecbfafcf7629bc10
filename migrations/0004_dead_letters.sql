-- outboxd migration 4: dead letters an operator can skip, and finding an aggregate's dead letter
-- quickly (later events of that aggregate wait behind it with on_dead_letter = "block_aggregate").

ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {skipped_at} timestamptz;

CREATE INDEX IF NOT EXISTS {dead_index} ON {table} ({aggregate_id}, {position})
    WHERE {failed_at} IS NOT NULL AND {skipped_at} IS NULL;
