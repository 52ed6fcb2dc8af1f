//! `AMQP_URL` as a list of brokers (contract section 2): a dead address costs a replica
//! nothing but a refused connect, and a list with no live address is one clear error line.
//! The failover of a real cluster is in the cluster test.

use crate::helpers::*;

/// Nothing listens on port 1; the connect is refused at once.
const DEAD: &str = "amqp://guest:secret@127.0.0.1:1/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_in_the_list_is_skipped() {
    let env = TestEnv::new(10).await;
    let list = format!("{DEAD}, {}", amqp_url());
    // The order is shuffled per process: with three replicas and a publisher, the dead
    // address comes first for some of them (all four miss it with probability 1/16).
    let workers: Vec<_> = (0..3)
        .map(|_| env.spawn_worker(&[("AMQP_URL", list.as_str())]))
        .collect();
    for w in &workers {
        w.wait_ready().await;
    }
    env.run_ok_with(
        &["publish", "--count", "60", "--no-progress"],
        &[("AMQP_URL", list.as_str())],
    );
    wait_for("60 tenants", || async { env.tenant_count().await == 60 }).await;
    env.assert_numbering_invariants().await;
    for w in &workers {
        assert!(
            w.logs().iter().all(|l| !l.contains("secret")),
            "the dead address's password never shows"
        );
    }
    drop(workers);
    env.cleanup().await;
}
