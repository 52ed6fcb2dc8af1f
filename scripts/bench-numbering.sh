#!/usr/bin/env bash
# The numbering trigger's cost per row, PostgreSQL alone: 100-row INSERTs (pgbench, one
# client) into `tenants` with no trigger (the floor), with the numbering as it was before
# reclaiming existed (the sequence only), and with the current numbering (lock, pool lookup,
# then the sequence) and an empty pool. Each variant runs ROUNDS times, interleaved, on an
# emptied table; it prints the median of each and the numbering cost per row.
# After services and build, this is `xtask bench-numbering` (xtask/src/numbering.rs).
#
# Environment (all optional):
#   ROWS=20000 ROUNDS=5
#   PG_SERVER=postgres://postgres@127.0.0.1:5432   (database signup_worker_bench_numbering)
# shellcheck source=scripts/prelude.sh
source "$(dirname "$0")/prelude.sh"
run_task "Services and build" bench-numbering "$@"
