-- outboxd migration 2: wake the relay on commit.
--
-- One notification per inserting statement (not per row); PostgreSQL delivers it at commit and
-- folds duplicates within a transaction, so a bulk insert costs one wake-up. The channel is a
-- trigger argument, so one function serves every outbox table in the schema.

CREATE OR REPLACE FUNCTION {schema}.outboxd_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {trigger} ON {table};

CREATE TRIGGER {trigger}
    AFTER INSERT ON {table}
    FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.outboxd_notify({channel});
