#!/usr/bin/env bash
# The single test command: formatting, lints, then every unit and integration test.
#
# Integration tests run against the local PostgreSQL and RabbitMQ (started by
# scripts/ensure-services.sh when needed), each test in its own database and queues, and
# spawn the release binary. Everything builds with --release so the build happens once.
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture` or
# `scripts/test.sh --test race`.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=
START=$SECONDS

section() {
    STEP=$1
    printf '\n==== %s ====\n' "$1"
}

on_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        printf '\n==== FAILED: %s (exit %d) ====\n' "${STEP:-setup}" "$rc" >&2
    fi
}
trap on_exit EXIT

section "services (PostgreSQL, RabbitMQ)"
scripts/ensure-services.sh
echo "ok"

section "cargo fmt --check"
cargo fmt --all -- --check
echo "ok"

section "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --release -- -D warnings

section "cargo build --release (the binary the deployment checks run, and the examples)"
cargo build --release --bins --examples

section "deployment files (compose, Kubernetes, Dockerfile)"
deploy/tests/check-manifests.sh

section "observability (promtool, dashboard, a real Prometheus scraping a real worker)"
deploy/tests/check-observability.sh

section "AsyncAPI document (docs/asyncapi.yaml and the schemas it references)"
scripts/check-asyncapi.sh

section "cargo test (unit and integration, release)"
# Doc tests are left out: the crates have none, and a trailing "0 passed" would hide the count.
log=$(mktemp)
cargo test --workspace --release --lib --bins --tests "$@" 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
totals=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }' "$log")
rm -f "$log"

STEP=
printf '\n==== all checks passed in %ds ====\n' "$((SECONDS - START))"
# The closing line: totals over every cargo test binary.
echo "$totals"
