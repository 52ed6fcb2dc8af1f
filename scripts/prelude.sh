# shellcheck shell=bash
# Sourced by demo.sh, bench.sh and bench-numbering.sh: PostgreSQL and RabbitMQ up, the worker
# binary and the xtask built, then the xtask task runs (xtask/src/; `target/release/xtask
# <task> --help` lists every setting, each also read from the environment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# run_task <section title> <task> [arguments...]
run_task() {
    local bold='' reset=''
    if [[ -t 1 ]]; then bold=$'\033[1m' reset=$'\033[0m'; fi
    printf '\n%s==== %s ====%s\n' "$bold" "$1" "$reset"
    shift
    echo "+ scripts/ensure-services.sh"
    scripts/ensure-services.sh
    echo "  PostgreSQL and RabbitMQ are up"
    echo "+ cargo build --release -p signup-worker -p xtask"
    cargo build --release -p signup-worker -p xtask
    exec target/release/xtask "$@"
}
