//! `worker::run` driven in-process: shutdown is a parameter, so a test can pass a oneshot
//! instead of the OS signals, and `run` returns once it has finished what it holds.

use metrics_exporter_prometheus::PrometheusBuilder;
use signup_worker::secrets::SecretUrl;
use signup_worker::worker::{self, WorkerSettings};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stores_events_and_returns_on_a_oneshot_shutdown() {
    let env = TestEnv::new(100).await;
    let settings = WorkerSettings {
        database_url: SecretUrl::new(env.db_url.clone()),
        amqp_url: SecretUrl::new(amqp_url()),
        topology: env.topology.clone(),
        max_deliveries: 10,
        prefetch: 300,
        batch_size: 100,
        founding_capacity: 100,
        migrate: true,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    };
    // A recorder of its own, not installed globally: this process runs many tests.
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker::run(settings, handle, async {
        let _ = stopped.await;
    }));

    let events: Vec<_> = (0..25)
        .map(|i| event(&format!("in-process-{i}"), i % 5 == 0))
        .collect();
    env.publish_many(&events).await;
    let outcomes = env.wait_outcomes(25).await;
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));
    assert_eq!(env.tenant_count().await, 25);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returns after shutdown")
        .expect("the run task did not panic");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(env.queue_messages(&env.topology.queue).await, 0);
    env.assert_no_number_burned().await;
    assert_eq!(
        env.founding().await.assigned,
        20,
        "demo tenants are not numbered"
    );
    env.cleanup().await;
}
