//! The outbox table, everything outboxd does to it in one place: its quoted names and the
//! statements run against it (this file), the migrations that create and upgrade it
//! ([`migrate`]), decoding its rows into events ([`decode`]), marking or deleting what was
//! delivered and recording dead letters ([`acker`]), deleting old sent rows ([`cleanup`]) and the
//! backlog statistics ([`stats`]).
//!
//! Every name comes from configuration and is quoted by [`quote_ident`]; values travel as
//! parameters. Statements are built once, at start-up.

pub mod acker;
pub mod blocked;
pub mod cleanup;
pub mod decode;
pub mod migrate;
pub mod stats;

use crate::config::SourceConfig;
use crate::pg::{quote_ident, quote_literal};

/// Quoted names of the outbox table and the statements built from them.
#[derive(Clone, Debug)]
pub struct OutboxTable {
    /// `"schema"."table"`, for messages and statements.
    pub qualified: String,
    /// Schema name as configured (unquoted), for catalog look-ups.
    pub schema: String,
    /// Table name as configured (unquoted), for catalog look-ups.
    pub name: String,
    /// Fetches pending rows in position order; `$1` is the limit, `$2` a `text[]` of aggregates
    /// to leave out (waiting to retry), `$3` the largest payload plus headers loaded
    /// (`source.max_event_bytes`), `$4` the bytes a batch may hold (`source.max_batch_bytes`).
    ///
    /// Sizes are checked in SQL before any body is sent: a row over `$3` comes without its
    /// payload and headers (and `fits` false), and the batch ends before the row that would
    /// take its loaded bytes past `$4` (the first row always comes). Each body is rendered once,
    /// and not at all when its stored size alone is over `$3`. The last column, `blocked_by`,
    /// is always NULL here (see [`Self::fetch_pending_blocking`]).
    pub fetch_pending: String,
    /// [`Self::fetch_pending`] that also leaves out every event after a dead letter of its
    /// aggregate (`on_dead_letter = "block_aggregate"`).
    ///
    /// It walks only rows not marked blocked (migration 8). A walked row that waits behind a
    /// dead letter comes back without a body and with that letter's position in the last
    /// column; the caller marks it ([`blocked::mark`]) and fetches again at once, so a blocked
    /// row is walked once, not on every fetch. Read-only, like [`Self::fetch_pending`]: it
    /// takes no lock that DDL or a `LOCK TABLE` would make it wait for.
    pub fetch_pending_blocking: String,
    /// Marks rows blocked: `$1` positions, `$2` the dead letters they wait behind.
    pub mark_blocked: String,
    /// The dead letters that pending rows are marked blocked behind and that are no longer in
    /// force (retried, skipped, deleted, or changed by hand). Reads one index entry per dead
    /// letter that blocks rows, whatever their number.
    pub released_letters: String,
    /// Clears the marks behind the dead letters `$1` (an `int8[]`).
    pub release_blocked: String,
    /// Records a failed attempt: `$1` positions, `$2` reasons, `$3` max attempts; rows reaching
    /// it become dead letters. Returns position, attempts and whether it is now dead.
    pub mark_retry: String,
    /// Marks rows sent; `$1` is an `int8[]` of positions.
    pub mark_sent: String,
    /// Deletes sent rows; `$1` is an `int8[]` of positions.
    pub delete_sent: String,
    /// Marks pending rows sent that match both `$1` positions and `$2` ids (parallel arrays);
    /// returns their positions.
    pub mark_delivered: String,
    /// Deletes pending rows that match both `$1` positions and `$2` ids (parallel arrays);
    /// returns their positions.
    pub delete_delivered: String,
    /// Marks rows failed; `$1` positions, `$2` reasons, as parallel arrays.
    pub mark_failed: String,
    /// Whether the NOTIFY trigger belongs on the table: polling mode with `source.notify`.
    /// Logical mode reads the WAL and needs no wake-up; the trigger would only make `PREPARE
    /// TRANSACTION` fail for every transaction that writes an event.
    pub notify: bool,
    /// Values substituted into the migration templates.
    pub template_vars: Vec<(&'static str, String)>,
}

impl OutboxTable {
    /// Builds names and statements for the configured table and columns.
    pub fn new(source: &SourceConfig) -> Self {
        let c = &source.columns;
        let q = quote_ident;
        let qualified = format!("{}.{}", q(&source.table.schema), q(&source.table.name));
        let mark_sent = format!(
            "UPDATE {qualified} SET {sent} = now(), {attempts} = {attempts} + 1 \
             WHERE {pos} = ANY($1::int8[]) AND {sent} IS NULL",
            sent = q(&c.sent_at),
            attempts = q(&c.attempts),
            pos = q(&c.position),
        );
        let delete_sent = format!(
            "DELETE FROM {qualified} WHERE {} = ANY($1::int8[])",
            q(&c.position)
        );
        let mark_delivered = format!(
            "UPDATE {qualified} AS o SET {sent} = now(), {attempts} = o.{attempts} + 1 \
             FROM unnest($1::int8[], $2::text[]) AS d(pos, id) \
             WHERE o.{pos} = d.pos AND o.{id}::text = d.id AND o.{sent} IS NULL \
             AND o.{failed} IS NULL RETURNING o.{pos}",
            sent = q(&c.sent_at),
            attempts = q(&c.attempts),
            pos = q(&c.position),
            id = q(&c.id),
            failed = q(&c.failed_at),
        );
        let delete_delivered = format!(
            "DELETE FROM {qualified} AS o USING unnest($1::int8[], $2::text[]) AS d(pos, id) \
             WHERE o.{pos} = d.pos AND o.{id}::text = d.id AND o.{sent} IS NULL \
             AND o.{failed} IS NULL RETURNING o.{pos}",
            pos = q(&c.position),
            id = q(&c.id),
            sent = q(&c.sent_at),
            failed = q(&c.failed_at),
        );
        let mark_failed = format!(
            "UPDATE {qualified} AS o SET {failed} = now(), {attempts} = o.{attempts} + 1, \
             {error} = r.reason \
             FROM unnest($1::int8[], $2::text[]) AS r(pos, reason) \
             WHERE o.{pos} = r.pos AND o.{sent} IS NULL",
            failed = q(&c.failed_at),
            attempts = q(&c.attempts),
            error = q(&c.last_error),
            pos = q(&c.position),
            sent = q(&c.sent_at),
        );
        let name = &source.table.name;
        let template_vars = vec![
            ("table", qualified.clone()),
            ("schema", q(&source.table.schema)),
            ("id", q(&c.id)),
            ("aggregate_type", q(&c.aggregate_type)),
            ("aggregate_id", q(&c.aggregate_id)),
            ("event_type", q(&c.event_type)),
            ("payload", q(&c.payload)),
            ("headers", q(&c.headers)),
            ("created_at", q(&c.created_at)),
            ("position", q(&c.position)),
            ("txid", q(&c.txid)),
            ("sent_at", q(&c.sent_at)),
            ("attempts", q(&c.attempts)),
            ("last_error", q(&c.last_error)),
            ("failed_at", q(&c.failed_at)),
            ("skipped_at", q(&c.skipped_at)),
            ("blocked_by", q(&c.blocked_by)),
            ("position_index", q(&derived_name(name, "position_key"))),
            ("pending_index", q(&derived_name(name, "pending_idx"))),
            ("failed_index", q(&derived_name(name, "failed_idx"))),
            ("dead_index", q(&derived_name(name, "dead_idx"))),
            ("dead_hash_index", q(&derived_name(name, "dead_hash_idx"))),
            ("sent_index", q(&derived_name(name, "sent_idx"))),
            ("ready_index", q(&derived_name(name, "ready_idx"))),
            ("blocked_index", q(&derived_name(name, "blocked_idx"))),
            ("payload_check", q(&derived_name(name, "payload_check"))),
            ("trigger", q(&derived_name(name, "notify"))),
            ("channel", quote_literal(&source.channel())),
        ];
        let mut table = OutboxTable {
            qualified,
            schema: source.table.schema.clone(),
            name: name.clone(),
            fetch_pending: String::new(),
            fetch_pending_blocking: String::new(),
            mark_blocked: String::new(),
            released_letters: String::new(),
            release_blocked: String::new(),
            mark_retry: String::new(),
            mark_sent,
            delete_sent,
            mark_delivered,
            delete_delivered,
            mark_failed,
            notify: source.notify && source.mode == crate::config::SourceMode::Poll,
            template_vars,
        };
        // Innermost: the pending rows, each body rendered at most once (the lateral subquery
        // with OFFSET 0 is not flattened) and only if its stored size could fit.
        let fetch = "SELECT o.{position} AS pos, \
             (o.{txid} IS NULL OR o.{txid} < pg_snapshot_xmin(pg_current_snapshot())) AS ready, \
             o.{id}::text AS id, o.{aggregate_type}::text AS aggregate_type, \
             o.{aggregate_id}::text AS aggregate_id, o.{event_type}::text AS event_type, \
             r.payload, r.headers, o.{created_at}::timestamptz AS created_at, \
             coalesce(octet_length(r.payload), pg_column_size(o.{payload}), 0)::int8 \
             + coalesce(octet_length(r.headers), pg_column_size(o.{headers}), 0)::int8 AS size \
             FROM {table} AS o CROSS JOIN LATERAL (SELECT \
             CASE WHEN pg_column_size(o.{payload}) <= $3::int8 THEN o.{payload}::text END AS payload, \
             CASE WHEN pg_column_size(o.{headers}) <= $3::int8 THEN o.{headers}::text END AS headers \
             OFFSET 0) AS r \
             WHERE o.{sent_at} IS NULL AND o.{failed_at} IS NULL \
             AND (o.{aggregate_id} IS NULL OR o.{aggregate_id} <> ALL($2::text[]))";
        // Each aggregate's first dead letter in force, read once per fetch from the failed
        // index (migration 3; dead letters are few).
        let dead = "WITH dead AS MATERIALIZED (SELECT {aggregate_id} AS aggregate, \
             min({position}) AS first FROM {table} \
             WHERE {failed_at} IS NOT NULL AND {skipped_at} IS NULL GROUP BY 1), ";
        // The blocking fetch walks the pending rows not marked blocked (migration 8's index) in
        // position order, up to the limit, noting for each the dead letter it waits behind; the
        // caller marks those, so later fetches walk past them for free (docs/BENCHMARKS.md).
        let walk = "walk AS MATERIALIZED (SELECT w.{position} AS pos, (SELECT d.first \
             FROM dead AS d WHERE d.aggregate = w.{aggregate_id} AND d.first < w.{position}) \
             AS behind FROM {table} AS w \
             WHERE w.{sent_at} IS NULL AND w.{failed_at} IS NULL AND w.{blocked_by} IS NULL \
             AND (w.{aggregate_id} IS NULL OR w.{aggregate_id} <> ALL($2::text[])) \
             ORDER BY w.{position} LIMIT $1) ";
        // An array, so the rows are found by position (the unique index), not by walking the
        // pending index past the blocked ones again.
        let free = " AND o.{position} = ANY(ARRAY(SELECT pos FROM walk WHERE behind IS NULL))";
        let order = " ORDER BY o.{position} LIMIT $1";
        // Then: whether each fits, and the loaded bytes before it, to end the batch in budget.
        let bounded = |rows: String| {
            format!(
                "SELECT c.pos, c.ready, c.id, c.aggregate_type, c.aggregate_id, c.event_type, \
                 CASE WHEN c.fits THEN c.payload END, CASE WHEN c.fits THEN c.headers END, \
                 c.created_at, c.size, c.fits, NULL::int8 AS blocked_by FROM (SELECT b.*, \
                 b.size <= $3::int8 AS fits, \
                 coalesce(sum(CASE WHEN b.size <= $3::int8 THEN b.size ELSE 0 END) OVER (ORDER BY \
                 b.pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                 FROM ({rows}) AS b) AS c \
                 WHERE c.before = 0 OR c.before + CASE WHEN c.fits THEN c.size ELSE 0 END <= $4::int8"
            )
        };
        // The rows found blocked, without bodies, with the dead letter each waits behind.
        let blocked = " UNION ALL SELECT k.pos, true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
             0::int8, true, k.behind FROM walk AS k WHERE k.behind IS NOT NULL ORDER BY 1";
        table.fetch_pending = table.render(&format!(
            "{} ORDER BY 1",
            bounded(format!("{fetch}{order}"))
        ));
        table.fetch_pending_blocking = table.render(&format!(
            "{dead}{walk}{}{blocked}",
            bounded(format!("{fetch}{free}{order}"))
        ));
        table.mark_blocked = table.render(
            "UPDATE {table} AS p SET {blocked_by} = m.behind \
             FROM unnest($1::int8[], $2::int8[]) AS m(pos, behind) \
             WHERE p.{position} = m.pos AND p.{sent_at} IS NULL AND p.{failed_at} IS NULL \
             AND p.{blocked_by} IS NULL",
        );
        // The distinct dead letters that rows are marked blocked behind, one index descent
        // each (a loose index scan), and of those the ones no longer in force.
        table.released_letters = table.render(
            "WITH RECURSIVE behind(p) AS ((SELECT {blocked_by} FROM {table} \
             WHERE {blocked_by} IS NOT NULL AND {sent_at} IS NULL AND {failed_at} IS NULL \
             ORDER BY {blocked_by} LIMIT 1) UNION ALL SELECT (SELECT o.{blocked_by} \
             FROM {table} AS o WHERE o.{blocked_by} > b.p AND o.{sent_at} IS NULL \
             AND o.{failed_at} IS NULL ORDER BY o.{blocked_by} LIMIT 1) FROM behind AS b \
             WHERE b.p IS NOT NULL) \
             SELECT b.p FROM behind AS b WHERE b.p IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {table} AS d WHERE d.{position} = b.p \
             AND d.{failed_at} IS NOT NULL AND d.{skipped_at} IS NULL)",
        );
        table.release_blocked = table.render(
            "UPDATE {table} SET {blocked_by} = NULL WHERE {blocked_by} = ANY($1::int8[]) \
             AND {sent_at} IS NULL AND {failed_at} IS NULL",
        );
        table.mark_retry = table.render(
            "UPDATE {table} AS o SET {attempts} = o.{attempts} + 1, {last_error} = r.reason, \
             {failed_at} = CASE WHEN o.{attempts} + 1 >= $3 THEN now() END \
             FROM unnest($1::int8[], $2::text[]) AS r(pos, reason) \
             WHERE o.{position} = r.pos AND o.{sent_at} IS NULL \
             RETURNING o.{position}, o.{attempts}, o.{failed_at} IS NOT NULL, o.{aggregate_id}::text",
        );
        table
    }

    /// The advisory lock key that elects one active relay per outbox table.
    ///
    /// Derived from the table's qualified name, so relays of different outboxes in one database
    /// do not exclude each other; the high half is constant to keep clear of application keys
    /// built from small integers.
    pub fn leader_lock_key(&self) -> i64 {
        let low = crc32c::crc32c(format!("outboxd:{}", self.qualified).as_bytes());
        ((0x6f75_7462_i64) << 32) | i64::from(low)
    }

    /// Fills a statement template's `{name}` placeholders with their quoted values.
    ///
    /// One pass over the template: each placeholder is looked up and its value appended, and
    /// the scan continues after the placeholder, never inside the inserted text. A configured
    /// name that itself looks like a placeholder (`a{sent_at}`) is therefore only ever a quoted
    /// identifier, not a second substitution. Braces that are no known placeholder stay as
    /// written.
    pub fn render(&self, template: &str) -> String {
        let mut sql = String::with_capacity(template.len() * 2);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            sql.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let known = after.find('}').and_then(|close| {
                let key = &after[..close];
                self.template_vars
                    .iter()
                    .find(|(name, _)| *name == key)
                    .map(|(_, value)| (value, close))
            });
            match known {
                Some((value, close)) => {
                    sql.push_str(value);
                    rest = &after[close + 1..];
                }
                None => {
                    sql.push('{');
                    rest = after;
                }
            }
        }
        sql.push_str(rest);
        sql
    }
}

/// A name for an index or trigger derived from the table's, kept within PostgreSQL's 63 bytes.
fn derived_name(table: &str, suffix: &str) -> String {
    let budget = 63 - suffix.len() - "outboxd__".len();
    let mut end = table.len().min(budget);
    while !table.is_char_boundary(end) {
        end -= 1;
    }
    format!("outboxd_{}_{suffix}", &table[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_config_are_quoted_in_every_statement() {
        let mut source = SourceConfig::default();
        source.table.name = "odd\"name".into();
        let table = OutboxTable::new(&source);
        assert_eq!(table.qualified, "\"public\".\"odd\"\"name\"");
        assert!(
            table
                .fetch_pending
                .contains("FROM \"public\".\"odd\"\"name\"")
        );
        let sql = table.render("CREATE TRIGGER {trigger} ON {table} ({channel})");
        assert_eq!(
            sql,
            "CREATE TRIGGER \"outboxd_odd\"\"name_notify\" ON \"public\".\"odd\"\"name\" \
             ('outboxd_odd\"name')"
        );
    }

    #[test]
    fn a_name_that_looks_like_a_placeholder_is_not_substituted_again() {
        let mut source = SourceConfig::default();
        source.columns.txid = "a{sent_at}".into();
        source.columns.sent_at = " xid8; DROP TABLE victim; --".into();
        source.channel = Some("c{table}'".into());
        let table = OutboxTable::new(&source);
        let sql = table.render("ALTER {table} ADD {txid} xid8; SELECT {channel}, {unknown}");
        assert_eq!(
            sql,
            "ALTER \"public\".\"outbox\" ADD \"a{sent_at}\" xid8; SELECT 'c{table}''', {unknown}"
        );
    }

    #[test]
    fn derived_names_fit_postgres_limit() {
        let long = "x".repeat(63);
        assert!(derived_name(&long, "pending_idx").len() <= 63);
    }

    #[test]
    fn lock_key_differs_per_table() {
        let a = OutboxTable::new(&SourceConfig::default());
        let mut other = SourceConfig::default();
        other.table.name = "outbox2".into();
        assert_ne!(
            a.leader_lock_key(),
            OutboxTable::new(&other).leader_lock_key()
        );
    }
}
