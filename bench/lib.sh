# Shared set-up of the benchmarks that run their own PostgreSQL cluster (bench/cdc.sh,
# bench/snapshot.sh): sourced, not run. After `bench_setup NAME`, the caller has:
#   $bin      PostgreSQL's newest server binaries      $root   a temporary directory
#   $port     the cluster's port (started, wal_level=logical, on 127.0.0.1)
#   $outboxd  the relay binary: BENCH_OUTBOXD as it is, or built with BENCH_PROFILE (release)
#   $relay    set it to the relay's pid: the exit trap kills it, stops the cluster, removes $root
#   psql, now, calc, free_port, as_pg, relay_usage
# Extra server settings come in BENCH_PG_OPTS.

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }

# relay_usage ROWS: sets rss (the relay's peak RSS, MiB) and cpu (its CPU per row, µs).
relay_usage() {
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$relay/status")
  cpu=$(awk -v rows="$1" -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz * 1e6 / rows}' "/proc/$relay/stat")
}

bench_cleanup() {
  [ -n "${relay:-}" ] && kill "$relay" 2>/dev/null || true
  as_pg "$bin/pg_ctl" -D "$root/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$root"
}

# bench_setup NAME: builds the relay, then creates and starts a throwaway cluster.
bench_setup() {
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  root=$(mktemp -d "/tmp/outboxd-bench-$1-XXXXXX")
  chmod 755 "$root"
  [ "$(id -u)" = 0 ] && chown postgres "$root"
  port=$(free_port)
  relay=
  trap bench_cleanup EXIT

  local profile=${BENCH_PROFILE:-release}
  if [ -n "${BENCH_OUTBOXD:-}" ]; then
    outboxd=$BENCH_OUTBOXD
  else
    echo "building ($profile)..." >&2
    cargo build --profile "$profile" --quiet --bin outboxd
    outboxd=${CARGO_TARGET_DIR:-$PWD/target}/$profile/outboxd
  fi

  as_pg "$bin/initdb" -D "$root/data" -A trust -U postgres --no-sync >/dev/null
  as_pg "$bin/pg_ctl" -D "$root/data" -l "$root/server.log" -w start -o \
    "-p $port -k $root -c listen_addresses=127.0.0.1 -c wal_level=logical -c shared_buffers=1GB -c max_wal_size=8GB ${BENCH_PG_OPTS:-}" >/dev/null
}
