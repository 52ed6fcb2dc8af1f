//! The DLQ tools on a dead-letter queue holding several reasons: `dlq list` removes nothing
//! (however often it runs), `dlq replay --reason` and `dlq purge --reason` act on exactly the
//! matching messages, and `dlq purge` refuses without `--yes`.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// The three kinds of reason in the test's DLQ, as substrings of `x-signup-error`.
const NOT_JSON: &str = "not JSON";
const SLUG: &str = "field `tenant.slug`";
const TIER: &str = "field `tenant.tier`";

fn signup(slug: &str, tier: &str) -> (Vec<u8>, String) {
    let id = Uuid::new_v4();
    let body = json!({"event_id": id, "type": "tenant.signup.requested", "version": 1,
        "tenant": {"business_name": "B", "slug": slug, "owner_email": "a@b.example", "tier": tier}});
    (serde_json::to_vec(&body).unwrap(), id.to_string())
}

/// `dlq list --json`, parsed.
fn list(env: &TestEnv, extra: &[&str]) -> Value {
    let args = [&["dlq", "list", "--json"][..], extra].concat();
    serde_json::from_str(&env.run_ok(&args)).unwrap()
}

/// How many listed messages have a reason containing each text.
fn counts(listing: &Value) -> [u64; 3] {
    let by_reason = listing["by_reason"].as_object().unwrap();
    [NOT_JSON, SLUG, TIER].map(|kind| {
        by_reason
            .iter()
            .filter(|(reason, _)| reason.contains(kind))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    })
}

/// The listed messages, ordered by message id.
fn by_message_id(listing: &Value) -> Vec<Value> {
    let mut messages = listing["messages"].as_array().unwrap().clone();
    messages.sort_by_key(|m| m["message_id"].to_string());
    messages
}

/// Two listings of the same messages, whatever their order.
fn assert_same(listing: &Value, expected: &Value) {
    for field in ["queue", "in_queue", "total", "by_reason"] {
        assert_eq!(listing[field], expected[field], "{field}");
    }
    assert_eq!(by_message_id(listing), by_message_id(expected));
}

async fn wait_depths(env: &TestEnv, main: u32, dlq: u32) {
    wait_for(
        &format!("{main} on the main queue, {dlq} in the DLQ"),
        || async {
            env.queue_messages(&env.topology.queue).await == main
                && env.queue_messages(&env.topology.dead_letter_queue()).await == dlq
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replay_and_purge_by_reason() {
    let env = TestEnv::new(10).await;
    let bad_slug = signup("Bad_Slug", "starter");
    env.publish_many(&[
        (b"{this is not json".to_vec(), "nj-1".to_owned()),
        bad_slug.clone(),
        (b"nor this".to_vec(), "nj-2".to_owned()),
        signup("platinum-co", "platinum"),
        signup("-dash-first", "growth"),
        event("dlq-valid", false),
    ])
    .await;
    let stamped = amqp_props("nj-3").with_timestamp(1_800_000_000);
    env.publish_with(b"[1, 2", stamped).await;
    let mut worker = env.spawn_worker(&[]);
    env.wait_outcomes(7).await;
    wait_depths(&env, 0, 6).await;
    assert_eq!(env.tenant_count().await, 1);
    // Without a consumer, replayed messages stay on the main queue to be counted.
    worker.sigterm();
    assert!(worker.wait_exit().await.success());

    // Listing removes nothing and shows the same each time.
    let first = list(&env, &[]);
    assert_eq!(
        (first["total"].as_u64(), first["in_queue"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(counts(&first), [3, 2, 1], "{first}");
    let messages = first["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6);
    assert!(messages.iter().all(|m| m["deliveries"] == 1), "{first}");
    let by_id = |id: &str| messages.iter().find(|m| m["message_id"] == id).unwrap();
    assert_eq!(
        by_id("nj-1")["event_id"],
        "nj-1",
        "no id in the body: the message id"
    );
    assert_eq!(by_id("nj-1")["died_at"], Value::Null);
    assert_eq!(by_id("nj-3")["died_at"], "2027-01-15T08:00:00Z");
    assert_eq!(by_id("nj-3")["died_at_source"], "timestamp");
    let slug_row = by_id(&bad_slug.1);
    assert_eq!(
        (&slug_row["event_id"], &slug_row["slug"]),
        (&json!(bad_slug.1), &json!("Bad_Slug"))
    );
    assert!(slug_row["reason"]
        .as_str()
        .unwrap()
        .starts_with("invalid: field `tenant.slug`"));
    // RabbitMQ keeps the order of returned messages on a classic queue only: on a quorum
    // queue it may rotate or (past 32 messages) shuffle. The same messages are there.
    wait_depths(&env, 0, 6).await;
    assert_same(&list(&env, &[]), &first);
    let human = env.run_ok(&["dlq", "list"]);
    assert!(
        human.contains("Bad_Slug") && human.contains("nj-3"),
        "{human}"
    );
    let summary = format!(
        "listed 6 of 6 dead letters in {}; nothing was removed\n",
        env.topology.dead_letter_queue()
    );
    assert!(human.ends_with(&summary), "{human}");
    // More looks than RabbitMQ 4's default quorum delivery limit (20): still all there.
    for _ in 0..25 {
        wait_depths(&env, 0, 6).await;
        let again = signup_worker::dlq::list(&broker(), &env.topology, None)
            .await
            .unwrap();
        assert_same(&serde_json::to_value(&again).unwrap(), &first);
    }
    // `--limit` looks at the head only (which two: see the classic queue test).
    wait_depths(&env, 0, 6).await;
    let head = list(&env, &["--limit", "2"]);
    assert_eq!(
        (head["total"].as_u64(), head["in_queue"].as_u64()),
        (Some(2), Some(6))
    );
    assert!(head["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| messages.contains(m)));
    wait_depths(&env, 0, 6).await;
    assert_same(&list(&env, &[]), &first);

    // Replay the not-JSON ones only: the others stay, untouched.
    let said = env.run_ok(&["dlq", "replay", "--reason", NOT_JSON]);
    assert!(
        said.starts_with("replayed 3 ") && said.contains("3 not matching"),
        "{said}"
    );
    wait_depths(&env, 3, 3).await;
    let rest = list(&env, &[]);
    assert_eq!(counts(&rest), [0, 2, 1]);
    let untouched: Vec<_> = messages
        .iter()
        .filter(|m| !m["reason"].as_str().unwrap().contains(NOT_JSON))
        .collect();
    assert_eq!(
        by_message_id(&rest),
        by_message_id(&json!({"messages": untouched}))
    );

    // Purge refuses without --yes; with it, by reason, then all.
    let out = env
        .command()
        .args(["dlq", "purge", "--reason", TIER])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("--yes"),
        "{stderr}"
    );
    wait_depths(&env, 3, 3).await;
    let said = env.run_ok(&["dlq", "purge", "--yes", "--reason", SLUG]);
    assert!(
        said.starts_with("purged 2 dead letters") && said.contains("1 not matching"),
        "{said}"
    );
    wait_depths(&env, 3, 1).await;
    assert_eq!(counts(&list(&env, &[])), [0, 0, 1]);
    // A worker dead-letters the replayed messages again: they arrived whole.
    let worker = env.spawn_worker(&[]);
    wait_depths(&env, 0, 4).await;
    assert_eq!(counts(&list(&env, &[])), [3, 0, 1]);
    let said = env.run_ok(&["dlq", "purge", "--yes"]);
    assert!(said.starts_with("purged 4 dead letters"), "{said}");
    wait_depths(&env, 0, 0).await;
    assert!(env.run_ok(&["dlq", "list"]).starts_with("listed 0 of 0 "));
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_dlq_keeps_its_order_and_limit_takes_the_head() {
    let env = TestEnv::with_queue_type(10, signup_worker::amqp::QueueType::Classic).await;
    let ids = ["c-1", "c-2", "c-3"];
    let bodies: Vec<_> = ids
        .iter()
        .map(|id| (b"not json".to_vec(), id.to_string()))
        .collect();
    env.publish_many(&bodies).await;
    let worker = env.spawn_worker(&[]);
    wait_depths(&env, 0, 3).await;
    let order = |listing: &Value| -> Vec<String> {
        let messages = listing["messages"].as_array().unwrap();
        messages
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect()
    };
    for _ in 0..3 {
        wait_depths(&env, 0, 3).await;
        assert_eq!(order(&list(&env, &[])), ids);
        wait_depths(&env, 0, 3).await;
        assert_eq!(order(&list(&env, &["--limit", "2"])), ids[..2]);
    }
    let said = env.run_ok(&["dlq", "purge", "--yes"]);
    assert!(said.starts_with("purged 3 dead letters"), "{said}");
    wait_depths(&env, 0, 0).await;
    drop(worker);
    env.cleanup().await;
}

fn amqp_props(message_id: &str) -> lapin::BasicProperties {
    signup_worker::amqp::json_properties().with_message_id(message_id.into())
}
