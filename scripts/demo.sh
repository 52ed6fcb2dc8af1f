#!/usr/bin/env bash
# The main job, end to end, on this machine:
#   1. makes sure PostgreSQL and RabbitMQ run, builds the release binary
#   2. starts from a clean demo database and demo queues (never the real ones)
#   3. migrates with a founding-member capacity, starts 2 worker replicas
#   4. publishes COUNT signup events, with duplicates, slug collisions, invalid and demo events
#   5. waits until every event is handled and prints what happened
#   6. stops the workers with SIGTERM (also on Ctrl-C) and reports their exit codes
# Steps 2 to 6 are `xtask demo` (xtask/src/demo.rs).
#
# Environment (all optional):
#   COUNT=2000                 events to publish
#   FOUNDING_CAPACITY=100      founding-member numbers available
#   REPLICAS=2                 worker replicas (metrics on 127.0.0.1:9464, :9465, ...)
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/signup_worker_demo
#   SIGNUP_QUEUE=demo.signups  SIGNUP_EXCHANGE=demo.events   (AMQP_URL as for the worker)
#   KEEP_RUNNING=1             leave the workers up after the summary until Ctrl-C
#   DEMO_FORCE=1               allow database/queue names that do not contain "demo"
#   READY_TIMEOUT=60 DRAIN_TIMEOUT=120   seconds to wait for readiness, for all events handled
# shellcheck source=scripts/prelude.sh
source "$(dirname "$0")/prelude.sh"
run_task "1. Services and build" demo "$@"
