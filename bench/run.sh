#!/usr/bin/env bash
# outboxd against PostgreSQL's own limits, in one run on one throwaway cluster (issue #9).
# Results: docs/BENCHMARKS.md. Every measured line is also appended to $OUT (TSV, under target/).
#
#   bench/run.sh                         # everything, 1,000,000-row backlogs (~20 min)
#   ROWS=200000 SUSTAIN_SECONDS=10 LATENCY_SECONDS=10 bench/run.sh     # quicker
#   STEPS="limits drain" DRAINS="poll:log poll:log:batch=5000" bench/run.sh
#   PERF=1 DRAINS="poll:log logical:log" STEPS=drain bench/run.sh     # perf profile of drains
#   BENCH_OUTBOXD=/tmp/outboxd-before STEPS=drain bench/run.sh      # another build, for before/after
#   BENCH_PROFILE=profiling STEPS=drain bench/run.sh                # time the build PERF=1 uses
#   PERF=1 PERF_CALLGRAPH=dwarf PERF_FREQ=199 KEEP_PERF=/tmp/p.data ...   # with call graphs, kept
#   BENCH_PROFILE=profiling BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" \
#     ROWS=50000 STEPS=drain DRAINS=logical:log bench/run.sh   # instructions, whatever the load
#
# Steps (STEPS, default all, in this order):
#   limits   pgoutput decoding rate of ROWS rows (pg_logical_slot_get_binary_changes over a slot
#            created before they were written), the rate PostgreSQL streams them to its own
#            pg_recvlogical (to /dev/null), and the pgbench insert rate (8 clients, one row per
#            transaction, synchronous_commit=on, PGBENCH_SECONDS)
#   drain    per DRAINS entry MODE:SINK[:batch=N,lanes=N,on_sent=delete,queue=quorum,durability=D,
#            webhook_batch=N]:
#            a fresh database with ROWS pending
#            rows (AGGS aggregates, ~300-byte payloads, committed INSERT_CHUNK rows per
#            transaction), then outboxd started and timed until every row is acknowledged
#            (poll: marked sent; logical: /metrics delivered counter = ROWS and the slot's
#            confirmed_flush_lsn past the last insert), and its peak RSS (VmHWM). A webhook drain
#            first measures the receiver's own ceiling (bench_webhook_receiver, a minimal hyper
#            server answering 204) with wrk (WRK_CONNECTIONS connections, WRK_SECONDS, POSTs of a
#            relay-shaped body), then drains into a fresh receiver and records drain ÷ ceiling
#   sustain  relay (poll and logical, log sink) running while pgbench inserts at full speed for
#            SUSTAIN_SECONDS: delivered ÷ inserted at the end, events behind and catch-up time
#   brokers  the NATS and Redis servers' own ceilings for ROWS messages shaped as the relay's
#            (~300-byte body, outboxd's headers or entry fields): JetStream publishes with
#            Nats-Msg-Id and acknowledgements from one connection, 1,000 in flight (bench_broker
#            nats-ceiling), and redis-benchmark XADD pipelined 100 deep from one connection, then
#            from 4 (compare with the drains logical:nats and logical:redis)
#   latency  commit → sink-confirmed latency at LATENCY_RATE events/s for LATENCY_SECONDS,
#            poll and logical, log sink, LATENCY_CONNECTIONS writers (bench/latency.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
AGGS=${AGGS:-10000}
INSERT_CHUNK=${INSERT_CHUNK:-1000}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-15}
SUSTAIN_SECONDS=${SUSTAIN_SECONDS:-30}
LATENCY_SECONDS=${LATENCY_SECONDS:-30}
LATENCY_RATE=${LATENCY_RATE:-1000}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-32}
STEPS=${STEPS:-limits drain sustain latency}
DRAINS=${DRAINS:-poll:log logical:log poll:kafka logical:kafka poll:amqp logical:amqp poll:amqp:queue=quorum logical:amqp:queue=quorum poll:log:on_sent=delete poll:log:batch=5000 logical:log:batch=5000}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PERF=${PERF:-0}
OUT=${OUT:-target/bench/results-$(date +%Y%m%d-%H%M%S).tsv}

bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
root=$(mktemp -d /tmp/outboxd-bench-XXXXXX)
chmod 755 "$root"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$root"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
relay= broker_pid=
cleanup() {
  [ -n "$relay" ] && kill "$relay" 2>/dev/null || true
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
  as_pg "$bin/pg_ctl" -D "$root/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT

# The release profile ships stripped; profiles need symbols, which the `profiling` profile
# (release plus debug info, Cargo.toml) keeps.
# BENCH_PROFILE=profiling times the build perf profiles (the same code, with symbols), so one
# build serves both.
profile=${BENCH_PROFILE:-release}
[ "$PERF" != 0 ] && profile=profiling
echo "building ($profile)..." >&2
cargo build --profile "$profile" --quiet --bin outboxd --example bench_latency --example bench_broker \
  --example bench_webhook_receiver
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
outboxd=${BENCH_OUTBOXD:-$target_dir/$profile/outboxd}
helper=$target_dir/$profile/examples/bench_broker
latency=$target_dir/$profile/examples/bench_latency
receiver=$target_dir/$profile/examples/bench_webhook_receiver

as_pg "$bin/initdb" -D "$root/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$bin/pg_ctl" -D "$root/data" -l "$root/server.log" -w start -o \
  "-p $port -k $root -c listen_addresses=127.0.0.1 -c wal_level=logical -c shared_buffers=1GB -c max_wal_size=8GB -c synchronous_commit=on -c max_replication_slots=20 -c max_wal_senders=20" >/dev/null
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
url_of() { echo "postgres://postgres@127.0.0.1:$port/$1"; }

now() { date +%s.%N; }
load1() { cut -d' ' -f1 /proc/loadavg; }
calc() { python3 -c "print($1)"; }
mkdir -p "$(dirname "$OUT")"
record() { # step name value unit note...
  local line
  line=$(printf '%s\t%s\t%s\t%s\tload1=%s\t%s' "$1" "$2" "$3" "$4" "$(load1)" "${5:-}")
  echo "$line" >>"$OUT"
  printf '%-8s %-34s %14s %-10s %s\n' "$1" "$2" "$3" "$4" "load1=$(load1) ${5:-}"
}
{
  echo "# $(date -Is) $(git rev-parse --short HEAD 2>/dev/null) ROWS=$ROWS AGGS=$AGGS"
  echo "# $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1048576)" GiB"}' /proc/meminfo), $(uname -r), $("$bin/postgres" --version)"
} >>"$OUT"

# The relay's environment: no config file, everything from OUTBOXD_*.
export OUTBOXD_CONFIG=/dev/null OUTBOXD_LOGGING__LEVEL=warn
relay_env() { # db mode sink tuning -> env assignments on stdout
  local db=$1 mode=$2 sink=$3 tuning=$4
  echo "OUTBOXD_SOURCE__URL=$(url_of "$db")"
  echo "OUTBOXD_SOURCE__MODE=$mode"
  echo "OUTBOXD_SOURCE__LOGICAL__SLOT=slot_$db"
  echo "OUTBOXD_SOURCE__LOGICAL__PUBLICATION=pub_$db"
  echo "OUTBOXD_SINK__TYPE=$sink"
  echo "OUTBOXD_SINK__LOG__DIR=$root/log_$db"
  echo "OUTBOXD_HTTP__LISTEN=127.0.0.1:$(free_port)"
  local kv
  for kv in ${tuning//,/ }; do
    case $kv in
      batch=*) echo "OUTBOXD_SOURCE__BATCH_SIZE=${kv#batch=}" ;;
      lanes=*) echo "OUTBOXD_RELAY__LANES=${kv#lanes=}" ;;
      durability=*) echo "OUTBOXD_SINK__LOG__DURABILITY=${kv#durability=}" ;;
      on_sent=*) echo "OUTBOXD_SOURCE__ON_SENT=${kv#on_sent=}" ;;
      queue=*) ;; # RabbitMQ queue type, read by drain_one
      webhook_batch=*) echo "OUTBOXD_SINK__WEBHOOK__BATCH=true"
        echo "OUTBOXD_SINK__WEBHOOK__BATCH_MAX=${kv#webhook_batch=}" ;;
      *) echo "unknown tuning $kv" >&2; exit 2 ;;
    esac
  done
}
# Run "$@" with the relay environment of the current scenario ($envfile).
with_env() { env $(cat "$envfile") "$@"; }

new_db() { # name mode -> database with the outbox migrated (and slot + publication if logical)
  psql -c "CREATE DATABASE $1"
  envfile=$root/env_$1
  relay_env "$1" "$2" log "" >"$envfile"
  with_env "$outboxd" migrate >"$root/migrate_$1.log" 2>&1 || { cat "$root/migrate_$1.log" >&2; exit 1; }
}
insert_rows() { # db rows: ROWS rows in transactions of INSERT_CHUNK
  psql -d "$1" -c "DO \$\$ BEGIN
    FOR c IN 0..($2 - 1) / $INSERT_CHUNK LOOP
      INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
      SELECT 'order', (i % $AGGS)::text, 'Step', jsonb_build_object('seq', i, 'pad', repeat('x', 270))
      FROM generate_series(c * $INSERT_CHUNK + 1, least((c + 1) * $INSERT_CHUNK, $2)) AS i;
      COMMIT;
    END LOOP; END \$\$"
}
cat >"$root/insert.sql" <<SQL
\set agg random(1, $AGGS)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', :agg, 'Step', jsonb_build_object('pad', repeat('x', 270)));
SQL
pgbench_run() { # db seconds -> "tps transactions"
  PGPASSWORD= command pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c 8 -j 2 -T "$2" \
    -f "$root/insert.sql" "$1" 2>/dev/null |
    awk '/^tps/ {tps=int($3)} /actually processed/ {n=$(NF)} /^number of transactions actually/ {split($0,a,": "); n=a[2]} END {print tps, n+0}'
}
metric() { # name of a delivered-counter etc. from the relay's /metrics; 0 if not there yet
  local listen
  listen=$(sed -n 's/^OUTBOXD_HTTP__LISTEN=//p' "$envfile")
  curl -s "http://$listen/metrics" | awk -v m="$1" 'index($0, m) == 1 {v=$2} END {print v+0}'
}
delivered() { metric "outboxd_events_published_total{sink=\"$1\",outcome=\"delivered\"}"; }
pending() { psql -d "$1" -At -c "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"; }
slot_confirmed_past() { # db lsn
  psql -d "$1" -At -c "SELECT confirmed_flush_lsn >= '$2' FROM pg_replication_slots WHERE slot_name = 'slot_$1'"
}
wait_load() { # wait (at most LOAD_WAIT s) for the 1-minute load to fall below LOAD_MAX
  local i
  for i in $(seq "${LOAD_WAIT:-30}"); do
    python3 -c "import sys; sys.exit(0 if $(load1) < ${LOAD_MAX:-3} else 1)" && return
    sleep 1
  done
}
start_relay() { # envfile logfile
  # Not through with_env: $! must be the process itself (env execs it), not a subshell.
  if [ "$PERF" = 1 ]; then
    env $(cat "$1") perf record -q -F "${PERF_FREQ:-999}" ${PERF_CALLGRAPH:+--call-graph "$PERF_CALLGRAPH"} \
      -o "$root/perf.data" -- "$outboxd" run 2>"$2" &
  else
    # BENCH_WRAP runs the relay under another program in the same process (valgrind).
    env $(cat "$1") ${BENCH_WRAP:-} "$outboxd" run 2>"$2" &
  fi
  relay=$!
}
stop_relay() {
  kill -TERM "$relay" 2>/dev/null || true
  wait "$relay" 2>/dev/null || true
  relay=
}
relay_pid() { # the outboxd process (the child of perf when profiling)
  if [ "$PERF" = 1 ]; then pgrep -P "$relay" -x outboxd || echo "$relay"; else echo "$relay"; fi
}

decode_rate=0 stream_rate=0 insert_rate=0
step_limits() {
  wait_load
  new_db limits logical
  psql -d limits -c "SELECT pg_create_logical_replication_slot('limits_decode', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('limits_stream', 'pgoutput')" >/dev/null
  local t0 t1
  t0=$(now)
  insert_rows limits "$ROWS"
  t1=$(now)
  local end_lsn
  end_lsn=$(psql -d limits -At -c "SELECT pg_current_wal_lsn()")
  record limits "insert $ROWS rows (SQL, chunks of $INSERT_CHUNK)" "$(calc "int($ROWS/($t1-$t0))")" rows/s
  psql -d limits -c CHECKPOINT
  wait_load
  t0=$(now)
  local n
  n=$(psql -d limits -At -c "SELECT count(*) FROM pg_logical_slot_get_binary_changes('limits_decode', NULL, NULL,
    'proto_version', '1', 'publication_names', 'pub_limits')")
  t1=$(now)
  decode_rate=$(calc "int($ROWS/($t1-$t0))")
  record limits "pgoutput decoding" "$decode_rate" rows/s "$n messages in $(calc "round($t1-$t0,2)") s"
  # The same rows over the streaming replication protocol to PostgreSQL's own client, which
  # writes them to /dev/null: decoding plus the walsender's sending, the ceiling of any
  # consumer of the stream.
  wait_load
  t0=$(now)
  command pg_recvlogical -h 127.0.0.1 -p "$port" -U postgres -d limits --slot limits_stream \
    --start --endpos "$end_lsn" -o proto_version=1 -o publication_names=pub_limits \
    --no-loop -F 0 -f /dev/null
  t1=$(now)
  stream_rate=$(calc "int($ROWS/($t1-$t0))")
  record limits "pgoutput streamed to pg_recvlogical" "$stream_rate" rows/s "$(calc "round($t1-$t0,2)") s"
  psql -d limits -c "SELECT pg_drop_replication_slot('limits_decode')" \
    -c "SELECT pg_drop_replication_slot('limits_stream')" \
    -c "SELECT pg_drop_replication_slot('slot_limits')" >/dev/null
  psql -d limits -c "TRUNCATE outbox" -c CHECKPOINT
  wait_load
  local res
  res=$(pgbench_run limits "$PGBENCH_SECONDS")
  insert_rate=${res% *}
  record limits "pgbench insert (8 clients)" "$insert_rate" rows/s "${PGBENCH_SECONDS} s, ${res#* } rows"
  psql -c "DROP DATABASE limits"
}

drain_n=0
drain_one() { # MODE:SINK[:tuning]
  local spec=$1 mode sink tuning db
  IFS=: read -r mode sink tuning <<<"$spec"
  drain_n=$((drain_n + 1))
  db=drain$drain_n
  new_db "$db" "$mode"
  relay_env "$db" "$mode" "$sink" "$tuning" >"$envfile"
  insert_rows "$db" "$ROWS"
  local lsn
  lsn=$(psql -d "$db" -At -c "SELECT pg_current_wal_lsn()")
  psql -d "$db" -c "VACUUM ANALYZE outbox" -c CHECKPOINT
  local topic=outbox.event.order exchange=bench_ex_$db queue=bench_q_$db
  case $sink in
    kafka)
      coproc BROKER { exec "$helper" kafka-mock "$topic" 6; }
      broker_pid=$BROKER_PID
      local line
      read -r line <&"${BROKER[0]}"
      echo "OUTBOXD_SINK__KAFKA__BOOTSTRAP_SERVERS=${line#bootstrap=}" >>"$envfile"
      ;;
    amqp)
      local queue_args=()
      case ,$tuning, in *,queue=quorum,*) queue_args=(x-queue-type=quorum) ;; esac
      "$helper" amqp-setup "$AMQP_URL" "$exchange" "$queue" "${queue_args[@]}"
      { echo "OUTBOXD_SINK__AMQP__URL=$AMQP_URL"; echo "OUTBOXD_SINK__AMQP__EXCHANGE=$exchange"; } >>"$envfile"
      ;;
    nats)
      { echo "OUTBOXD_SINK__NATS__URL=$NATS_URL"; echo "OUTBOXD_SINK__NATS__STREAM=BENCH_$db"
        echo "OUTBOXD_SINK__NATS__CREATE_STREAM=true"; echo "OUTBOXD_SINK__NATS__SUBJECT=bench_$db.{aggregatetype}.{type}"; } >>"$envfile"
      ;;
    redis)
      { echo "OUTBOXD_SINK__REDIS__URL=$REDIS_URL"; echo "OUTBOXD_SINK__REDIS__STREAM=bench:$db:{aggregatetype}"; } >>"$envfile"
      ;;
    webhook)
      webhook_ceiling
      local line
      coproc BROKER { exec "$receiver"; }
      broker_pid=$BROKER_PID
      read -r line <&"${BROKER[0]}"
      receiver_addr=${line#listening=}
      { echo "OUTBOXD_SINK__WEBHOOK__URL=http://$receiver_addr/events"
        echo "OUTBOXD_SINK__WEBHOOK__SECRETS=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; } >>"$envfile"
      ;;
  esac
  wait_load
  local load_before t0 t1
  load_before=$(load1)
  t0=$(now)
  local perf_all=
  if [ "$PERF" = all ]; then
    perf record -q -a -F 499 -o "$root/perf.data" -- sleep 3600 2>/dev/null &
    perf_all=$!
  fi
  start_relay "$envfile" "$root/relay_$db.log"
  local pid
  sleep 0.05
  pid=$(relay_pid)
  if [ "$mode" = poll ]; then
    until [ "$(psql -d "$db" -At -c "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL)")" = t ]; do
      kill -0 "$relay" 2>/dev/null || { echo "relay died:" >&2; cat "$root/relay_$db.log" >&2; exit 1; }
      sleep 0.1
    done
  else
    until [ "$(delivered "$sink")" -ge "$ROWS" ] && [ "$(slot_confirmed_past "$db" "$lsn")" = t ]; do
      kill -0 "$relay" 2>/dev/null || { echo "relay died:" >&2; cat "$root/relay_$db.log" >&2; exit 1; }
      sleep 0.1
    done
  fi
  t1=$(now)
  [ -n "$perf_all" ] && { pkill -INT -P "$perf_all" sleep 2>/dev/null || true; wait "$perf_all" || true; }
  local rss
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  # The relay's own CPU time (user + system, all threads) per row: unlike the rate, it hardly
  # depends on what else the machine is doing.
  local cpu
  cpu=$(awk -v rows="$ROWS" -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz * 1e6 / rows}' "/proc/$pid/stat")
  local got=$ROWS
  case $sink in
    log) got=$(with_env "$outboxd" log stats --json 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["records"])' 2>/dev/null || echo "?") ;;
  esac
  stop_relay
  case $sink in
    kafka) got=$("$helper" kafka-count "$(sed -n 's/^OUTBOXD_SINK__KAFKA__BOOTSTRAP_SERVERS=//p' "$envfile")" "$topic")
      kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; broker_pid= ;;
    amqp) got=$("$helper" amqp-count "$AMQP_URL" "$queue"); "$helper" amqp-delete "$AMQP_URL" "$exchange" "$queue" ;;
    nats) got=$("$helper" nats-count "$NATS_URL" "BENCH_$db"); "$helper" nats-delete "$NATS_URL" "BENCH_$db" ;;
    redis) got=$(redis-cli -u "$REDIS_URL" XLEN "bench:$db:order"); redis-cli -u "$REDIS_URL" DEL "bench:$db:order" >/dev/null ;;
    webhook) got=$(curl -s "http://$receiver_addr/count" | awk '{print $2 " events in " $1 " requests"}')
      kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; broker_pid= ;;
  esac
  local rate
  rate=$(calc "int($ROWS/($t1-$t0))")
  record drain "$spec" "$rate" rows/s "$(calc "round($t1-$t0,2)") s, relay CPU $cpu µs/row, peak RSS $rss MiB, in sink: $got, load before: $load_before"
  [ "$sink" = webhook ] && record drain "$spec ÷ receiver ceiling" "$(calc "round($rate/$webhook_rate,2)")" x "drain $rate rows/s, receiver ceiling $webhook_rate req/s (wrk)"
  if [ "$PERF" != 0 ]; then
    local prof=$(dirname "$OUT")/perf-${PERF}-${spec//:/_}.txt
    {
      echo "# perf ($PERF) during drain $spec, ROWS=$ROWS: share of samples by command, then top symbols"
      perf report -i "$root/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
      perf report -i "$root/perf.data" --no-children --sort comm,dso,sym --percent-limit 0.7 --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -60
    } >"$prof" || true
    echo "perf profile: $prof" >&2
    [ -n "${KEEP_PERF:-}" ] && cp "$root/perf.data" "$KEEP_PERF"
  fi
  [ "$mode" = logical ] && psql -d "$db" -c "SELECT pg_drop_replication_slot('slot_$db')" >/dev/null
  psql -c "DROP DATABASE $db"
  rm -rf "$root/log_$db"
}

# The webhook receiver's own ceiling: wrk POSTing a relay-shaped event (~600 bytes, as the
# relay's JSON body) to a fresh bench_webhook_receiver, WRK_CONNECTIONS connections over 2
# threads for WRK_SECONDS; sets webhook_rate (requests/s).
webhook_rate=0 receiver_addr=
webhook_ceiling() {
  local line pad
  pad=$(printf 'x%.0s' $(seq 1 270))
  cat >"$root/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["webhook-id"] = "6f1c0000-0000-4000-8000-000000000001"
wrk.headers["webhook-timestamp"] = "1700000000"
wrk.headers["webhook-signature"] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
wrk.body = '{"id":"6f1c0000-0000-4000-8000-000000000001","type":"Step","key":"1234","aggregatetype":"order","op":"insert","origin":{"kind":"outbox"},"time":"2026-12-07T15:00:00.123456Z","position":123456,"payload":{"pad": "$pad", "seq": 123456},"headers":{"id":"6f1c0000-0000-4000-8000-000000000001","type":"Step","aggregatetype":"order","aggregateid":"1234","position":123456}}'
LUA
  coproc CEILING { exec "$receiver"; }
  broker_pid=$CEILING_PID
  read -r line <&"${CEILING[0]}"
  wait_load
  webhook_rate=$(wrk -t 2 -c "${WRK_CONNECTIONS:-16}" -d "${WRK_SECONDS:-10}s" -s "$root/post.lua" "http://${line#listening=}/events" |
    sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
  webhook_rate=${webhook_rate%.*}
  kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; broker_pid=
  record brokers "webhook receiver ceiling (wrk)" "$webhook_rate" req/s "wrk -t 2 -c ${WRK_CONNECTIONS:-16} -d ${WRK_SECONDS:-10}s, POST of a relay-shaped event, HTTP/1.1 keep-alive"
}

step_sustain() {
  local mode db res t_end behind t1
  for mode in poll logical; do
    db=sustain_$mode
    new_db "$db" "$mode"
    wait_load
    start_relay "$envfile" "$root/relay_$db.log"
    sleep 1
    res=$(pgbench_run "$db" "$SUSTAIN_SECONDS")
    t_end=$(now)
    local inserted=${res#* } tps=${res% *} done_at_end
    if [ "$mode" = poll ]; then
      behind=$(pending "$db")
    else
      done_at_end=$(delivered log)
      behind=$((inserted - done_at_end))
    fi
    if [ "$mode" = poll ]; then
      until [ "$(pending "$db")" = 0 ]; do sleep 0.05; done
    else
      until [ "$(delivered log)" -ge "$inserted" ]; do sleep 0.05; done
    fi
    t1=$(now)
    stop_relay
    record sustain "$mode:log" "$(calc "round(($inserted-$behind)/$inserted,4)")" "relay/ins" \
      "pgbench $tps rows/s for $SUSTAIN_SECONDS s ($inserted rows); at the end $behind behind, caught up $(calc "round($t1-$t_end,3)") s later"
    [ "$mode" = logical ] && psql -d "$db" -c "SELECT pg_drop_replication_slot('slot_$db')" >/dev/null
    psql -c "DROP DATABASE $db"
  done
}

step_brokers() {
  wait_load
  record brokers "JetStream publish+ack ceiling" "$("$helper" nats-ceiling "$NATS_URL" "$ROWS")" msgs/s "$ROWS relay-shaped messages (Nats-Msg-Id and 5 headers), one connection, 1,000 in flight"
  # Redis: entries shaped as the relay's (the fields id, type, key, payload and headers, of the
  # drain's sizes), from one connection (the relay's lanes share one) pipelined 100 deep: one
  # client's ordered, acknowledged appends. Then the same over 4 connections, the server's
  # own limit, for reference.
  local pad id rate conns
  pad=$(printf 'x%.0s' $(seq 1 270))
  id=6f1c0000-0000-4000-8000-000000000001
  for conns in 1 4; do
    wait_load
    rate=$(redis-benchmark -u "$REDIS_URL" -q -n "$ROWS" -c "$conns" -P 100 XADD bench:ceiling '*' \
        id "$id" type Step key 1234 payload "{\"pad\": \"$pad\", \"seq\": 123456}" \
        headers "{\"id\":\"$id\",\"type\":\"Step\",\"aggregatetype\":\"order\",\"aggregateid\":\"1234\",\"position\":123456}" |
      sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -n 1)
    redis-cli -u "$REDIS_URL" DEL bench:ceiling >/dev/null
    record brokers "Redis XADD ceiling, $conns connection(s)" "${rate%.*}" msgs/s "$ROWS relay-shaped entries, pipeline 100 (redis-benchmark)"
  done
}

step_latency() {
  local mode db out
  for mode in poll logical; do
    db=latency_$mode
    new_db "$db" "$mode"
    wait_load
    out=$(env $(cat "$envfile") RATE="$LATENCY_RATE" SECONDS="$LATENCY_SECONDS" CONNECTIONS="$LATENCY_CONNECTIONS" AGGS="$AGGS" "$latency" 2>"$root/latency_$mode.log")
    echo "$out" >&2
    local r
    r=$(echo "$out" | sed -n 's/^RESULT //p')
    record latency "$mode:log @ $LATENCY_RATE/s" "$(echo "$r" | sed 's/.*p99=\([^ ]*\).*/\1/')" "ms p99" "$r"
    [ "$mode" = logical ] && psql -d "$db" -c "SELECT pg_drop_replication_slot('slot_$db')" >/dev/null
    psql -c "DROP DATABASE $db"
  done
}

for step in $STEPS; do
  case $step in
    limits) step_limits ;;
    drain) for spec in $DRAINS; do drain_one "$spec"; done ;;
    sustain) step_sustain ;;
    brokers) step_brokers ;;
    latency) step_latency ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
echo "results: $OUT" >&2
