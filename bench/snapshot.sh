#!/usr/bin/env bash
# Initial snapshot (issue #22): a ROWS-row table snapshotted into the embedded log by a relay in
# `source.mode = "cdc"` (nothing else changing), against PostgreSQL's own
# `COPY (SELECT * FROM items) TO '/dev/null'` of the same table in the same run, on one throwaway
# cluster. Results: docs/BENCHMARKS.md.
#
#   bench/snapshot.sh                  # 1,000,000 rows
#   ROWS=200000 bench/snapshot.sh      # quicker
#   BENCH_PROFILE=profiling bench/snapshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}

. bench/lib.sh
bench_setup snapshot

psql -c "CREATE DATABASE snap"
psql -d snap -c "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, price numeric, \
  name text, at timestamptz)" \
  -c "INSERT INTO items SELECT i, 0, i / 100.0, md5(i::text), now() FROM generate_series(1, $ROWS) i" \
  -c "VACUUM ANALYZE items"

t0=$(now)
psql -d snap -c "COPY (SELECT * FROM items ORDER BY id) TO '/dev/null'"
t1=$(now)
copy_rate=$(calc "int($ROWS/($t1-$t0))")
echo "COPY (SELECT ...) TO /dev/null: $copy_rate rows/s ($(calc "round($t1-$t0,2)") s)"

export OUTBOXD_CONFIG=/dev/null OUTBOXD_LOGGING__LEVEL=warn
listen=127.0.0.1:$(free_port)
envs=(OUTBOXD_SOURCE__URL="postgres://postgres@127.0.0.1:$port/snap" OUTBOXD_SOURCE__MODE=cdc
  OUTBOXD_SOURCE__CDC__TABLES=public.items OUTBOXD_SOURCE__LOGICAL__SLOT=slot_snap
  OUTBOXD_SOURCE__LOGICAL__PUBLICATION=pub_snap OUTBOXD_SINK__TYPE=log
  OUTBOXD_SINK__LOG__DIR="$root/log" OUTBOXD_HTTP__LISTEN="$listen")
env "${envs[@]}" "$outboxd" migrate >"$root/migrate.log" 2>&1 || { cat "$root/migrate.log" >&2; exit 1; }

state() { psql -d snap -At -c "SELECT state FROM outboxd_snapshots WHERE table_name = 'items'"; }
t0=$(now)
# BENCH_WRAP runs the relay under another program (perf record, valgrind).
env "${envs[@]}" ${BENCH_WRAP:-} "$outboxd" run 2>"$root/relay.log" &
relay=$!
while [ "$(state)" != done ]; do
  kill -0 "$relay" 2>/dev/null || { cat "$root/relay.log" >&2; exit 1; }
  sleep 0.05
done
t1=$(now)
relay_usage "$ROWS"

rate=$(calc "int($ROWS/($t1-$t0))")
kill -TERM "$relay"; wait "$relay" 2>/dev/null || true; relay=
echo "outboxd snapshot -> log: $rate rows/s ($(calc "round($t1-$t0,2)") s), $(calc "round($rate/$copy_rate,2)") x COPY, relay CPU $cpu µs/row, peak RSS $rss MiB"
