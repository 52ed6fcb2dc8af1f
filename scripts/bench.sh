#!/usr/bin/env bash
# Throughput benchmark: how fast do 1 and 2 worker replicas turn a full queue into tenants?
#
# For each replica count: fresh database and queues, pre-load N events (publishing is timed
# too, but separately), then start the workers and time until `SELECT count(*) FROM tenants`
# reaches N. Peak RSS per worker is read from /proc/<pid>/status (VmHWM). Finally a baseline:
# PostgreSQL alone inserting the same rows, 100 per transaction, through the same trigger.
# Results go to stdout as a plain table and as markdown for docs/BENCHMARKS.md.
#
# Environment (all optional):
#   N=50000                    events per run
#   REPLICA_COUNTS="1 2"       replica counts to measure
#   BENCH_TIMEOUT=600          seconds allowed for one run to store N tenants
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_bench
#   SIGNUP_QUEUE=bench.signups SIGNUP_EXCHANGE=bench.events
#   RUST_LOG=info              the workers' log filter (logs go to target/bench/)
#   BENCH_FORCE=1              allow database/queue names that do not contain "bench"
# Worker settings such as PREFETCH, BATCH_SIZE or SIGNUP_QUEUE_TYPE pass through.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-50000}
REPLICA_COUNTS=${REPLICA_COUNTS:-"1 2"}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/signup_worker_bench}
export SIGNUP_QUEUE=${SIGNUP_QUEUE:-bench.signups}
export SIGNUP_EXCHANGE=${SIGNUP_EXCHANGE:-bench.events}
export RUST_LOG=${RUST_LOG:-info}
CAPACITY=1000000
FIRST_PORT=9471

BIN=target/release/signup-worker
LOG_DIR=target/bench

db_part=${DATABASE_URL##*/}
DB_NAME=${db_part%%\?*}
ADMIN_URL="${DATABASE_URL%/*}/postgres${db_part#"$DB_NAME"}"

section() { printf '\n==== %s ====\n' "$*"; }
note() { printf '  %s\n' "$*"; }
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
# elapsed <t0> <t1>: seconds between two `now` readings, 2 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# per_second <count> <seconds>
per_second() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }

((N > 0)) || die "N must be a positive number"
[[ -n $DB_NAME && $DB_NAME != postgres ]] || die "refusing to use database '$DB_NAME'"
if [[ ${BENCH_FORCE:-0} != 1 && ($DB_NAME != *bench* || $SIGNUP_QUEUE != *bench*) ]]; then
    die "the benchmark drops its database and deletes its queues; '$DB_NAME' / '$SIGNUP_QUEUE' do not look like benchmark names (set BENCH_FORCE=1 to insist)"
fi

# ---- workers --------------------------------------------------------------------------------

# shellcheck source=scripts/lib-workers.sh
source scripts/lib-workers.sh
stop_workers() {
    ((${#PIDS[@]} > 0)) || return 0
    stop_worker_processes
}
trap stop_workers EXIT
trap 'echo; echo interrupted >&2; exit 130' INT TERM

show_log_tails() {
    local f
    for f in "$LOG_DIR"/r"$1"-worker-*.log; do
        [[ -f $f ]] || continue
        printf '\n--- last lines of %s ---\n' "$f" >&2
        tail -n 20 "$f" >&2
    done
}

# ---- helpers --------------------------------------------------------------------------------

psql_db() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }

tenant_count() { psql_db -c 'SELECT count(*) FROM tenants' 2>/dev/null; }

main_queue_depth() {
    "$BIN" status --json 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    obj = json.loads(text)
except ValueError:
    obj = next(json.loads(l) for l in reversed(text.splitlines()) if l.strip().startswith("{"))
print(obj["queues"]["main"]["messages"])
' 2>/dev/null || echo '?'
}

fresh_setup() {
    PGOPTIONS='-c client_min_messages=warning' \
        psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)"
    local q
    for q in "$SIGNUP_QUEUE" "$SIGNUP_QUEUE.retry" "$SIGNUP_QUEUE.dlq"; do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
    "$BIN" migrate --founding-capacity "$CAPACITY" >"$LOG_DIR/migrate.log" 2>&1 ||
        { cat "$LOG_DIR/migrate.log" >&2; die "migrate failed"; }
}

find_pgbench() {
    if command -v pgbench >/dev/null 2>&1; then
        command -v pgbench
        return
    fi
    local p best=
    for p in /usr/lib/postgresql/*/bin/pgbench; do
        [[ -x $p ]] && best=$p
    done
    [[ -n $best ]] || return 1
    echo "$best"
}

# ---- build ----------------------------------------------------------------------------------

section "Services and build"
scripts/ensure-services.sh
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read 'status --json'"
command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl is needed to delete the benchmark queues"
cargo build --release
[[ -x $BIN ]] || die "$BIN was not built"
mkdir -p "$LOG_DIR"

PG_VERSION=$(psql -X -q -A -t "$ADMIN_URL" -c 'SHOW server_version' | awk '{print $1}')
RABBIT_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
MEM_GIB=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then COMMIT="$COMMIT (uncommitted changes)"; fi
SETTINGS="RUST_LOG=$RUST_LOG"
for v in PREFETCH BATCH_SIZE SIGNUP_QUEUE_TYPE MAX_DELIVERIES; do
    if [[ -n ${!v:-} ]]; then SETTINGS="$SETTINGS, $v=${!v}"; fi
done
CONTEXT="$(nproc) CPUs ($CPU), ${MEM_GIB} GiB RAM, PostgreSQL $PG_VERSION, RabbitMQ $RABBIT_VERSION, all on one machine; commit $COMMIT; $SETTINGS (other settings default)"
note "$CONTEXT"

ROWS=()

# ---- worker runs ----------------------------------------------------------------------------

for R in $REPLICA_COUNTS; do
    section "$R replica(s), $N events"
    fresh_setup

    note "pre-loading $N events (no worker running)"
    t0=$(now)
    "$BIN" publish --count "$N"
    t1=$(now)
    pub_secs=$(elapsed "$t0" "$t1")
    pub_rate=$(per_second "$N" "$pub_secs")
    note "published in ${pub_secs}s ($pub_rate msg/s); main queue depth: $(main_queue_depth)"

    t_start=$(now)
    for ((i = 1; i <= R; i++)); do
        "$BIN" run --no-migrate --metrics-addr "127.0.0.1:$((FIRST_PORT + i - 1))" \
            >"$LOG_DIR/r$R-worker-$i.log" 2>&1 &
        PIDS+=($!)
    done
    note "started $R worker(s): ${PIDS[*]}; waiting for $N tenants (up to ${BENCH_TIMEOUT}s)"

    deadline=$((SECONDS + BENCH_TIMEOUT))
    last_report=$SECONDS
    while :; do
        count=$(tenant_count || echo 0)
        ((count >= N)) && break
        for pid in "${PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                show_log_tails "$R"
                die "worker pid $pid exited during the run"
            fi
        done
        if ((SECONDS >= deadline)); then
            show_log_tails "$R"
            die "only $count of $N tenants after ${BENCH_TIMEOUT}s"
        fi
        if ((SECONDS - last_report >= 5)); then
            note "$count / $N tenants"
            last_report=$SECONDS
        fi
        sleep 0.2
    done
    t_end=$(now)

    rss=()
    for pid in "${PIDS[@]}"; do
        kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        rss+=("$(awk -v k="${kb:-0}" 'BEGIN { printf "%.1f", k / 1024 }')")
    done
    rss_list=$(printf '%s / ' "${rss[@]}")
    rss_list=${rss_list% / }
    secs=$(elapsed "$t_start" "$t_end")
    rate=$(per_second "$N" "$secs")
    note "$N tenants in ${secs}s: $rate signups/s; peak RSS per worker: $rss_list MiB"
    stop_workers
    ROWS+=("$R|$N|$secs|$rate|$rss_list|$pub_rate")
done

# ---- baseline: PostgreSQL alone ---------------------------------------------------------------

section "Baseline: PostgreSQL alone, 100-row INSERTs through the same trigger (pgbench, 2 clients)"
PGBENCH=$(find_pgbench) || die "pgbench not found (it ships with the PostgreSQL server package, postgresql-15 on Debian 12)"
fresh_setup
psql_db -c "TRUNCATE tenants RESTART IDENTITY; ALTER SEQUENCE founding_member_number_seq RESTART WITH 1"
script=$LOG_DIR/insert-100.sql
cat >"$script" <<'SQL'
INSERT INTO tenants (event_id, slug, business_name, owner_email, tier, is_demo)
SELECT gen_random_uuid(),
       'bench-' || replace(gen_random_uuid()::text, '-', ''),
       'Bench Business ' || g,
       'owner' || g || '@bench.example',
       'starter',
       false
FROM generate_series(1, 100) AS g;
SQL
per_client=$(((N + 199) / 200))
t0=$(now)
"$PGBENCH" -n -c 2 -j 2 -t "$per_client" -f "$script" "$DATABASE_URL" >"$LOG_DIR/pgbench.log" 2>&1 ||
    { cat "$LOG_DIR/pgbench.log" >&2; die "pgbench failed"; }
t1=$(now)
base_rows=$(tenant_count)
base_secs=$(elapsed "$t0" "$t1")
base_rate=$(per_second "$base_rows" "$base_secs")
tps=$(awk '/^tps = / { print $3; exit }' "$LOG_DIR/pgbench.log")
note "$base_rows rows in ${base_secs}s wall: $base_rate rows/s (pgbench: $tps transactions/s of 100 rows)"
ROWS+=("PostgreSQL alone|$base_rows|$base_secs|$base_rate|-|-")

# ---- results --------------------------------------------------------------------------------

section "Results"
printf '%-18s %8s %9s %11s %26s %14s\n' replicas events seconds signups/s "peak RSS/worker (MiB)" "publish msg/s"
for row in "${ROWS[@]}"; do
    IFS='|' read -r r n s rt m p <<<"$row"
    printf '%-18s %8s %9s %11s %26s %14s\n' "$r" "$n" "$s" "$rt" "$m" "$p"
done

section "Markdown (for docs/BENCHMARKS.md)"
echo "Measured $(date -u +%Y-%m-%d): $CONTEXT. Queue pre-loaded with N events before the workers start; time from worker start until N tenants are stored."
echo
echo "| replicas | events | seconds | signups/s | peak RSS per worker (MiB) | publish rate (msg/s) |"
echo "|---|---:|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r r n s rt m p <<<"$row"
    echo "| $r | $n | $s | $rt | $m | $p |"
done
echo
echo "PostgreSQL alone: pgbench, 2 clients, one 100-row \`INSERT ... SELECT FROM generate_series\` per transaction into the same \`tenants\` table (trigger and unique indexes included)."
