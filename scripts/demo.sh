#!/usr/bin/env bash
# The main job, end to end, on this machine:
#   1. makes sure PostgreSQL and RabbitMQ run, builds the release binary
#   2. starts from a clean demo database and demo queues (never the real ones)
#   3. migrates with a founding-member capacity, starts 2 worker replicas
#   4. publishes COUNT signup events, with duplicates, slug collisions, invalid and demo events
#   5. waits until every event is handled and prints what happened
#   6. stops the workers with SIGTERM (also on Ctrl-C) and reports their exit codes
#
# Environment (all optional):
#   COUNT=2000                 events to publish
#   FOUNDING_CAPACITY=100      founding-member numbers available
#   REPLICAS=2                 worker replicas (metrics on 127.0.0.1:9464, :9465, ...)
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_demo
#   SIGNUP_QUEUE=demo.signups  SIGNUP_EXCHANGE=demo.events   (AMQP_URL as for the worker)
#   KEEP_RUNNING=1             leave the workers up after the summary until Ctrl-C
#   DEMO_FORCE=1               allow database/queue names that do not contain "demo"
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-2000}
FOUNDING_CAPACITY=${FOUNDING_CAPACITY:-100}
REPLICAS=${REPLICAS:-2}
KEEP_RUNNING=${KEEP_RUNNING:-0}
READY_TIMEOUT=${READY_TIMEOUT:-60}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/signup_worker_demo}
export SIGNUP_QUEUE=${SIGNUP_QUEUE:-demo.signups}
export SIGNUP_EXCHANGE=${SIGNUP_EXCHANGE:-demo.events}

BIN=target/release/signup-worker
LOG_DIR=target/demo
FIRST_PORT=9464
PORTS=()
for ((i = 0; i < REPLICAS; i++)); do PORTS+=($((FIRST_PORT + i))); done

# The database named in DATABASE_URL, and a URL to the maintenance database on the same server.
db_part=${DATABASE_URL##*/}
DB_NAME=${db_part%%\?*}
ADMIN_URL="${DATABASE_URL%/*}/postgres${db_part#"$DB_NAME"}"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RESET=$'\033[0m'; else BOLD='' RESET=''; fi
section() { printf '\n%s==== %s ====%s\n' "$BOLD" "$*" "$RESET"; }
heading() { printf '\n%s%s%s\n' "$BOLD" "$*" "$RESET"; }
note() { printf '  %s\n' "$*"; }
show() {
    printf '+ %s\n' "$*"
    "$@"
}
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

# ---- workers and cleanup --------------------------------------------------------------------

# shellcheck source=scripts/lib-workers.sh
source scripts/lib-workers.sh
KEEPING=0

stop_workers() {
    ((${#PIDS[@]} > 0)) || return 0
    section "Stopping the workers (SIGTERM)"
    stop_worker_processes
}

on_interrupt() {
    echo
    if ((KEEPING)); then exit 0; fi
    echo "interrupted" >&2
    exit 130
}

trap stop_workers EXIT
trap on_interrupt INT TERM

show_log_tails() {
    local i
    for ((i = 1; i <= REPLICAS; i++)); do
        if [[ -f $LOG_DIR/worker-$i.log ]]; then
            printf '\n--- last lines of %s ---\n' "$LOG_DIR/worker-$i.log" >&2
            tail -n 20 "$LOG_DIR/worker-$i.log" >&2
        fi
    done
}

# ---- reading status and metrics -------------------------------------------------------------

# Prints "<main> <retry> <dlq>" message counts from `status --json`.
queue_depths() {
    local json
    json=$("$BIN" status --json 2>/dev/null) || return 1
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
text = sys.stdin.read()
obj = None
try:
    obj = json.loads(text)
except ValueError:
    # tolerate log lines around the JSON object
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                break
            except ValueError:
                pass
if not isinstance(obj, dict):
    sys.exit(1)
q = obj["queues"]
print(q["main"]["messages"], q["retry"]["messages"], q["dlq"]["messages"])
' <<<"$json"
    elif command -v jq >/dev/null 2>&1; then
        jq -r '.queues | "\(.main.messages) \(.retry.messages) \(.dlq.messages)"' <<<"$json"
    else
        die "need python3 or jq to read 'status --json'"
    fi
}

scrape_metrics() {
    local port
    for port in "${PORTS[@]}"; do
        curl -fsS --max-time 3 "http://127.0.0.1:$port/metrics" 2>/dev/null || true
    done
}

# sum_metric <metrics text> <metric name> <label> <expected label values...>
# Prints "<label value> <sum over replicas>" lines, expected values first (0 when absent).
sum_metric() {
    local text=$1 name=$2 label=$3
    shift 3
    awk -v m="$name" -v l="$label" -v keys="$*" '
        BEGIN { n = split(keys, order, " "); for (i = 1; i <= n; i++) sum[order[i]] = 0 }
        index($0, m "{") == 1 && match($0, l "=\"[^\"]*\"") {
            k = substr($0, RSTART + length(l) + 2, RLENGTH - length(l) - 3)
            if (!(k in sum)) order[++n] = k
            sum[k] += $NF
        }
        END { for (i = 1; i <= n; i++) printf "%s %d\n", order[i], sum[order[i]] }
    ' <<<"$text"
}

total_events() {
    scrape_metrics | awk 'index($0, "signup_events_total{") == 1 { s += $NF } END { printf "%d\n", s }'
}

# ---- 1. services and build ------------------------------------------------------------------

section "1. Services and build"
show scripts/ensure-services.sh
note "PostgreSQL and RabbitMQ are up"
show cargo build --release
[[ -x $BIN ]] || die "$BIN was not built"

# ---- 2. a clean demo setup ------------------------------------------------------------------

section "2. Clean demo setup"
note "database: $DB_NAME   exchange: $SIGNUP_EXCHANGE   queue: $SIGNUP_QUEUE (+ .retry, .dlq)"
[[ -n $DB_NAME && $DB_NAME != postgres ]] || die "refusing to use database '$DB_NAME'"
if [[ ${DEMO_FORCE:-0} != 1 && ($DB_NAME != *demo* || $SIGNUP_QUEUE != *demo*) ]]; then
    die "the demo drops its database and deletes its queues; '$DB_NAME' / '$SIGNUP_QUEUE' do not look like demo names (set DEMO_FORCE=1 to insist)"
fi
for port in "${PORTS[@]}"; do
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        die "something already listens on 127.0.0.1:$port (a previous demo still running?)"
    fi
done
PGOPTIONS='-c client_min_messages=warning' \
    show psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)"
if command -v rabbitmqctl >/dev/null 2>&1; then
    for q in "$SIGNUP_QUEUE" "$SIGNUP_QUEUE.retry" "$SIGNUP_QUEUE.dlq"; do
        printf '+ rabbitmqctl delete_queue %s\n' "$q"
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
else
    note "rabbitmqctl not found: the demo queues are not emptied first"
fi

# ---- 3. migrate and start the workers -------------------------------------------------------

section "3. Migrate and start $REPLICAS worker replicas"
show "$BIN" migrate --founding-capacity "$FOUNDING_CAPACITY"
mkdir -p "$LOG_DIR"
for ((i = 1; i <= REPLICAS; i++)); do
    port=${PORTS[$((i - 1))]}
    log=$LOG_DIR/worker-$i.log
    printf '+ %s run --metrics-addr 127.0.0.1:%s > %s 2>&1 &\n' "$BIN" "$port" "$log"
    "$BIN" run --metrics-addr "127.0.0.1:$port" >"$log" 2>&1 &
    PIDS+=($!)
done

note "waiting for /readyz on every replica (up to ${READY_TIMEOUT}s)"
deadline=$((SECONDS + READY_TIMEOUT))
for ((i = 1; i <= REPLICAS; i++)); do
    port=${PORTS[$((i - 1))]}
    pid=${PIDS[$((i - 1))]}
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tails
            die "worker $i exited before it became ready"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tails
            die "worker $i (127.0.0.1:$port) not ready after ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done
    note "worker $i ready: pid $pid, http://127.0.0.1:$port/readyz, log $LOG_DIR/worker-$i.log"
done

# ---- 4. publish -----------------------------------------------------------------------------

section "4. Publish $COUNT signup events"
note "mixed in: 5% duplicate event ids, 3% slug collisions, 2% invalid, 10% demo tenants"
show "$BIN" publish --count "$COUNT" --duplicates 0.05 --slug-collisions 0.03 --invalid 0.02 --demo 0.1

# ---- 5. wait until everything is handled ----------------------------------------------------

section "5. Waiting for the workers to drain the queues (up to ${DRAIN_TIMEOUT}s)"
# Done when the main and retry queues are empty and the event counters have stopped moving
# (a queue's depth does not count deliveries a worker holds unacked).
deadline=$((SECONDS + DRAIN_TIMEOUT))
prev=-1
last_report=0
while :; do
    main='?' retry='?' dlq='?'
    if depths=$(queue_depths); then read -r main retry dlq <<<"$depths"; fi
    handled=$(total_events)
    if [[ $main == 0 && $retry == 0 && $handled == "$prev" ]]; then
        break
    fi
    if ((SECONDS - last_report >= 3)); then
        note "main queue: $main   retry queue: $retry   dead-letter queue: $dlq   events handled: $handled"
        last_report=$SECONDS
    fi
    if ((SECONDS >= deadline)); then
        show_log_tails
        die "queues not drained after ${DRAIN_TIMEOUT}s (main=$main, retry=$retry)"
    fi
    prev=$handled
    sleep 1
done
note "drained: main queue 0, retry queue 0, $handled events handled"

# ---- 6. summary -----------------------------------------------------------------------------

section "6. Summary"
heading "signup-worker status"
"$BIN" status

heading "Tenants in $DB_NAME"
psql -X -q -P pager=off -x "$DATABASE_URL" -c "
SELECT count(*)                                                      AS \"tenants\",
       count(founding_member_number)                                 AS \"founding members (numbered)\",
       min(founding_member_number)                                   AS \"lowest number\",
       max(founding_member_number)                                   AS \"highest number\",
       count(*) FILTER (WHERE is_demo)                               AS \"demo tenants (never numbered)\",
       count(*) FILTER (WHERE NOT is_demo
                          AND founding_member_number IS NULL)        AS \"non-demo, after the bound\",
       count(DISTINCT founding_member_number)
         = count(founding_member_number)                             AS \"numbers unique\",
       coalesce(max(founding_member_number), 0)
         = count(founding_member_number)                             AS \"numbers without gaps\"
FROM tenants"

metrics=$(scrape_metrics)
heading "signup_events_total, summed over ${REPLICAS} replicas"
sum_metric "$metrics" signup_events_total outcome created duplicate rejected invalid dead_lettered |
    while read -r k v; do
        case $k in
            created) what="tenant inserted" ;;
            duplicate) what="event id already stored (copy or redelivery): nothing added" ;;
            rejected) what="slug taken by another event" ;;
            invalid) what="failed validation: sent to the dead-letter queue" ;;
            dead_lettered) what="valid, but out of attempts: sent to the dead-letter queue" ;;
            *) what= ;;
        esac
        printf '  %-14s %8s   %s\n' "$k" "$v" "$what"
    done

heading "signup_conflicts_total"
sum_metric "$metrics" signup_conflicts_total kind event_id slug founding_number |
    while read -r k v; do
        case $k in
            event_id) what="a stored event id came back naming another slug" ;;
            slug) what="slug taken by another event" ;;
            founding_number) what="the unique index refused a number (must stay 0)" ;;
            *) what= ;;
        esac
        printf '  %-16s %6s   %s\n' "$k" "$v" "$what"
    done

retries=$(sum_metric "$metrics" signup_retries_total reason | awk '$2 > 0')
if [[ -n $retries ]]; then
    heading "signup_retries_total"
    while read -r k v; do printf '  %-22s %6s\n' "$k" "$v"; done <<<"$retries"
fi

echo
note "Full metrics: http://127.0.0.1:${PORTS[0]}/metrics (one endpoint per replica, ports ${PORTS[*]})"
note "Worker logs:  $LOG_DIR/worker-*.log"
note "Dead-lettered events stay in $SIGNUP_QUEUE.dlq (see 'signup-worker dlq replay --help')"

if [[ $KEEP_RUNNING == 1 ]]; then
    KEEPING=1
    section "Workers keep running (KEEP_RUNNING=1): press Ctrl-C to stop them"
    while :; do sleep 1; done
else
    note "(run with KEEP_RUNNING=1 to keep the workers up and browse the metrics)"
fi
