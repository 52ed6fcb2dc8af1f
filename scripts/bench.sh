#!/usr/bin/env bash
# Throughput, CPU per signup and latency benchmark (issue 9's figures).
#
# Saturation, for each replica count: fresh database and queues, pre-load N events (publishing
# is timed too, but separately), then start the workers and time until N tenants are stored;
# over that window, CPU ms per signup of the workers, the PostgreSQL processes and the broker
# (/proc/<pid>/stat), whole-machine busy % (/proc/stat), and peak RSS per worker (VmHWM).
# Fixed rate: one idle worker, RATE signups/s offered for RATE_SECS by the xtask's own publisher;
# p50/p99 from publish to the outcome event, and the same CPU figures. Baseline: PostgreSQL
# alone inserting the same rows, 100 per transaction, through the same trigger (pgbench).
# Each is run RUNS times from scratch. Each run prints one `BENCH {json}` line; then tables of
# the medians (min-max), plain and as markdown for docs/BENCHMARKS.md. The database and queues
# are dropped at the end. After services and build, this is `xtask bench` (xtask/src/bench.rs).
#
# Environment (all optional):
#   N=50000                    events per saturation run (and rows for the baseline)
#   REPLICA_COUNTS="1 2"       replica counts to measure at saturation
#   RUNS=3                     runs of each measurement; the tables give the median
#   BENCH_KINDS="saturation fixed-rate baseline"   what to measure
#   RATE=1000 RATE_SECS=20     the fixed-rate run: signups/s offered, and for how long
#   OUTCOME_TIMEOUT=30         seconds after the last fixed-rate publish for every outcome
#   BENCH_TIMEOUT=600          seconds allowed for one saturation run to store N tenants
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_bench
#   SIGNUP_QUEUE=bench.signups SIGNUP_EXCHANGE=bench.events   (AMQP_URL as for the worker)
#   RUST_LOG=info              the workers' log filter (logs go to target/bench/)
#   BENCH_FORCE=1              allow database/queue names that do not contain "bench"
# Worker settings such as PREFETCH, BATCH_SIZE or SIGNUP_QUEUE_TYPE pass through.
# shellcheck source=scripts/prelude.sh
source "$(dirname "$0")/prelude.sh"
run_task "Services and build" bench "$@"
