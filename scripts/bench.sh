#!/usr/bin/env bash
# Throughput benchmark: how fast do 1 and 2 worker replicas turn a full queue into tenants?
#
# For each replica count: fresh database and queues, pre-load N events (publishing is timed
# too, but separately), then start the workers and time until N tenants are stored. Peak RSS
# per worker is read from /proc/<pid>/status (VmHWM). Finally a baseline: PostgreSQL alone
# inserting the same rows, 100 per transaction, through the same trigger (pgbench).
# Results go to stdout as a plain table and as markdown for docs/BENCHMARKS.md.
# After services and build, this is `xtask bench` (xtask/src/bench.rs).
#
# Environment (all optional):
#   N=50000                    events per run
#   REPLICA_COUNTS="1 2"       replica counts to measure
#   BENCH_TIMEOUT=600          seconds allowed for one run to store N tenants
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_bench
#   SIGNUP_QUEUE=bench.signups SIGNUP_EXCHANGE=bench.events   (AMQP_URL as for the worker)
#   RUST_LOG=info              the workers' log filter (logs go to target/bench/)
#   BENCH_FORCE=1              allow database/queue names that do not contain "bench"
# Worker settings such as PREFETCH, BATCH_SIZE or SIGNUP_QUEUE_TYPE pass through.
# shellcheck source=scripts/prelude.sh
source "$(dirname "$0")/prelude.sh"
run_task "Services and build" bench "$@"
