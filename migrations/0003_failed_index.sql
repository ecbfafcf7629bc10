-- outboxd migration 3: find failed events (dead letters) without scanning sent rows.

CREATE INDEX IF NOT EXISTS {failed_index} ON {table} ({position})
    WHERE {failed_at} IS NOT NULL;
