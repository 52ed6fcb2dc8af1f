//! Every invalid class of contract section 3 is dead-lettered with a reason, stores nothing,
//! and does not stop the worker.

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

fn body(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_class_is_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new(100).await;
    let tenant = |slug: &str, name: &str, tier: &str| json!({"business_name": name, "slug": slug, "owner_email": "a@b.example", "tier": tier});
    let ev = |version: serde_json::Value, tenant: serde_json::Value| json!({"event_id": Uuid::new_v4(), "type": "tenant.signup.requested", "version": version, "tenant": tenant});
    let mut huge = ev(json!(1), tenant("huge-co", "Huge", "starter"));
    huge["padding"] = json!("x".repeat(65_536));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{this is not json".to_vec()),
        (
            "missing field",
            body(
                json!({"event_id": Uuid::new_v4(), "type": "tenant.signup.requested", "version": 1, "tenant": {"slug": "no-tier"}}),
            ),
        ),
        (
            "bad slug",
            body(ev(json!(1), tenant("Bad_Slug", "Bad", "starter"))),
        ),
        (
            "wrong version",
            body(ev(json!(2), tenant("version-two", "V2", "starter"))),
        ),
        (
            "wrong tier",
            body(ev(json!(1), tenant("platinum-co", "P", "platinum"))),
        ),
        (
            "blank name",
            body(ev(json!(1), tenant("blank-name", "   ", "growth"))),
        ),
        ("body over 64 KiB", body(huge)),
    ];
    let valid_before = event("valid-before", false);
    let valid_after = event("valid-after", false);
    env.publish_raw(&valid_before.0, &valid_before.1).await;
    for (i, (_, b)) in cases.iter().enumerate() {
        env.publish_raw(b, &format!("invalid-{i}")).await;
    }
    env.publish_raw(&valid_after.0, &valid_after.1).await;

    let worker = env.spawn_worker(&[]);
    let outcomes = env.wait_outcomes(9).await;
    assert_eq!(
        env.tenant_count().await,
        2,
        "only the two valid events stored"
    );
    let rejected: Vec<_> = outcomes
        .iter()
        .filter(|o| o.reason.as_deref() == Some("invalid"))
        .collect();
    assert_eq!(rejected.len(), cases.len());
    assert!(rejected
        .iter()
        .all(|o| o.kind == "tenant.signup.rejected" && o.tenant_id.is_none()));
    // Unparseable body: the event id falls back to the AMQP message_id.
    assert!(rejected
        .iter()
        .any(|o| o.event_id.as_deref() == Some("invalid-0")));

    wait_for("7 dead letters", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 7
    })
    .await;
    let dead = env.take_dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    for ((name, sent), (got, error)) in cases.iter().zip(&dead) {
        assert_eq!(sent, got, "{name}: the body is kept as sent");
        let error = error.clone().unwrap_or_default();
        assert!(
            error.starts_with("invalid: "),
            "{name}: x-signup-error = {error:?}"
        );
    }
    assert!(
        dead[1].1.as_deref().unwrap().contains("missing field"),
        "{:?}",
        dead[1].1
    );
    assert!(
        dead[6].1.as_deref().unwrap().contains("65536"),
        "{:?}",
        dead[6].1
    );
    assert!(worker.is_ready().await, "the worker goes on");
    // Each delivery is logged and counted when its batch is acked.
    wait_metric(&worker, "signup_events_total{outcome=\"invalid\"}", 7.0).await;
    // One span per event, with its id, in the JSON log lines.
    wait_for("a JSON log line in the event's span", || async {
        worker.logs().into_iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            v["span"]["name"] == "signup"
                && v["span"]["event_id"] == "invalid-0"
                && v["level"] == "WARN"
        })
    })
    .await;
    env.assert_no_number_burned().await;
    assert_eq!(env.founding().await.position, 2);
    drop(worker);
    env.cleanup().await;
}
