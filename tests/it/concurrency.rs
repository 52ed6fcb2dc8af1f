//! Many consumers on separate connections racing for numbers, duplicates and slugs.

use std::collections::{HashMap, HashSet};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_300_signups_3_consumers_capacity_50() {
    let env = TestEnv::new(50).await;
    // Small batches and prefetch make the replicas interleave as much as possible.
    let small = [("BATCH_SIZE", "7"), ("PREFETCH", "14")];
    let workers: Vec<_> = (0..3).map(|_| env.spawn_worker(&small)).collect();
    // Published once all three consume, so the broker deals the events among them. (Published
    // before, the first replica to start could drain the 300 before the last one consumed.)
    for w in &workers {
        w.wait_ready().await;
    }
    let events: Vec<_> = (0..300)
        .map(|i| event(&format!("race-{i}"), i % 10 == 0))
        .collect();
    env.publish_many(&events).await;

    wait_for("300 tenants", || async { env.tenant_count().await == 300 }).await;
    let outcomes = env.wait_outcomes(300).await;
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));

    let numbers: Vec<i64> = {
        let mut v = Vec::new();
        for n in 1..=50 {
            v.push(
                env.scalar(&format!(
                    "SELECT count(*) FROM tenants WHERE founding_member_number = {n}"
                ))
                .await,
            );
        }
        v
    };
    assert!(
        numbers.iter().all(|c| *c == 1),
        "each of 1..50 exactly once: {numbers:?}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE founding_member_number IS NOT NULL")
            .await,
        50
    );
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    // Non-demo tenants past the bound.
    wait_total(
        &workers,
        "signup_founding_exhausted_total",
        300.0 - 30.0 - 50.0,
    )
    .await;
    // All three took part.
    for w in &workers {
        assert!(
            w.metric("signup_events_total{outcome=\"created\"}").await > 0.0,
            "an idle replica"
        );
    }
    drop(workers);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_sequential_and_concurrent_burn_nothing() {
    let env = TestEnv::new(1000).await;
    let workers: Vec<_> = (0..3)
        .map(|_| env.spawn_worker(&[("BATCH_SIZE", "5"), ("PREFETCH", "10")]))
        .collect();
    for w in &workers {
        w.wait_ready().await;
    }

    // Sequential: the same event, the second copy after the first is stored.
    let first = event("dup-sequential", false);
    env.publish_raw(&first.0, &first.1).await;
    wait_for("the first copy", || async { env.tenant_count().await == 1 }).await;
    env.publish_raw(&first.0, &first.1).await;
    let outcomes = env.wait_outcomes(2).await;
    assert_eq!(
        outcomes[0], outcomes[1],
        "repeated outcomes carry the same body"
    );
    assert_eq!(outcomes[0].founding_member_number, Some(1));

    // Concurrent: 40 events, each published 3 times back to back, spread over 3 consumers.
    let mut copies = Vec::new();
    let events: Vec<_> = (0..40).map(|i| event(&format!("dup-{i}"), false)).collect();
    for e in &events {
        for _ in 0..3 {
            copies.push(e.clone());
        }
    }
    env.publish_many(&copies).await;
    let outcomes = env.wait_outcomes(2 + 120).await;
    assert_eq!(env.tenant_count().await, 41);

    let mut by_event: HashMap<String, Vec<_>> = HashMap::new();
    for o in &outcomes {
        by_event
            .entry(o.event_id.clone().unwrap())
            .or_default()
            .push(o.clone());
    }
    for (_, id) in &events {
        let got = &by_event[id];
        assert_eq!(got.len(), 3, "one outcome per copy");
        assert!(got
            .iter()
            .all(|o| o == &got[0] && o.kind == "tenant.signup.completed"));
    }
    let numbers: HashSet<_> = outcomes
        .iter()
        .map(|o| o.founding_member_number.unwrap())
        .collect();
    assert_eq!(numbers.len(), 41, "41 distinct numbers for 41 tenants");
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    assert_eq!(env.founding().await.position, 41);
    wait_total(
        &workers,
        "signup_events_total{outcome=\"duplicate\"}",
        1.0 + 80.0,
    )
    .await;
    wait_total(&workers, "signup_events_total{outcome=\"created\"}", 41.0).await;
    drop(workers);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slug_conflicts_reject_without_burning() {
    let env = TestEnv::new(1000).await;
    // Two events, one slug, one worker: the second is rejected.
    let a = event("shared-slug", false);
    let b = event("shared-slug", false);
    env.publish_many(&[a.clone(), b.clone()]).await;
    // Twenty slugs, three rival events each, for three concurrent consumers.
    let rivals: Vec<_> = (0..60)
        .map(|i| event(&format!("contested-{}", i % 20), false))
        .collect();
    env.publish_many(&rivals).await;
    let workers: Vec<_> = (0..3)
        .map(|_| env.spawn_worker(&[("BATCH_SIZE", "4"), ("PREFETCH", "8")]))
        .collect();

    let outcomes = env.wait_outcomes(62).await;
    assert_eq!(env.tenant_count().await, 21);
    let of = |id: &str| {
        outcomes
            .iter()
            .find(|o| o.event_id.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    assert_eq!(of(&a.1).kind, "tenant.signup.completed");
    let rejected = of(&b.1);
    assert_eq!(rejected.kind, "tenant.signup.rejected");
    assert_eq!(rejected.reason.as_deref(), Some("slug_taken"));
    assert_eq!(rejected.slug.as_deref(), Some("shared-slug"));
    assert_eq!(rejected.tenant_id, None);
    let completed = outcomes
        .iter()
        .filter(|o| o.kind == "tenant.signup.completed")
        .count();
    let slug_taken = outcomes
        .iter()
        .filter(|o| o.reason.as_deref() == Some("slug_taken"))
        .count();
    assert_eq!((completed, slug_taken), (21, 41));
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    wait_total(&workers, "signup_conflicts_total{kind=\"slug\"}", 41.0).await;
    assert_eq!(
        total(&workers, "signup_conflicts_total{kind=\"founding_number\"}").await,
        0.0
    );
    drop(workers);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_creates_unnumbered_tenants() {
    let env = TestEnv::new(5).await;
    let mut events: Vec<_> = (0..12)
        .map(|i| event(&format!("full-{i}"), false))
        .collect();
    events.extend((0..3).map(|i| event(&format!("demo-{i}"), true)));
    env.publish_many(&events).await;
    let worker = env.spawn_worker(&[]);
    wait_for("15 tenants", || async { env.tenant_count().await == 15 }).await;
    wait_for("gauges to refresh", || async {
        worker.metric("signup_founding_remaining").await == 0.0
            && worker.metric("signup_founding_assigned").await == 5.0
    })
    .await;

    let numbered: Vec<i64> = {
        let mut v = Vec::new();
        for n in 1..=5 {
            v.push(env.scalar(&format!("SELECT count(*) FROM tenants WHERE founding_member_number = {n} AND NOT is_demo")).await);
        }
        v
    };
    assert_eq!(numbered, vec![1; 5]);
    // The first five by arrival got the numbers.
    for i in 0..5 {
        assert!(env.scalar(&format!("SELECT count(*) FROM tenants WHERE slug = 'full-{i}' AND founding_member_number = {}", i + 1)).await == 1);
    }
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM tenants WHERE NOT is_demo AND founding_member_number IS NULL"
        )
        .await,
        7
    );
    wait_metric(&worker, "signup_founding_exhausted_total", 7.0).await;
    assert_eq!(worker.metric("signup_founding_capacity").await, 5.0);
    assert_eq!(worker.metric("signup_founding_burned").await, 0.0);
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}
