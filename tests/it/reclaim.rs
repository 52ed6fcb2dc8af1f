//! No founding number is ever lost (issue 7): numbers drawn by transactions that die are
//! reclaimed and handed out again; numbers of live transactions and of deleted tenants are not.
//!
//! Burns are made deterministic with a test-only trigger that fires after the numbering
//! trigger and blocks on an advisory lock this test holds: the worker's transaction has then
//! drawn its numbers and waits, and the test kills, cuts or stops it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use signup_worker::db::DbTarget;

use crate::helpers::*;

/// The lock the test holds; `held-*` signups wait on it after drawing their number, and
/// `fail-after-draw-*` signups fail after drawing theirs.
const TEST_LOCK: i64 = 7_770_001;

const HOLD_TRIGGER: &str = r#"
-- After the whole INSERT statement, i.e. once every row of the batch has drawn its number.
CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE slug LIKE 'held-%') THEN
        PERFORM pg_advisory_xact_lock_shared(7770001);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER zzz_test_hold AFTER INSERT ON tenants REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION test_hold();
-- Fires after tenants_assign_founding_member_number (row triggers fire in name order).
CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slug LIKE 'fail-after-draw-%' THEN
        RAISE EXCEPTION 'failed after the draw' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER zzz_test_fail BEFORE INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION test_fail();
"#;

/// A connection of the test's own, free of the worker's session timeout, holding the lock.
struct Hold(DatabaseConnection);

impl Hold {
    async fn take(env: &TestEnv) -> Self {
        let conn = DbTarget::parse(&env.db_url)
            .unwrap()
            .connect(1)
            .await
            .unwrap();
        conn.execute_unprepared(&format!(
            "SET idle_in_transaction_session_timeout = 0; SELECT pg_advisory_lock({TEST_LOCK})"
        ))
        .await
        .unwrap();
        Self(conn)
    }

    async fn release(self) {
        self.0
            .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEST_LOCK})"))
            .await
            .unwrap();
        let _ = self.0.close().await;
    }
}

fn events(prefix: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), false))
        .collect()
}

/// Waits until a worker's INSERT has drawn its numbers and waits on the test's lock, other
/// than the backend `not`; returns its pid. The waiter is found by the lock it waits for, not
/// by its statement's text: a batch is stored by an INSERT or by a function call (`store`).
async fn wait_blocked(env: &TestEnv, not: i64) -> i64 {
    // A one-bigint advisory key is held as classid = high 32 bits, objid = low, objsubid = 1.
    let sql = format!(
        "SELECT coalesce(max(l.pid), 0)::bigint FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{}' AND l.locktype = 'advisory' AND NOT l.granted \
           AND l.classid = 0 AND l.objid = {TEST_LOCK} AND l.objsubid = 1 AND l.pid <> {not}",
        env.db_name
    );
    wait_for("a worker's transaction holding drawn numbers", || async {
        env.scalar(&sql).await != 0
    })
    .await;
    assert!(env.founding().await.burned() >= 1);
    env.scalar(&sql).await
}

/// After the burns: enough later signups use up the pool and the rest of the programme, and
/// the numbers in use are exactly 1..=capacity.
async fn assert_programme_fills_exactly(env: &TestEnv, capacity: i64, signups_so_far: i64) {
    let more = capacity + 10;
    env.publish_many(&events("later", more as usize)).await;
    wait_for("every signup stored", || async {
        env.tenant_count().await == signups_so_far + more
    })
    .await;
    env.wait_nothing_burned().await;
    let numbers = env.numbers_in_use().await;
    assert_eq!(numbers, (1..=capacity as i32).collect::<Vec<_>>());
    let stats = env.founding().await;
    assert_eq!((stats.pooled, stats.burned()), (0, 0), "{stats:?}");
    env.assert_numbering_invariants().await;
}

#[derive(Clone, Copy, Debug)]
enum Death {
    /// SIGKILL the worker while its transaction holds drawn numbers.
    Sigkill,
    /// `pg_terminate_backend` its connection.
    Terminate,
    /// A statement fails after the draw (a constraint refusing the content).
    FailAfterDraw,
}

async fn burned_numbers_are_reclaimed(death: Death) {
    let capacity = 20;
    let env = TestEnv::new(capacity as i32).await;
    env.execute(HOLD_TRIGGER).await;
    let mut stored = 0;
    match death {
        Death::Sigkill | Death::Terminate => {
            let hold = Hold::take(&env).await;
            env.publish_many(&events("held", 5)).await;
            let mut first = env.spawn_worker(&[]);
            let pid = wait_blocked(&env, 0).await;
            assert_eq!(env.tenant_count().await, 0);
            if let Death::Sigkill = death {
                first.kill();
            } else {
                env.execute(&format!("SELECT pg_terminate_backend({pid})"))
                    .await;
                // The worker retries the batch, which draws again and waits again.
                wait_blocked(&env, pid).await;
            }
            hold.release().await;
            let _survivor = match death {
                Death::Sigkill => env.spawn_worker(&[]),
                _ => first,
            };
            wait_for("the held signups", || async {
                env.tenant_count().await == 5
            })
            .await;
            stored += 5;
            env.wait_nothing_burned().await;
            assert_programme_fills_exactly(&env, capacity, stored).await;
        }
        Death::FailAfterDraw => {
            let mut batch = events("before", 3);
            batch.push(event("fail-after-draw-1", false));
            batch.extend(events("after", 3));
            env.publish_many(&batch).await;
            let worker = env.spawn_worker(&[]);
            env.wait_outcomes(7).await;
            assert_eq!(env.tenant_count().await, 6);
            stored += 6;
            assert_eq!(
                env.queue_messages(&env.topology.dead_letter_queue()).await,
                1
            );
            env.wait_nothing_burned().await;
            assert!(
                worker.metric("signup_founding_reclaimed_total").await >= 1.0,
                "the failed attempts' numbers came back"
            );
            assert_programme_fills_exactly(&env, capacity, stored).await;
        }
    }
    let status: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["founding"]["burned"], 0);
    assert_eq!(status["founding"]["pooled"], 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_of_a_killed_worker_are_reclaimed() {
    burned_numbers_are_reclaimed(Death::Sigkill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_of_a_terminated_connection_are_reclaimed() {
    burned_numbers_are_reclaimed(Death::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_of_a_statement_failing_after_the_draw_are_reclaimed() {
    burned_numbers_are_reclaimed(Death::FailAfterDraw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_transaction_keeps_its_number_however_long_it_waits() {
    let env = TestEnv::new(100).await;
    let worker = env.spawn_worker(&[("RUST_LOG", "info,signup_worker=debug")]);
    worker.wait_ready().await;
    // A transaction of our own draws a number and stays open.
    let own = DbTarget::parse(&env.db_url)
        .unwrap()
        .connect(1)
        .await
        .unwrap();
    own.execute_unprepared("SET idle_in_transaction_session_timeout = 0")
        .await
        .unwrap();
    let txn = own.begin().await.unwrap();
    txn.execute_unprepared(
        "INSERT INTO tenants (event_id, slug, business_name, owner_email, tier) \
         VALUES (gen_random_uuid(), 'slow-one', 'Slow', 'a@b.example', 'starter')",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Other signups go on meanwhile: numbering is not blocked.
    env.publish_many(&events("meanwhile", 5)).await;
    wait_for("the other signups", || async {
        env.tenant_count().await == 5
    })
    .await;
    let busy = |w: &Worker| {
        w.logs()
            .iter()
            .filter(|l| l.contains("a numbering transaction is still running"))
            .count()
    };
    wait_for("30 s and several reclaim attempts", || async {
        started.elapsed() >= Duration::from_secs(30) && busy(&worker) >= 5
    })
    .await;
    let stats = env.founding().await;
    assert_eq!(
        (stats.pooled, stats.burned()),
        (0, 1),
        "in flight, not reclaimed"
    );
    txn.commit().await.unwrap();
    let _ = own.close().await;
    assert_eq!(
        env.scalar("SELECT founding_member_number::bigint FROM tenants WHERE slug = 'slow-one'")
            .await,
        1,
        "it drew first and keeps its number"
    );
    env.publish_many(&events("after", 5)).await;
    wait_for("the later signups", || async {
        env.tenant_count().await == 11
    })
    .await;
    env.wait_nothing_burned().await;
    assert_eq!(
        env.numbers_in_use().await,
        (1..=11).collect::<Vec<_>>(),
        "nothing duplicated, nothing lost"
    );
    assert_eq!(
        worker
            .metric("signup_conflicts_total{kind=\"founding_number\"}")
            .await,
        0.0
    );
    drop(worker);
    env.cleanup().await;
}

/// A worker stopped (SIGSTOP) while its batch waits on the test's lock, after the draw.
/// `copy_inside`: the batch holds a copy of one of its events, so it is stored by a
/// transaction of several statements; without one it is a single call (`store::Path`).
async fn a_stopped_worker(copy_inside: bool) {
    let env = TestEnv::new(100).await;
    env.execute(HOLD_TRIGGER).await;
    let hold = Hold::take(&env).await;
    let mut held = events("held", 5);
    if copy_inside {
        held.push(held[0].clone());
    }
    env.publish_many(&held).await;
    // Its prefetch is full with the held events, so the broker sends it nothing more while it
    // is stopped.
    let prefetch = held.len().to_string();
    let stopped = env.spawn_worker(&[("PREFETCH", prefetch.as_str())]);
    wait_blocked(&env, 0).await;
    let drawn = env.founding().await.burned();
    stopped.signal("STOP");
    hold.release().await;
    let other = env.spawn_worker(&[]);
    let stored_before = if copy_inside {
        // Its backend finishes the INSERT and then sits idle in the transaction until
        // PostgreSQL ends the session (the worker's idle_in_transaction_session_timeout).
        wait_for("the stopped worker's numbers in the pool", || async {
            env.founding().await.pooled == drawn
        })
        .await;
        wait_for("the other replica to count them", || async {
            other.metric("signup_founding_reclaimed_total").await == drawn as f64
        })
        .await;
        0
    } else {
        // The single call was sent whole: PostgreSQL finishes and commits it without the
        // worker, and nothing is left to reclaim.
        wait_for("the stopped worker's batch committed", || async {
            env.tenant_count().await == 5
        })
        .await;
        env.wait_nothing_burned().await;
        5
    };
    // Later signups get the lowest free numbers (the reclaimed ones, if any).
    env.publish_many(&events("later", 3)).await;
    wait_for("the later signups", || async {
        env.tenant_count().await == stored_before + 3
    })
    .await;
    assert_eq!(
        env.numbers_in_use().await,
        (1..=stored_before as i32 + 3).collect::<Vec<_>>()
    );
    // The stopped worker wakes: each held event ends up stored once, either by its retry after
    // the lost session (its old numbers are not committed) or by the call that already committed.
    stopped.signal("CONT");
    wait_for("the held signups", || async {
        env.tenant_count().await == 8
    })
    .await;
    env.wait_nothing_burned().await;
    let numbers = env.numbers_in_use().await;
    let distinct: HashSet<_> = numbers.iter().collect();
    assert_eq!(distinct.len(), 8);
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE slug LIKE 'held-%'")
            .await,
        5
    );
    env.assert_numbering_invariants().await;
    drop(stopped);
    drop(other);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_loses_its_session_and_its_numbers_come_back() {
    a_stopped_worker(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_s_single_call_commits_without_it() {
    a_stopped_worker(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_number_is_retired_never_reissued() {
    let env = TestEnv::new(10).await;
    env.publish_many(&events("first", 5)).await;
    let worker = env.spawn_worker(&[]);
    wait_for("5 tenants", || async { env.tenant_count().await == 5 }).await;
    env.execute("DELETE FROM tenants WHERE founding_member_number = 3")
        .await;
    let stats = env.founding().await;
    assert_eq!(
        (
            stats.assigned,
            stats.retired,
            stats.burned(),
            stats.remaining()
        ),
        (4, 1, 0, 5)
    );
    env.publish_many(&events("second", 10)).await;
    wait_for("14 tenants", || async { env.tenant_count().await == 14 }).await;
    env.wait_nothing_burned().await;
    assert_eq!(env.numbers_in_use().await, vec![1, 2, 4, 5, 6, 7, 8, 9, 10]);
    let status: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["founding"],
        serde_json::json!({"capacity": 10, "position": 10, "assigned": 9, "pooled": 0, "retired": 1, "burned": 0, "remaining": 0})
    );
    wait_metric(&worker, "signup_founding_exhausted_total", 5.0).await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_with_reclaimed_numbers() {
    let env = TestEnv::new(50).await;
    env.execute(HOLD_TRIGGER).await;
    let hold = Hold::take(&env).await;
    env.publish_many(&events("held", 10)).await;
    let mut first = env.spawn_worker(&[]);
    wait_blocked(&env, 0).await;
    first.kill();
    hold.release().await;
    let worker = env.spawn_worker(&[]);
    let mut more = events("more", 100);
    more.extend((0..20).map(|i| event(&format!("demo-{i}"), true)));
    env.publish_many(&more).await;
    wait_for("130 tenants", || async { env.tenant_count().await == 130 }).await;
    env.wait_nothing_burned().await;
    assert_eq!(env.numbers_in_use().await, (1..=50).collect::<Vec<_>>());
    let unnumbered = env
        .scalar("SELECT count(*) FROM tenants WHERE NOT is_demo AND founding_member_number IS NULL")
        .await;
    assert_eq!(unnumbered, 60);
    wait_metric(
        &worker,
        "signup_founding_exhausted_total",
        unnumbered as f64,
    )
    .await;
    wait_for("the remaining gauge at 0", || async {
        worker.metric("signup_founding_remaining").await == 0.0
    })
    .await;
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_of_four_replicas_with_kills_and_cut_connections_loses_no_number() {
    let env = TestEnv::new(1_000_000).await;
    let mut workers: Vec<Worker> = (0..4).map(|_| env.spawn_worker(&[])).collect();
    let started = Instant::now();
    let mut published = 0_i64;
    let mut round = 0_usize;
    // 60 s of load; a replica SIGKILLed (and replaced) every 4 rounds, every backend of the
    // database cut every 3 rounds. The pause paces the load; nothing waits on it.
    while started.elapsed() < Duration::from_secs(60) {
        env.publish_many(&events(&format!("r{round}"), 400)).await;
        published += 400;
        round += 1;
        if round % 4 == 0 {
            let i = (round / 4) % workers.len();
            workers[i].kill();
            workers[i] = env.spawn_worker(&[]);
        }
        if round % 3 == 0 {
            env.execute(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                env.db_name
            ))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for("every signup stored", || async {
        env.tenant_count().await == published
    })
    .await;
    env.wait_nothing_burned().await;
    let stats = env.founding().await;
    let unaccounted = env
        .scalar(&format!(
            "SELECT count(*) FROM generate_series(1, {}) AS n \
             WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE founding_member_number = n) \
               AND NOT EXISTS (SELECT 1 FROM founding_number_pool WHERE number = n) \
               AND NOT EXISTS (SELECT 1 FROM founding_number_retired WHERE number = n)",
            stats.position
        ))
        .await;
    assert_eq!(
        unaccounted, 0,
        "every number <= position is held, pooled or retired"
    );
    assert_eq!(stats.assigned, published, "{stats:?}");
    let reclaimed = env
        .scalar("SELECT reclaimed_total FROM founding_reclaim_state")
        .await;
    eprintln!("race: {published} signups, {round} rounds, {reclaimed} numbers burned and reclaimed, {stats:?}");
    assert!(reclaimed > 0, "the kills and cuts did burn numbers");
    env.assert_numbering_invariants().await;
    for w in &workers {
        assert_eq!(
            w.metric("signup_conflicts_total{kind=\"founding_number\"}")
                .await,
            0.0
        );
        wait_for("every replica's burned gauge at 0", || async {
            w.metric("signup_founding_burned").await == 0.0
        })
        .await;
    }
    drop(workers);
    env.cleanup().await;
}
