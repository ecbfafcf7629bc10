-- outboxd migration 5: index dead letters by a hash of the aggregate id, not the id itself.
--
-- A btree index entry must fit in about a third of a page (2,704 bytes). Migration 4 indexed
-- the aggregate id as it is, so marking failed a row whose id is a long incompressible string
-- failed with "index row size exceeds btree maximum" (54000): the dead letter could not be
-- recorded and the relay stopped on every start. md5 of the id is 32 bytes whatever its length;
-- queries compare the hash (to use this index) and then the id itself, so two ids with the same
-- hash never block each other.

DROP INDEX IF EXISTS {schema}.{dead_index};

CREATE INDEX IF NOT EXISTS {dead_hash_index} ON {table} (md5({aggregate_id}::text), {position})
    WHERE {failed_at} IS NOT NULL AND {skipped_at} IS NULL;
