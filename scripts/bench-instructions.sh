#!/usr/bin/env bash
# The worker's CPU instructions per signup at saturation, counted by valgrind's callgrind: a
# figure that, unlike CPU time, does not move with whatever else the machine is doing (two runs
# of one build differ by about 1%), so two builds can be compared on a noisy machine. One replica drains N pre-loaded events (20% demo)
# under callgrind, once with SMALL events and once with SMALL+N; the difference divided by N is
# the cost per signup without start-up and shutdown. Callgrind slows the worker about 50 times,
# so its batches are always full: this is the saturation cost, not the low-load one.
#
# Prints `BENCH {"kind":"instructions",...}` and leaves the callgrind files in target/bench/
# (`callgrind_annotate --inclusive=yes <file>` shows where the instructions go).
#
# Environment (all optional):
#   N=20000 SMALL=2000        events of the two runs: SMALL and SMALL+N
#   BIN=target/release/signup-worker   the build to measure (e.g. another checkout's)
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_bench_instructions
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-20000}
SMALL=${SMALL:-2000}
BIN=${BIN:-target/release/signup-worker}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/signup_worker_bench_instructions}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SIGNUP_QUEUE=bench.instructions SIGNUP_EXCHANGE=bench.instructions.events
export FOUNDING_CAPACITY=100 METRICS_ADDR=127.0.0.1:0 RUST_LOG=warn
OUT=target/bench
DB_NAME=${DATABASE_URL##*/}
DB_SERVER=${DATABASE_URL%/*}

if ! command -v valgrind >/dev/null; then
    echo "ERROR: valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 1
fi
echo "+ scripts/ensure-services.sh"
scripts/ensure-services.sh
if [[ $BIN == target/release/signup-worker ]]; then
    echo "+ cargo build --release -p signup-worker"
    cargo build --release -p signup-worker
fi
[[ -x $BIN ]] || { echo "ERROR: $BIN is not an executable" >&2; exit 1; }
mkdir -p "$OUT"

worker=
cleanup() {
    if [[ -n $worker ]]; then kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
    psql -qX "$DB_SERVER/postgres" -c "DROP DATABASE IF EXISTS \"$DB_NAME\"" >/dev/null 2>&1 || true
    for q in "$SIGNUP_QUEUE" "$SIGNUP_QUEUE.retry" "$SIGNUP_QUEUE.dlq"; do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# instructions <events> <callgrind file>: one drained queue under callgrind; sets `total`.
instructions() {
    local events=$1 file=$2 stored deadline
    cleanup
    psql -qX "$DB_SERVER/postgres" -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null
    "$BIN" migrate >/dev/null
    "$BIN" publish --count "$events" --demo 0.2 --no-progress >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$file" "$BIN" run >"$file.log" 2>&1 &
    worker=$!
    deadline=$((SECONDS + 600))
    while :; do
        stored=$(psql -tAX "$DATABASE_URL" -c "SELECT count(*) FROM tenants" 2>/dev/null || echo 0)
        ((${stored:-0} >= events)) && break
        if ! kill -0 "$worker" 2>/dev/null; then
            echo "ERROR: the worker exited early; see $file.log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "ERROR: $events events not stored within 600 s (${stored:-0} so far)" >&2
            exit 1
        fi
        sleep 0.5
    done
    # SIGTERM: the worker drains and exits, and callgrind writes its totals.
    kill -TERM "$worker"
    wait "$worker" || { echo "ERROR: the worker did not exit cleanly; see $file.log" >&2; exit 1; }
    worker=
    total=$(sed -n 's/^totals: *//p' "$file")
}

echo "+ $SMALL events under callgrind"
instructions "$SMALL" "$OUT/callgrind.small.out"
small=$total
echo "+ $((SMALL + N)) events under callgrind"
instructions "$((SMALL + N))" "$OUT/callgrind.large.out"
large=$total
per=$(((large - small) / N))
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "BENCH {\"kind\":\"instructions\",\"commit\":\"$commit\",\"bin\":\"$BIN\",\"n\":$N,\"small\":$SMALL,\"instructions_small\":$small,\"instructions_large\":$large,\"instructions_per_signup\":$per}"
echo "worker instructions per signup at saturation: $per (callgrind files in $OUT/)"
