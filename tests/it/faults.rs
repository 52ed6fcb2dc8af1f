//! Failures: killed PostgreSQL backends, a closed AMQP connection, per-event transient
//! errors, events that never succeed, and SIGTERM while busy.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backends_and_a_closed_connection_lose_and_duplicate_nothing() {
    let env = TestEnv::new(100_000).await;
    let workers: Vec<_> = (0..2)
        .map(|_| env.spawn_worker(&[("BATCH_SIZE", "20"), ("PREFETCH", "40")]))
        .collect();
    for w in &workers {
        w.wait_ready().await;
    }
    const N: usize = 3000;
    let events: Vec<_> = (0..N)
        .map(|i| event(&format!("fault-{i}"), false))
        .collect();
    let publisher = async {
        for chunk in events.chunks(100) {
            env.publish_many(chunk).await;
        }
    };
    // Inject faults while the events stream in: terminate every backend of the test database
    // (the workers' connections) a few times, and close the workers' AMQP connections once.
    let faults = async {
        let mut tick = tokio::time::interval(Duration::from_millis(150));
        let mut killed = 0;
        let mut closed = 0;
        for round in 0..12 {
            tick.tick().await;
            killed += env
                .scalar(&format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{}' AND pid <> pg_backend_pid()",
                    env.db_name
                ))
                .await;
            if round == 6 {
                closed += close_amqp_connections(&format!("signup-worker {}", env.topology.queue));
            }
        }
        (killed, closed)
    };
    let ((), (killed, closed)) = tokio::join!(publisher, faults);
    assert!(closed >= 1, "no worker connection was closed");
    eprintln!("terminated {killed} backends, closed {closed} AMQP connections");

    wait_for("all tenants", || async {
        env.tenant_count().await == N as i64
    })
    .await;
    let outcomes = env.wait_outcomes(N).await;
    let ids: HashSet<_> = outcomes
        .iter()
        .map(|o| o.event_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "every event got its outcome");
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));
    env.assert_numbering_invariants().await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE founding_member_number IS NOT NULL")
            .await,
        N as i64
    );
    // Numbers drawn by the killed transactions come back to the pool within seconds.
    env.wait_nothing_burned().await;
    let stats = env.founding().await;
    assert_eq!(stats.position, stats.assigned + stats.pooled, "{stats:?}");
    for w in &workers {
        w.wait_ready().await;
    }
    assert!(
        total(
            &workers,
            "signup_retries_total{reason=\"broker_unavailable\"}"
        )
        .await
            >= 1.0
    );
    drop(workers);
    env.cleanup().await;
}

/// A trigger that fails chosen slugs: `flaky-*` with a serialization failure for its first two
/// attempts (counted by a sequence, which a rollback does not undo), `doomed-*` always. Named
/// to fire before the numbering trigger, so failed attempts burn no number.
const FAULT_TRIGGER: &str = r#"
CREATE SEQUENCE flaky_attempts;
CREATE FUNCTION inject_faults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slug LIKE 'flaky-%' AND nextval('flaky_attempts') <= 2 THEN
        RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
    END IF;
    IF NEW.slug LIKE 'doomed-%' THEN
        RAISE EXCEPTION 'injected' USING ERRCODE = 'deadlock_detected';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa_inject_faults BEFORE INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION inject_faults();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_then_dead_lettered() {
    let env = TestEnv::new(100).await;
    env.execute(FAULT_TRIGGER).await;
    let flaky = event("flaky-one", false);
    let doomed = event("doomed-one", false);
    let mates: Vec<_> = (0..5).map(|i| event(&format!("mate-{i}"), false)).collect();
    let mut all = vec![flaky.clone(), doomed.clone()];
    all.extend(mates.iter().cloned());
    env.publish_many(&all).await;
    let worker = env.spawn_worker(&[("MAX_DELIVERIES", "3")]);

    // Batch-mates are not held back by the doomed event.
    wait_for("flaky and the mates", || async {
        env.tenant_count().await == 6
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE slug = 'flaky-one'")
            .await,
        1
    );
    wait_for("the doomed event in the DLQ", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 1
    })
    .await;
    let dead = env.take_dead_letters().await;
    assert_eq!(dead[0].0, doomed.0);
    let error = dead[0].1.clone().unwrap();
    assert!(
        error.contains("3 deliveries") && error.contains("deadlock"),
        "{error}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE slug = 'doomed-one'")
            .await,
        0
    );
    assert_eq!(env.queue_messages(&env.topology.retry_queue()).await, 0);

    let outcomes = env.wait_outcomes(6).await;
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));
    assert!(
        !outcomes
            .iter()
            .any(|o| o.event_id.as_deref() == Some(doomed.1.as_str())),
        "no outcome for a dead-lettered event"
    );
    assert!(
        worker
            .metric("signup_retries_total{reason=\"serialization\"}")
            .await
            >= 2.0
    );
    assert!(
        worker
            .metric("signup_retries_total{reason=\"deadlock\"}")
            .await
            >= 3.0
    );
    wait_metric(
        &worker,
        "signup_events_total{outcome=\"dead_lettered\"}",
        1.0,
    )
    .await;
    wait_metric(&worker, "signup_events_total{outcome=\"created\"}", 6.0).await;
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_busy_exits_zero_and_loses_nothing() {
    let env = TestEnv::new(100_000).await;
    const N: usize = 4000;
    let events: Vec<_> = (0..N).map(|i| event(&format!("term-{i}"), false)).collect();
    for chunk in events.chunks(500) {
        env.publish_many(chunk).await;
    }
    let mut worker = env.spawn_worker(&[("BATCH_SIZE", "10"), ("PREFETCH", "20")]);
    wait_for("some progress", || async { env.tenant_count().await > 0 }).await;
    worker.sigterm();
    let status = worker.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        worker.logs().join("\n")
    );
    let stored = env.tenant_count().await;
    assert!(
        stored < N as i64,
        "the test wants to stop mid-stream; raise N"
    );
    // Everything stored was acked: what is left in the queue is exactly the rest.
    assert_eq!(
        env.queue_messages(&env.topology.queue).await as i64,
        N as i64 - stored
    );
    env.assert_no_number_burned().await;

    let _worker = env.spawn_worker(&[]);
    wait_for("all tenants after restart", || async {
        env.tenant_count().await == N as i64
    })
    .await;
    let outcomes = env.wait_outcomes(N).await;
    assert_eq!(
        outcomes.len(),
        N,
        "one outcome per event: nothing redelivered after a clean stop"
    );
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    drop(_worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_pauses_the_worker_and_loses_nothing() {
    let env = TestEnv::new(1000).await;
    let worker = env.spawn_worker(&[("BATCH_SIZE", "10")]);
    worker.wait_ready().await;
    let before: Vec<_> = (0..50)
        .map(|i| event(&format!("pre-outage-{i}"), false))
        .collect();
    env.publish_many(&before).await;
    wait_for("the first events", || async {
        env.tenant_count().await == 50
    })
    .await;

    // The outage: no new connections to the test database, and the existing ones cut. The
    // harness keeps its own connection (it is the one running these statements).
    env.execute_as_admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        env.db_name
    ))
    .await;
    env.scalar(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        env.db_name
    ))
    .await;
    let during: Vec<_> = (0..50)
        .map(|i| event(&format!("in-outage-{i}"), false))
        .collect();
    env.publish_many(&during).await;
    wait_for("/readyz to report the outage", || async {
        !worker.is_ready().await
    })
    .await;
    assert!(
        matches!(worker.get("/healthz").await, Some((200, _))),
        "alive all the same"
    );
    assert_eq!(env.tenant_count().await, 50);
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0,
        "an outage never dead-letters"
    );
    assert!(
        worker
            .metric("signup_retries_total{reason=\"database_unavailable\"}")
            .await
            >= 1.0
    );

    env.execute_as_admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        env.db_name
    ))
    .await;
    wait_for("the held events", || async {
        env.tenant_count().await == 100
    })
    .await;
    worker.wait_ready().await;
    let outcomes = env.wait_outcomes(100).await;
    let ids: HashSet<_> = outcomes
        .iter()
        .map(|o| o.event_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0
    );
    env.assert_numbering_invariants().await;
    drop(worker);
    env.cleanup().await;
}

/// A worker that cannot reach a server: it warns on every attempt, stays alive but not
/// ready, and still stops cleanly on SIGTERM.
async fn assert_keeps_trying_then_stops(mut worker: Worker, warning: &str) {
    wait_for("two retry warnings", || async {
        worker.logs().iter().filter(|l| l.contains(warning)).count() >= 2
    })
    .await;
    assert!(matches!(worker.get("/healthz").await, Some((200, _))));
    assert!(!worker.is_ready().await);
    worker.sigterm();
    let status = worker.wait_exit().await;
    assert!(status.success(), "{status:?}");
    assert!(!worker.logs().iter().any(|l| l.contains("panicked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_trying_an_unreachable_broker_and_stops_cleanly() {
    let env = TestEnv::new(10).await;
    let worker = env.spawn_worker(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]);
    assert_keeps_trying_then_stops(worker, "RabbitMQ session ended").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_trying_an_unreachable_database_and_stops_cleanly() {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("LOG_FORMAT", "json");
    assert_keeps_trying_then_stops(Worker::spawn_command(cmd), "PostgreSQL not ready").await;
}
