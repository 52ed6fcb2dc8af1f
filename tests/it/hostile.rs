//! A hostile publisher and a careless operator (issue 6): whatever they send or misconfigure
//! has a clear outcome, and never burns a number, loops, dead-letters a good event or prints a
//! password.

use lapin::types::{AMQPValue, FieldTable};
use sea_orm::ConnectionTrait;
use serde_json::json;
use signup_worker::amqp::{self, QueueType};
use uuid::Uuid;

use crate::helpers::*;

fn body(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A valid event as JSON, to be bent by each case.
fn event_json(slug: &str) -> serde_json::Value {
    json!({
        "event_id": Uuid::new_v4(),
        "type": "tenant.signup.requested",
        "version": 1,
        "occurred_at": "2026-11-22T12:00:00Z",
        "tenant": {
            "business_name": format!("Business {slug}"),
            "slug": slug,
            "owner_email": format!("owner@{slug}.example"),
            "tier": "starter",
            "is_demo": false
        }
    })
}

fn with_event_id(v: serde_json::Value) -> (Vec<u8>, String) {
    let id = v["event_id"].as_str().unwrap().to_owned();
    (body(&v), id)
}

fn logs_contain(worker: &Worker, needle: &str) -> bool {
    worker.logs().iter().any(|l| l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_cannot_store_are_invalid_and_burn_nothing() {
    let env = TestEnv::new(100).await;
    let mut events: Vec<(Vec<u8>, String)> = (0..200)
        .map(|i| with_event_id(event_json(&format!("fine-{i}"))))
        .collect();
    // Valid extremes: they must be stored, not refused.
    let mut early = event_json("earliest-instant");
    early["occurred_at"] = json!("0001-01-01T00:00:00Z");
    let mut late = event_json("latest-instant");
    late["occurred_at"] = json!("9999-12-31T23:59:59.999999999Z");
    let mut padded = event_json("padded-name");
    padded["tenant"]["business_name"] = json!(format!("{}{}", "n".repeat(190), " ".repeat(20)));
    events[10] = with_event_id(early);
    events[20] = with_event_id(late);
    events[30] = with_event_id(padded);

    let mut bad = Vec::new();
    for at in [
        json!("0000-01-01T00:00:00Z"),
        json!("9999-12-31T23:59:59-23:59"),
        json!("yesterday"),
        json!("2026-13-01T00:00:00Z"),
        json!(1_700_000_000),
    ] {
        let mut v = event_json(&format!("bad-at-{}", bad.len()));
        v["occurred_at"] = at;
        bad.push(with_event_id(v));
    }
    let mut nul = event_json("nul-email");
    nul["tenant"]["owner_email"] = json!("own\u{0}er@nul.example");
    bad.push(with_event_id(nul));
    // In the middle of the stream, so they share batches with good events.
    let tail = events.split_off(100);
    events.extend(bad.iter().cloned());
    events.extend(tail);
    env.publish_many(&events).await;

    let worker = env.spawn_worker(&[]);
    let outcomes = env.wait_outcomes(206).await;
    assert_eq!(env.tenant_count().await, 200, "every good event stored");
    let invalid: Vec<_> = outcomes
        .iter()
        .filter(|o| o.reason.as_deref() == Some("invalid"))
        .collect();
    assert_eq!(invalid.len(), 6);
    for (_, id) in &bad {
        assert!(
            invalid.iter().any(|o| o.event_id.as_deref() == Some(id)),
            "an invalid outcome for {id}"
        );
    }
    wait_for("6 dead letters", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 6
    })
    .await;
    let dead = env.take_dead_letters().await;
    let reasons: Vec<String> = dead.iter().map(|(_, e)| e.clone().unwrap()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("`occurred_at`"))
            .count(),
        5,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("owner_email") && r.contains("control characters")),
        "{reasons:?}"
    );
    // The extremes are stored exactly (to the microsecond PostgreSQL keeps).
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE (slug = 'earliest-instant' AND occurred_at = '0001-01-01 00:00:00+00') OR (slug = 'latest-instant' AND occurred_at = '9999-12-31 23:59:59.999999+00')").await,
        2
    );
    assert_eq!(
        env.scalar(
            "SELECT char_length(business_name)::bigint FROM tenants WHERE slug = 'padded-name'"
        )
        .await,
        190
    );
    let stats = env.founding().await;
    assert_eq!((stats.position, stats.assigned), (100, 100));
    env.assert_no_number_burned().await;
    env.assert_numbering_invariants().await;
    assert_eq!(
        worker
            .metric("signup_retries_total{reason=\"other\"}")
            .await,
        0.0,
        "no attempt failed in the database"
    );
    wait_metric(&worker, "signup_founding_exhausted_total", 100.0).await;
    drop(worker);
    env.cleanup().await;
}

/// Fails every insert of the slug `refused-co` with a CHECK violation, the way a constraint
/// added by an operator would; named to fire before the numbering trigger.
const REFUSE_TRIGGER: &str = r#"
CREATE FUNCTION refuse_slug() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slug = 'refused-co' THEN
        RAISE EXCEPTION 'refused by test' USING ERRCODE = 'check_violation', CONSTRAINT = 'test_refuse_check';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa_refuse_slug BEFORE INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION refuse_slug();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_refused_by_postgres_is_dead_lettered_at_once() {
    let env = TestEnv::new(100).await;
    env.execute(REFUSE_TRIGGER).await;
    let refused = event("refused-co", false);
    // The refused event leads its batch: rows after it in the failed attempt never reach
    // the numbering trigger. (Rows before it would draw numbers that the failed attempt
    // burns; see the README's limits.)
    let mut all = vec![refused.clone()];
    all.extend((0..20).map(|i| event(&format!("mate-{i}"), false)));
    env.publish_many(&all).await;
    let worker = env.spawn_worker(&[]);

    let outcomes = env.wait_outcomes(21).await;
    assert_eq!(env.tenant_count().await, 20);
    let o = outcomes
        .iter()
        .find(|o| o.event_id.as_deref() == Some(refused.1.as_str()))
        .unwrap();
    assert_eq!(
        (o.kind.as_str(), o.reason.as_deref(), o.slug.as_deref()),
        (
            "tenant.signup.rejected",
            Some("invalid"),
            Some("refused-co")
        )
    );
    wait_for("the refused event in the DLQ", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 1
    })
    .await;
    let dead = env.take_dead_letters().await;
    assert_eq!(dead[0].0, refused.0);
    let reason = dead[0].1.clone().unwrap();
    assert!(
        reason.contains("SQLSTATE 23514") && reason.contains("test_refuse_check"),
        "{reason}"
    );
    assert!(!reason.contains("refused-co"), "no row data in the reason");
    assert_eq!(env.queue_messages(&env.topology.retry_queue()).await, 0);
    wait_metric(&worker, "signup_events_total{outcome=\"invalid\"}", 1.0).await;
    assert_eq!(
        worker
            .metric("signup_events_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

async fn frame_filling_header_case(queue_type: QueueType) {
    let env = TestEnv::with_queue_type(100, queue_type).await;
    let big = |v: serde_json::Value| {
        let mut h = FieldTable::default();
        h.insert(
            "x-filler".into(),
            AMQPValue::LongString("h".repeat(130_900).into()),
        );
        let props = amqp::json_properties()
            .with_message_id(v["event_id"].as_str().unwrap_or("no-id").into())
            .with_headers(h);
        (body(&v), props)
    };
    let before = event("before-big", false);
    let mut invalid = event_json("Invalid_Slug");
    invalid["tenant"]["slug"] = json!("Invalid_Slug");
    let (invalid_body, invalid_props) = big(invalid);
    let (valid_big_body, valid_big_props) = big(event_json("valid-big-header"));
    let after = event("after-big", false);
    env.publish_raw(&before.0, &before.1).await;
    env.publish_with(&invalid_body, invalid_props).await;
    env.publish_with(&valid_big_body, valid_big_props).await;
    env.publish_raw(&after.0, &after.1).await;

    let worker = env.spawn_worker(&[]);
    let outcomes = env.wait_outcomes(4).await;
    assert_eq!(env.tenant_count().await, 3);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.reason.as_deref() == Some("invalid"))
            .count(),
        1
    );
    wait_for("the dead letter", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 1
    })
    .await;
    let dead = env.take_dead_letter_deliveries().await;
    let props = &dead[0].properties;
    assert_eq!(dead[0].data, invalid_body, "the body is kept");
    assert!(string_header(props, amqp::ERROR_HEADER)
        .unwrap()
        .starts_with("invalid: "));
    assert!(string_header(props, "x-filler").is_none());
    let dropped = amqp::int_header(props, amqp::HEADERS_DROPPED_HEADER).unwrap();
    assert!(dropped > 130_900, "{dropped}");
    assert!(worker.is_ready().await);
    assert!(
        !logs_contain(&worker, "RabbitMQ session ended"),
        "no reconnect:\n{}",
        worker.logs().join("\n")
    );
    assert_eq!(env.queue_messages(&env.topology.queue).await, 0);
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_filling_headers_are_dead_lettered_without_a_reconnect_quorum() {
    frame_filling_header_case(QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_filling_headers_are_dead_lettered_without_a_reconnect_classic() {
    frame_filling_header_case(QueueType::Classic).await;
}

const DOOMED_TRIGGER: &str = r#"
CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slug LIKE 'doomed-%' THEN
        RAISE EXCEPTION 'injected' USING ERRCODE = 'deadlock_detected';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa_doom BEFORE INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION doom();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_attempt_headers_neither_loop_nor_expire_dead_letters() {
    let env = TestEnv::new(100).await;
    env.execute(DOOMED_TRIGGER).await;
    // A failing event whose publisher claims -1,000,000 earlier attempts, in our header and
    // in a forged broker record for our retry queue.
    let doomed = event("doomed-forged", false);
    let mut death = FieldTable::default();
    death.insert(
        "queue".into(),
        AMQPValue::LongString(env.topology.retry_queue().into()),
    );
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(-1_000_000));
    let mut h = FieldTable::default();
    h.insert(
        amqp::ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(-1_000_000),
    );
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    env.publish_with(
        &doomed.0,
        amqp::json_properties()
            .with_message_id(doomed.1.as_str().into())
            .with_headers(h),
    )
    .await;
    // A good event claiming to be on its last attempt: it has not failed, so it is stored.
    let good = event("good-forged", false);
    let mut h = FieldTable::default();
    h.insert(
        amqp::ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(1_000_000),
    );
    env.publish_with(
        &good.0,
        amqp::json_properties()
            .with_message_id(good.1.as_str().into())
            .with_headers(h),
    )
    .await;
    // An invalid message that asks to expire after 3 s, from a publisher naming its user.
    let expiring = b"{not json".to_vec();
    env.publish_with(
        &expiring,
        amqp::json_properties()
            .with_message_id("expiring-invalid".into())
            .with_expiration("3000".into())
            .with_user_id("guest".into()),
    )
    .await;

    let worker = env.spawn_worker(&[("MAX_DELIVERIES", "3")]);
    wait_for("both dead letters", || async {
        env.queue_messages(&env.topology.dead_letter_queue()).await == 2
    })
    .await;
    let dead = env.take_dead_letter_deliveries().await;
    let doomed_copy = dead.iter().find(|d| d.data == doomed.0).unwrap();
    let reason = string_header(&doomed_copy.properties, amqp::ERROR_HEADER).unwrap();
    assert!(reason.contains("failed 3 deliveries"), "{reason}");
    let expiring_copy = dead.iter().find(|d| d.data == expiring).unwrap();
    assert_eq!(
        expiring_copy.properties.expiration(),
        &None,
        "a dead letter never expires"
    );
    assert_eq!(expiring_copy.properties.user_id(), &None);
    assert!(string_header(&expiring_copy.properties, amqp::ERROR_HEADER)
        .unwrap()
        .starts_with("invalid: "));
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE slug = 'good-forged'")
            .await,
        1
    );
    assert_eq!(env.queue_messages(&env.topology.retry_queue()).await, 0);
    assert!(
        worker
            .metric("signup_retries_total{reason=\"deadlock\"}")
            .await
            <= 12.0,
        "3 deliveries of at most 3 attempts each, plus a failed batch attempt each"
    );
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}

/// A fresh login role given what `run --no-migrate` uses, by `migrate --grant-to`; its
/// password is [`role_password`] (a password, so that a server that trusts only `postgres`
/// locally lets it in too).
async fn runtime_role(env: &TestEnv) -> String {
    let role = format!("rt_{}", env.id);
    env.execute_as_admin(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{}'",
        role_password(&role)
    ))
    .await;
    let out = env.run_ok(&["migrate", "--grant-to", &role]);
    assert!(out.contains(&format!("granted role {role}")), "{out}");
    role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_grant_to_gives_what_run_needs_and_nothing_more() {
    let env = TestEnv::new(100).await;
    let role = runtime_role(&env).await;
    // Idempotent: granting again is fine.
    env.run_ok(&["migrate", "--grant-to", &role]);
    let as_role =
        sea_orm::Database::connect(pg_url_as(&env.db_name, &role, Some(&role_password(&role))))
            .await
            .unwrap();
    for refused in [
        "DELETE FROM tenants",
        "UPDATE tenants SET tier = 'growth'",
        "TRUNCATE tenants",
        "ALTER SEQUENCE founding_member_number_seq MAXVALUE 1000",
        // PostgreSQL 15 and later: PUBLIC may no longer create in the public schema.
        "CREATE TABLE intruder (x int)",
        "DROP TABLE founding_number_retired",
        "DELETE FROM founding_number_retired",
    ] {
        let err = as_role
            .execute_unprepared(refused)
            .await
            .expect_err(refused)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{refused}: {err}"
        );
    }
    let _ = as_role.close().await;

    // An unknown role: one clear error line, a non-zero exit, nothing granted.
    let out = env
        .command()
        .args([
            "migrate",
            "--grant-to",
            "no_such_role_x",
            "--grant-to",
            &role,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot grant to role `no_such_role_x`") && stderr.contains("no such role"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    env.cleanup().await;
    drop_role(&role).await;
}

fn role_password(role: &str) -> String {
    format!("pw-{role}")
}

async fn wait_error_lines(worker: &Worker, needle: &str, n: usize) {
    wait_for(&format!("{n} ERROR lines naming {needle}"), || async {
        worker
            .logs()
            .iter()
            .filter(|l| l.contains("\"ERROR\"") && l.contains(needle))
            .count()
            >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grants_pause_the_worker_until_granted_again() {
    let env = TestEnv::new(100).await;
    let role = runtime_role(&env).await;
    let mut cmd = env.command();
    cmd.env(
        "DATABASE_URL",
        pg_url_as(&env.db_name, &role, Some(&role_password(&role))),
    )
    .args(["run", "--no-migrate", "--metrics-addr", "127.0.0.1:0"]);
    let worker = Worker::spawn_command(cmd);
    worker.wait_ready().await;

    // INSERT revoked: an outage, not the events' fault.
    env.execute(&format!("REVOKE INSERT ON tenants FROM {role}"))
        .await;
    let batch: Vec<_> = (0..10).map(|i| event(&format!("ins-{i}"), false)).collect();
    env.publish_many(&batch).await;
    wait_for("/readyz to fail", || async { !worker.is_ready().await }).await;
    wait_error_lines(&worker, "permission denied for table tenants", 3).await;
    assert_eq!(env.tenant_count().await, 0);
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0
    );
    assert_eq!(env.queue_messages(&env.topology.retry_queue()).await, 0);
    env.execute(&format!("GRANT INSERT ON tenants TO {role}"))
        .await;
    wait_for("the held events", || async {
        env.tenant_count().await == 10
    })
    .await;
    worker.wait_ready().await;

    // USAGE on the sequence revoked: the trigger's nextval() is refused before it draws.
    env.execute(&format!(
        "REVOKE USAGE, SELECT ON SEQUENCE founding_member_number_seq FROM {role}"
    ))
    .await;
    let batch: Vec<_> = (0..5).map(|i| event(&format!("seq-{i}"), false)).collect();
    env.publish_many(&batch).await;
    wait_for("/readyz to fail", || async { !worker.is_ready().await }).await;
    wait_error_lines(&worker, "permission denied for sequence", 2).await;
    for gauge in [
        "signup_founding_burned",
        "signup_founding_remaining",
        "signup_founding_assigned",
    ] {
        assert!(worker.metric(gauge).await >= 0.0, "{gauge} never negative");
    }
    env.execute(&format!(
        "GRANT USAGE, SELECT ON SEQUENCE founding_member_number_seq TO {role}"
    ))
    .await;
    wait_for("the held events", || async {
        env.tenant_count().await == 15
    })
    .await;
    worker.wait_ready().await;
    let outcomes = env.wait_outcomes(15).await;
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0
    );
    assert_eq!(
        worker
            .metric("signup_events_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );
    env.assert_no_number_burned().await;
    assert_eq!(env.founding().await.assigned, 15);
    drop(worker);
    env.cleanup().await;
    drop_role(&role).await;
}

/// The Kubernetes layout: replicas run `--no-migrate` and may start before the migration Job.
/// A schema that is not there yet is an outage: events wait, none is dead-lettered, and all
/// are stored once `migrate` has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_migrate_replicas_wait_for_the_schema() {
    use migration::{Migrator, MigratorTrait};
    let env = TestEnv::new(100).await;
    Migrator::down(&env.db, None).await.unwrap();
    let batch: Vec<_> = (0..20)
        .map(|i| event(&format!("early-{i}"), false))
        .collect();
    env.publish_many(&batch).await;
    let mut cmd = env.command();
    cmd.args(["run", "--no-migrate", "--metrics-addr", "127.0.0.1:0"]);
    let worker = Worker::spawn_command(cmd);
    // The batch's first statement names what is missing.
    wait_error_lines(&worker, "does not exist", 2).await;
    assert_eq!(env.queue_messages(&env.topology.retry_queue()).await, 0);
    assert!(
        !worker.is_ready().await,
        "/readyz fails while the schema is missing"
    );
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0
    );
    env.run_ok(&["migrate"]);
    wait_for("the held events", || async {
        env.tenant_count().await == 20
    })
    .await;
    worker.wait_ready().await;
    let outcomes = env.wait_outcomes(20).await;
    assert!(outcomes.iter().all(|o| o.kind == "tenant.signup.completed"));
    assert_eq!(
        env.queue_messages(&env.topology.dead_letter_queue()).await,
        0
    );
    env.assert_no_number_burned().await;
    drop(worker);
    env.cleanup().await;
}
