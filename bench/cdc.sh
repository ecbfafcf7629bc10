#!/usr/bin/env bash
# Change data capture drain (issue #20): ROWS single-row UPDATEs (one transaction each) of a
# table in `source.mode = "cdc"`, drained into the embedded log, against PostgreSQL streaming the
# same changes to its own pg_recvlogical (to /dev/null) in the same run, on one throwaway cluster.
# Results: docs/BENCHMARKS.md.
#
#   bench/cdc.sh                  # 1,000,000 updates
#   ROWS=200000 bench/cdc.sh      # quicker
#   BENCH_PROFILE=profiling bench/cdc.sh      # the same code with symbols (what was measured)
#   BENCH_PROFILE=profiling BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" \
#     ROWS=20000 bench/cdc.sh      # instruction counts per function (callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
TABLE_ROWS=${TABLE_ROWS:-10000}

. bench/lib.sh
BENCH_PG_OPTS="-c max_replication_slots=20 -c max_wal_senders=20" bench_setup cdc

psql -c "CREATE DATABASE cdc"
psql -d cdc -c "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, price numeric, \
  name text, at timestamptz)" \
  -c "INSERT INTO items SELECT i, 0, i / 100.0, md5(i::text), now() FROM generate_series(1, $TABLE_ROWS) i"
export OUTBOXD_CONFIG=/dev/null OUTBOXD_LOGGING__LEVEL=warn
listen=127.0.0.1:$(free_port)
envs=(OUTBOXD_SOURCE__URL="postgres://postgres@127.0.0.1:$port/cdc" OUTBOXD_SOURCE__MODE=cdc
  OUTBOXD_SOURCE__CDC__TABLES=public.items OUTBOXD_SOURCE__LOGICAL__SLOT=slot_cdc
  OUTBOXD_SOURCE__LOGICAL__PUBLICATION=pub_cdc OUTBOXD_SINK__TYPE=log
  OUTBOXD_SINK__LOG__DIR="$root/log" OUTBOXD_HTTP__LISTEN="$listen")
env "${envs[@]}" "$outboxd" migrate >"$root/migrate.log" 2>&1 || { cat "$root/migrate.log" >&2; exit 1; }
psql -d cdc -c "SELECT pg_create_logical_replication_slot('cdc_stream', 'pgoutput')" >/dev/null

echo "writing $ROWS single-row updates..." >&2
t0=$(now)
psql -d cdc -c "SET synchronous_commit = off" -c "DO \$\$ BEGIN
  FOR i IN 1..$ROWS LOOP
    UPDATE items SET v = v + 1 WHERE id = 1 + i % $TABLE_ROWS;
    COMMIT;
  END LOOP; END \$\$"
t1=$(now)
end_lsn=$(psql -d cdc -At -c "SELECT pg_current_wal_lsn()")
echo "updates: $(calc "int($ROWS/($t1-$t0))") rows/s" >&2
psql -d cdc -c CHECKPOINT

t0=$(now)
command pg_recvlogical -h 127.0.0.1 -p "$port" -U postgres -d cdc --slot cdc_stream \
  --start --endpos "$end_lsn" -o proto_version=1 -o publication_names=pub_cdc \
  --no-loop -F 0 -f /dev/null
t1=$(now)
stream_rate=$(calc "int($ROWS/($t1-$t0))")
echo "pg_recvlogical: $stream_rate changes/s ($(calc "round($t1-$t0,2)") s)"

delivered() {
  { curl -s "http://$listen/metrics" || true; } |
    awk 'index($0, "outboxd_events_published_total{sink=\"log\",outcome=\"delivered\"}") == 1 {v=$2} END {print v+0}'
}
confirmed_past() {
  psql -d cdc -At -c "SELECT confirmed_flush_lsn >= '$end_lsn' FROM pg_replication_slots WHERE slot_name = 'slot_cdc'"
}
t0=$(now)
# BENCH_WRAP runs the relay under another program in the same process (valgrind).
env "${envs[@]}" ${BENCH_WRAP:-} "$outboxd" run 2>"$root/relay.log" &
relay=$!
while :; do
  got=$(delivered)
  if [ "${got%.*}" -ge "$ROWS" ] && [ "$(confirmed_past)" = t ]; then break; fi
  kill -0 "$relay" 2>/dev/null || { cat "$root/relay.log" >&2; exit 1; }
  sleep 0.05
done
t1=$(now)
relay_usage "$ROWS"
rate=$(calc "int($ROWS/($t1-$t0))")
kill -TERM "$relay"; wait "$relay" 2>/dev/null || true; relay=
echo "outboxd cdc -> log: $rate changes/s ($(calc "round($t1-$t0,2)") s), $(calc "round($rate/$stream_rate,2)") x pg_recvlogical, relay CPU $cpu µs/change, peak RSS $rss MiB"
