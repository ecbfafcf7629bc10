#!/usr/bin/env bash
# Backlog drain benchmark, polling mode into the embedded log, with PostgreSQL's own limits
# measured in the same run on the same throwaway cluster:
#   1. pgoutput decoding rate of the same rows (pg_logical_slot_get_binary_changes, fresh slot)
#   2. outboxd draining ROWS pending rows (~300-byte payloads, AGGS aggregates) into the log
#   3. pgbench: 8 clients inserting one outbox row per transaction (synchronous_commit=on)
# Prints rows/s for each, the ratios, and outboxd's peak RSS.
#
#   bench/drain.sh                      # 1,000,000 rows
#   ROWS=200000 bench/drain.sh          # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
AGGS=${AGGS:-10000}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-10}

bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
root=$(mktemp -d /tmp/outboxd-bench-XXXXXX)
chmod 755 "$root"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$root"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  [ -n "${relay:-}" ] && kill "$relay" 2>/dev/null || true
  as_pg "$bin/pg_ctl" -D "$root/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT

as_pg "$bin/initdb" -D "$root/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$bin/pg_ctl" -D "$root/data" -l "$root/server.log" -w start -o \
  "-p $port -k $root -c listen_addresses=127.0.0.1 -c wal_level=logical -c shared_buffers=512MB -c max_wal_size=8GB -c synchronous_commit=on" >/dev/null
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -c "CREATE DATABASE bench"
url="postgres://postgres@127.0.0.1:$port/bench"

cargo build --release --quiet --bin outboxd
export OUTBOXD_SOURCE__URL=$url OUTBOXD_SINK__LOG__DIR=$root/log OUTBOXD_HTTP__ENABLED=false
export OUTBOXD_CONFIG=/dev/null
target/release/outboxd migrate 2>/dev/null

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):,.0f}')"; }

# 1. PostgreSQL's decoding rate for the same rows, from a slot created before they are written.
psql -d bench -c "CREATE PUBLICATION bench_pub FOR TABLE outbox WITH (publish = 'insert')" \
  -c "SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')" >/dev/null
psql -d bench -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
  SELECT 'order', (i % $AGGS)::text, 'Step', jsonb_build_object('seq', i, 'pad', repeat('x', 270))
  FROM generate_series(1, $ROWS) AS i" -c "VACUUM ANALYZE outbox"
t0=$(now)
psql -d bench -At -c "SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench_slot', NULL, NULL,
  'proto_version', '1', 'publication_names', 'bench_pub')" >/dev/null
t1=$(now)
psql -d bench -c "SELECT pg_drop_replication_slot('bench_slot')" >/dev/null
decode=$(rate "$ROWS" "$t0" "$t1")

# 2. outboxd draining the backlog.
t0=$(now)
target/release/outboxd run 2>"$root/relay.log" &
relay=$!
until [ "$(psql -d bench -At -c "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL)")" = t ]; do
  sleep 0.2
done
t1=$(now)
rss=$(awk '/VmHWM/ {print $2 / 1024 " MiB"}' "/proc/$relay/status")
kill -TERM "$relay"; wait "$relay" || true; relay=
drain=$(rate "$ROWS" "$t0" "$t1")

# 3. The insert rate pgbench sustains: 8 clients, one row per transaction.
cat >"$root/insert.sql" <<SQL
\set agg random(1, $AGGS)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', :agg, 'Step', jsonb_build_object('pad', repeat('x', 270)));
SQL
tps=$(PGPASSWORD= command pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c 8 -j 2 -T "$PGBENCH_SECONDS" -f "$root/insert.sql" bench 2>/dev/null \
  | awk '/^tps/ {print int($3)}')

echo "rows:                        $ROWS ($AGGS aggregates, ~300-byte payloads)"
echo "pgoutput decoding:           $decode rows/s"
echo "outboxd drain (poll -> log): $drain rows/s"
echo "pgbench inserts (8 clients): $tps rows/s"
echo "outboxd peak RSS:            $rss"
python3 - "$decode" "$drain" "$tps" <<'PY'
import sys
d, r, t = (float(x.replace(',', '')) for x in sys.argv[1:])
print(f"drain / decoding:            {r/d:.2f}")
print(f"drain / insert rate:         {r/t:.2f}")
PY
