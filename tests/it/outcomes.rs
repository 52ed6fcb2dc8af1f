//! Admin commands end to end: status, set-capacity, dlq replay, and the publisher's mix.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_set_capacity_and_dlq_replay() {
    let env = TestEnv::new(2).await;
    // Two numbered tenants, then one invalid message in the DLQ.
    env.publish_many(&[
        event("cap-a", false),
        event("cap-b", false),
        event("cap-c", false),
    ])
    .await;
    env.publish_raw(b"not json", "broken-1").await;
    env.publish_raw(b"not json either", "broken-2").await;
    let worker = env.spawn_worker(&[]);
    env.wait_outcomes(5).await;
    wait_for("two dead letters", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 2
    })
    .await;

    let status: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["founding"],
        serde_json::json!({"capacity": 2, "position": 2, "assigned": 2, "pooled": 0, "retired": 0, "burned": 0, "remaining": 0})
    );
    assert_eq!(status["queues"]["dlq"]["messages"], 2);
    assert_eq!(status["queues"]["main"]["consumers"], 1);
    assert!(env.run_ok(&["status"]).contains("remaining"));

    // Below the position: refused, nothing changes.
    let out = env
        .command()
        .args(["founding", "set-capacity", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the sequence position 2"));
    assert_eq!(env.founding().await.capacity, 2);
    // Raising it reopens the programme for the next signup.
    env.run_ok(&["founding", "set-capacity", "10"]);
    assert_eq!(env.founding().await.capacity, 10);
    env.publish_raw(&event("cap-d", false).0, &uuid::Uuid::new_v4().to_string())
        .await;
    wait_for("cap-d numbered 3", || async {
        env.scalar(
            "SELECT count(*) FROM tenants WHERE slug = 'cap-d' AND founding_member_number = 3",
        )
        .await
            == 1
    })
    .await;

    // Replay: the worker sees the messages again and dead-letters them again. `--limit`
    // takes only that many; without it, all that were there when the replay started.
    let replay = |args: &'static [&'static str], expect: &'static str| {
        let said = env.run_ok(args);
        assert!(said.contains(expect), "{said}");
    };
    let settled = |invalid: f64| {
        let worker = &worker;
        let env = &env;
        async move {
            wait_for("the replayed messages back in the DLQ", || async {
                worker
                    .metric("signup_events_total{outcome=\"invalid\"}")
                    .await
                    == invalid
                    && env.queue_messages(&env.topology.dead_letter_queue()).await == 2
            })
            .await
        }
    };
    replay(&["dlq", "replay", "--limit", "1"], "replayed 1 ");
    settled(3.0).await;
    replay(&["dlq", "replay"], "replayed 2 ");
    settled(5.0).await;
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_mix_lands_exactly_once() {
    let env = TestEnv::new(100).await;
    // Published before any worker: the publisher declares the topology itself.
    let summary = env.run_ok(&[
        "publish",
        "--count",
        "400",
        "--duplicates",
        "0.1",
        "--slug-collisions",
        "0.1",
        "--invalid",
        "0.05",
        "--demo",
        "0.2",
        "--no-progress",
    ]);
    let count = |label: &str| -> i64 {
        let words: Vec<_> = summary.split([',', ':', '(', ')']).collect();
        words
            .iter()
            .find(|w| w.trim().ends_with(label))
            .and_then(|w| w.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{label} in {summary}"))
    };
    let (new, invalid) = (count("new events"), count("invalid"));
    assert_eq!(env.queue_messages(&env.topology.queue).await, 400);

    let workers: Vec<_> = (0..2)
        .map(|_| env.spawn_worker(&[("BATCH_SIZE", "16")]))
        .collect();
    let outcomes = env.wait_outcomes(400).await;
    assert_eq!(outcomes.len(), 400);
    assert_eq!(env.tenant_count().await, new);
    let invalid_outcomes = outcomes
        .iter()
        .filter(|o| o.reason.as_deref() == Some("invalid"))
        .count() as i64;
    assert_eq!(invalid_outcomes, invalid);
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    drop(workers);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_work_the_same() {
    let env = TestEnv::with_queue_type(10, signup_worker::amqp::QueueType::Classic).await;
    let a = event("classic-a", false);
    env.publish_many(&[a.clone(), a.clone(), event("classic-a", false)])
        .await;
    env.publish_raw(b"[]", "classic-bad").await;
    let worker = env.spawn_worker(&[]);
    let outcomes = env.wait_outcomes(4).await;
    assert_eq!(env.tenant_count().await, 1);
    let kinds: Vec<_> = outcomes
        .iter()
        .map(|o| o.reason.clone().unwrap_or_else(|| o.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            "tenant.signup.completed",
            "tenant.signup.completed",
            "slug_taken",
            "invalid"
        ]
    );
    wait_for("the dead letter", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 1
    })
    .await;
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founding_list_shows_the_numbered_tenants_in_order_in_three_forms() {
    let env = TestEnv::new(10).await;
    let tricky = signup_worker::domain::signup_body(
        uuid::Uuid::new_v4(),
        "list-tricky",
        "Smith, \"Jones\" & Co",
        "owner@tricky.example",
        signup_worker::domain::Tier::Growth,
        false,
    );
    env.publish_many(&[
        event("list-a", false),
        event("list-demo", true),
        (tricky, uuid::Uuid::new_v4().to_string()),
        event("list-c", false),
    ])
    .await;
    let worker = env.spawn_worker(&[]);
    env.wait_outcomes(4).await;
    // A deleted tenant's number is retired, and shows as such.
    env.execute("DELETE FROM tenants WHERE slug = 'list-a'")
        .await;

    let list: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["founding", "list", "--json"])).unwrap();
    let tenants = list["tenants"].as_array().unwrap();
    let rows: Vec<(i64, &str, &str)> = tenants
        .iter()
        .map(|t| {
            (
                t["number"].as_i64().unwrap(),
                t["slug"].as_str().unwrap(),
                t["business_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (2, "list-tricky", "Smith, \"Jones\" & Co"),
            (3, "list-c", "Business list-c"),
        ],
        "number order, demo tenants absent"
    );
    assert!(tenants[0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(list["pooled"], serde_json::json!([]));
    assert_eq!(list["retired"], serde_json::json!([1]));

    let csv = env.run_ok(&["founding", "list", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "number,slug,business_name,created_at");
    assert!(
        lines[1].starts_with("2,list-tricky,\"Smith, \"\"Jones\"\" & Co\","),
        "{csv}"
    );
    assert_eq!(lines.len(), 3);

    let human = env.run_ok(&["founding", "list"]);
    assert!(
        human.contains("list-c") && human.contains("Business list-c"),
        "{human}"
    );
    assert!(human.contains("2 numbered tenants; pooled numbers: none; retired numbers: 1"));
    drop(worker);
    env.cleanup().await;
}

/// W3C trace context (contract section 4): the outcome continues the event's trace from the
/// worker's own span, the DLQ copy keeps the event's headers, a malformed `traceparent` costs
/// the event nothing, and `publish` starts a trace per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_goes_from_the_event_to_its_outcome_and_dlq_copy() {
    let env = TestEnv::new(10).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = traced_properties;
    let (good, good_id) = event("traced-good", false);
    env.publish_with(
        &good,
        traced(parent).with_message_id(good_id.clone().into()),
    )
    .await;
    env.publish_with(
        b"not json",
        traced(parent).with_message_id("traced-bad".into()),
    )
    .await;
    let (odd, odd_id) = event("traced-odd", false);
    env.publish_with(
        &odd,
        traced("00-nonsense").with_message_id(odd_id.clone().into()),
    )
    .await;
    let worker = env.spawn_worker(&[]);
    env.wait_outcomes(3).await;
    let traced = env.traced_outcomes();
    let trace_of = |id: &str| {
        let t = traced
            .iter()
            .find(|t| t.event.event_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no outcome for {id}"));
        (t.traceparent.clone(), t.tracestate.clone())
    };
    for id in [good_id.as_str(), "traced-bad"] {
        let (tp, ts) = trace_of(id);
        let tp = tp.unwrap_or_else(|| panic!("{id}: the outcome carries a traceparent"));
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
            "{id}: same trace: {tp}"
        );
        assert_ne!(tp, parent, "{id}: the worker's own span is the parent");
        assert_eq!(ts.as_deref(), Some("congo=t61rcWkgMzE"));
    }
    assert_eq!(
        trace_of(&odd_id),
        (None, None),
        "a malformed traceparent is ignored"
    );
    assert_eq!(env.tenant_count().await, 2, "and costs the event nothing");
    let dead = env.take_dead_letter_deliveries().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        string_header(&dead[0].properties, "traceparent").as_deref(),
        Some(parent),
        "the DLQ copy keeps the event's trace"
    );
    // `publish` starts one trace per event.
    env.run_ok(&["publish", "--count", "3", "--no-progress"]);
    env.wait_outcomes(6).await;
    let traced = env.traced_outcomes();
    let new: Vec<_> = traced[3..]
        .iter()
        .filter_map(|t| t.traceparent.clone())
        .collect();
    assert_eq!(new.len(), 3, "{traced:?}");
    let trace_ids: std::collections::HashSet<_> = new.iter().map(|t| &t[3..35]).collect();
    assert_eq!(trace_ids.len(), 3, "a trace per event: {new:?}");
    drop(worker);
    env.cleanup().await;
}
