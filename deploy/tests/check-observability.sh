#!/usr/bin/env bash
# Checks the Prometheus configuration, the alert rules and the Grafana dashboard, statically
# and against a real Prometheus scraping a real worker under a small load.
#
#   1. promtool check config / check rules / test rules (deploy/prometheus/)
#   2. the dashboard JSON's structure and metric names (check_observability.py structure)
#   3. live: a fresh database, exchange and queue; the release binary `migrate` (founding
#      capacity 20) and `run`; RabbitMQ's rabbitmq_prometheus plugin (enabled if needed);
#      a private Prometheus on loopback (1 s scrapes, the alert rules loaded); 5 warm-up events,
#      then 200 with duplicates, slug collisions, invalid and demo events. Then the metric
#      names Prometheus scraped, every dashboard expression and every alert rule are checked
#      through its HTTP API, and alert states and panel values are compared with the load.
#
# Root for a few commands (apt-get when promtool or python3 is missing, rabbitmq-plugins,
# rabbitmqctl): run as root, or as a user with passwordless sudo (see deploy/tests/lib.sh).
# Needs PostgreSQL and RabbitMQ on 127.0.0.1 (scripts/ensure-services.sh is run when present)
# and target/release/signup-worker, built beforehand (this script never runs cargo;
# SIGNUP_WORKER_BIN overrides the path).
# Idempotent: every run uses new names and removes them afterwards (the rabbitmq_prometheus
# plugin stays enabled). Takes about 15 s. Exit 0 only if everything passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/tests/lib.sh
source deploy/tests/lib.sh

BIN=${SIGNUP_WORKER_BIN:-target/release/signup-worker}
HELPER=deploy/tests/check_observability.py
DASHBOARD=grafana/dashboards/signup-worker.json
ALERTS=deploy/prometheus/alerts.yml
COUNT=200
RATE_INTERVAL=30s # stands in for Grafana's $__rate_interval (Prometheus scrapes every 1 s)
START=$SECONDS

section() { printf '\n== %s\n' "$1"; }

# Polls a command (no output) until it succeeds or the deadline (seconds) passes.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------------------ tools
need_python3
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    section "installing Debian's prometheus package (promtool, prometheus)"
    # Without its recommendations (node-exporter, which brings smartmontools and some 50
    # more packages, services among them). The package enables and starts its own prometheus
    # service (systemd, or an init script where a runlevel lets it); this script only needs the
    # binaries, so it stops and disables the service it has just installed.
    apt_install prometheus
    if [[ -d /run/systemd/system ]]; then
        as_root systemctl disable --now prometheus.service
    else
        as_root service prometheus stop && as_root update-rc.d prometheus disable
    fi >/dev/null 2>&1 || echo "note: could not stop or disable the prometheus service the package installed" >&2
fi
echo "promtool: $(promtool --version 2>&1 | head -1)"

# --------------------------------------------------------------------------- promtool
section "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml
section "promtool check rules $ALERTS"
promtool check rules "$ALERTS"
section "promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml
RULES=$(grep -c '^ *- alert:' "$ALERTS")
TESTED=$(grep -c '^ *alertname:' deploy/prometheus/alerts_test.yml)
echo "$RULES alert rules, $TESTED alert evaluations in the unit tests"
while read -r name; do
    grep -q "alertname: $name\$" deploy/prometheus/alerts_test.yml || die "alert $name has no unit test"
done < <(sed -n 's/^ *- alert: *//p' "$ALERTS")

# ----------------------------------------------------------------------------- static
section "dashboard structure (static)"
python3 "$HELPER" structure --dashboard "$DASHBOARD"

# ------------------------------------------------------------------------------- live
section "live: worker, RabbitMQ metrics, Prometheus"
[[ -x $BIN ]] || die "$BIN is missing: build it first (cargo build --release)"
[[ -x scripts/ensure-services.sh ]] && scripts/ensure-services.sh

ID=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
DB=obs_$ID
QUEUE=obs.$ID.signups
EXCHANGE=obs.$ID.events
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")
WORKER_PID=
PROM_PID=
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export SIGNUP_EXCHANGE=$EXCHANGE SIGNUP_QUEUE=$QUEUE LOG_FORMAT=json
unset METRICS_ADDR

stop_pid() { # pid, seconds before SIGKILL
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 0
    kill -TERM "$1" 2>/dev/null || true
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$WORKER_PID" 30
    stop_pid "$PROM_PID" 10
    psql -h 127.0.0.1 -U postgres -qAtc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
    for q in "$QUEUE" "$QUEUE.retry" "$QUEUE.dlq"; do
        as_root rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1
    done
    # rabbitmqctl has no delete_exchange (and the management API is not enabled here):
    # delete it through RabbitMQ's internal API, best effort; a leftover exchange is harmless.
    as_root rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$EXCHANGE\">>), false, <<\"check-observability\">>)." >/dev/null 2>&1 ||
        echo "note: exchange $EXCHANGE (and perhaps its queues) left in place: rabbitmqctl failed"
    rm -rf "$TMP"
    if ((rc == 0)); then
        printf '\n== observability checks passed in %ds\n' "$((SECONDS - START))"
    else
        printf '\n== observability checks FAILED (exit %d) after %ds\n' "$rc" "$((SECONDS - START))" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# RabbitMQ's Prometheus plugin (port 15692): enable it when it is not answering. Idempotent.
RABBIT_METRICS=http://127.0.0.1:15692
RABBIT=1
if ! curl -sf -o /dev/null "$RABBIT_METRICS/metrics"; then
    echo "enabling rabbitmq_prometheus"
    as_root rabbitmq-plugins enable rabbitmq_prometheus >/dev/null || true
fi
if wait_for 30 curl -sf -o /dev/null "$RABBIT_METRICS/metrics"; then
    echo "RabbitMQ metrics: $RABBIT_METRICS/metrics and /metrics/detailed"
elif [[ ${OBS_ALLOW_NO_RABBITMQ_METRICS:-0} == 1 ]]; then
    echo "WARNING: RabbitMQ's Prometheus endpoint does not answer: RabbitMQ panels and rules are not checked"
    RABBIT=0
else
    die "RabbitMQ's Prometheus endpoint $RABBIT_METRICS does not answer (set OBS_ALLOW_NO_RABBITMQ_METRICS=1 to skip those panels)"
fi

"$BIN" migrate --founding-capacity 20 >"$TMP/migrate.log" 2>&1 || {
    cat "$TMP/migrate.log" >&2
    die "signup-worker migrate failed"
}
"$BIN" run --metrics-addr 127.0.0.1:0 2>"$TMP/worker.log" >/dev/null &
WORKER_PID=$!
worker_addr() { sed -n 's/.*"metrics_addr":"\([^"]*\)".*/\1/p' "$TMP/worker.log" | head -1; }
ready() { kill -0 "$WORKER_PID" && [[ -n $(worker_addr) ]] && curl -sf -o /dev/null "http://$(worker_addr)/readyz"; }
wait_for 60 ready || {
    tail -20 "$TMP/worker.log" >&2
    die "the worker did not become ready within 60 s"
}
WORKER_ADDR=$(worker_addr)
echo "worker pid $WORKER_PID ready, metrics on $WORKER_ADDR; database $DB, queue $QUEUE"

# A private Prometheus with the job names of deploy/prometheus/prometheus.yml. The rules are
# alerts.yml with the default queue name replaced by this run's queue, so that the RabbitMQ
# rules see this run's queues; the unmodified expressions are evaluated as well.
sed "s/queue=\"tenant\\.signups/queue=\"$QUEUE/g" "$ALERTS" >"$TMP/alerts.yml"
grep -q "queue=\"$QUEUE" "$TMP/alerts.yml" || die "could not rewrite queue names in $ALERTS"
TARGETS=1
{
    cat <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [$TMP/alerts.yml]
scrape_configs:
  - job_name: signup-worker
    static_configs: [{targets: ["$WORKER_ADDR"]}]
EOF
    if ((RABBIT)); then
        TARGETS=3
        cat <<EOF
  - job_name: rabbitmq
    static_configs: [{targets: ["127.0.0.1:15692"]}]
  - job_name: rabbitmq-queues
    metrics_path: /metrics/detailed
    params: {family: [queue_coarse_metrics, queue_consumer_count]}
    static_configs: [{targets: ["127.0.0.1:15692"]}]
EOF
    fi
} >"$TMP/prometheus.yml"
promtool check config "$TMP/prometheus.yml" >/dev/null
PROM_PORT=$(free_port)
PROM=http://127.0.0.1:$PROM_PORT
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
wait_for 30 curl -sf -o /dev/null "$PROM/-/ready" || {
    tail -20 "$TMP/prometheus.log" >&2
    die "Prometheus did not become ready on $PROM within 30 s"
}
echo "prometheus pid $PROM_PID on $PROM ($(prometheus --version 2>&1 | head -1))"

# A few events first, so that the latency histogram (which appears with the first event) has
# a sample before the load and its rate() covers the load.
WARMUP=5
"$BIN" publish --count "$WARMUP" --no-progress

# Targets up, the histogram scraped, and RabbitMQ's series for this run's queues present (at 0) before the load, so
# that the DLQ rule sees the dead-letter queue grow.
rabbit_flag=()
((RABBIT)) && rabbit_flag=(--rabbitmq)
python3 "$HELPER" wait --before-load --prom "$PROM" --queue "$QUEUE" --targets "$TARGETS" \
    --timeout 30 "${rabbit_flag[@]}"

section "live: load ($COUNT events: 10% duplicates, 10% slug collisions, 5% invalid, 10% demo; capacity 20)"
"$BIN" publish --count "$COUNT" --duplicates 0.1 --slug-collisions 0.1 --invalid 0.05 --demo 0.1 --no-progress

section "live: waiting for Prometheus (deadline 90 s)"
python3 "$HELPER" wait --prom "$PROM" --queue "$QUEUE" --count "$((WARMUP + COUNT))" --targets "$TARGETS" \
    --rate-interval "$RATE_INTERVAL" --timeout 90 "${rabbit_flag[@]}"

section "live: metric names, every dashboard expression and alert rule through the Prometheus HTTP API"
python3 "$HELPER" live --prom "$PROM" --queue "$QUEUE" --rate-interval "$RATE_INTERVAL" \
    --dashboard "$DASHBOARD" --rules "$RULES" "${rabbit_flag[@]}"
