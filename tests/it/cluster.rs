//! Issue 11: three replicas and a paced publisher on a private 3-node RabbitMQ cluster, through
//! two node stops. The stops are one after the other (stop, measure, start again): a quorum
//! queue with 3 members needs 2 of them, so with two nodes down at once nothing could consume.
//!
//! Prints `CLUSTER` lines with the figures: per stop, the node, how long the stop took, and per
//! replica whether its connection was on that node and how long until it was consuming again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
use signup_worker::amqp::{self, OutcomeEvent, Topology};
use signup_worker::domain::SIGNUP_REQUESTED;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;
use crate::private::{
    poll_until, skip_unless, PrivateRabbit, PrivateRabbitCluster, START_DEADLINE,
};

/// The publisher sends this many new events every [`TICK`]: 200 events/s.
const PER_TICK: usize = 10;
const TICK: Duration = Duration::from_millis(50);
/// Every this many events, one earlier event is published again on purpose.
const DUPLICATE_EVERY: usize = 40;
/// Smaller than the non-demo events of a run (several thousand), so the bound is reached.
const CAPACITY: i32 = 500;
/// The bound: every replica consuming again this soon after a node is stopped.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// Bound on one publish round (send and confirms), after which the publisher moves on to
/// another node: a stopped node's connection fails at once, this is for a stalled one.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_publisher_ride_out_node_stops() {
    if !skip_unless(PrivateRabbit::available(), "rabbitmq-server") {
        return;
    }
    let started = Instant::now();
    let (cluster, ()) = blocking(None, |_| ()).await;
    let cluster = cluster.expect("started");
    eprintln!("CLUSTER formed in {:?}", started.elapsed());
    let list = cluster.amqp_urls().join(",");

    // The database and names come from the usual harness; the queues live on the cluster.
    let env = TestEnv::new(CAPACITY).await;
    let topology = env.topology.clone();
    let broker = amqp::Endpoints::parse(&list).unwrap();
    let admin = amqp::connect(&broker, &format!("cluster test {}", env.id))
        .await
        .unwrap();
    let channel = admin.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    let outcome_queue = declare_outcome_capture(&channel, &topology, &env.id).await;
    // Its node may be one of those stopped: the checks at the end connect again.
    let _ = admin.close(200, "".into()).await;

    // Declared without x-quorum-initial-group-size (as the worker does), on a formed cluster
    // every queue has a member on each node.
    let (cluster, members) = blocking(Some(cluster), {
        let names = [
            topology.queue.clone(),
            topology.retry_queue(),
            topology.dead_letter_queue(),
        ];
        move |c| quorum_members(c, &names)
    })
    .await;
    let mut cluster = cluster.unwrap();
    for (queue, (members, online)) in &members {
        assert_eq!((*members, *online), (3, 3), "{queue}: members, online");
    }

    let mut workers: Vec<Worker> = (0..3)
        .map(|_| {
            let mut cmd = env.command();
            cmd.env("AMQP_URL", &list)
                .args(["run", "--metrics-addr", "127.0.0.1:0"]);
            Worker::spawn_command(cmd)
        })
        .collect();
    for w in &workers {
        w.wait_ready().await;
    }
    let pids: Vec<u32> = workers.iter().map(Worker::pid).collect();

    let stop_publishing = CancellationToken::new();
    let publisher = tokio::spawn(publish_paced(
        list.clone(),
        topology.clone(),
        stop_publishing.clone(),
    ));
    wait_for("the stream to be flowing", || async {
        env.tenant_count().await >= 300
    })
    .await;

    // Stop 1: the node of the main queue's leader.
    let (c, (leader, placed)) = blocking(Some(cluster), {
        let queue = topology.queue.clone();
        let pids = pids.clone();
        move |c| {
            let leader = c.quorum_leader(&queue).expect("the queue has a leader");
            (leader, replica_nodes(c, &queue, &pids))
        }
    })
    .await;
    cluster = c.unwrap();
    let first = stop_and_watch(cluster, leader, &placed, &workers, "leader").await;
    cluster = first.0;
    let first = first.1;
    cluster = restart(cluster, leader, &topology.queue).await;

    // Stop 2: the node most replicas are connected to now.
    let (c, placed) = blocking(Some(cluster), {
        let queue = topology.queue.clone();
        let pids = pids.clone();
        move |c| replica_nodes(c, &queue, &pids)
    })
    .await;
    cluster = c.unwrap();
    let busiest = (0..3)
        .max_by_key(|&n| (placed.iter().filter(|&&p| p == Some(n)).count(), 3 - n))
        .unwrap();
    let second = stop_and_watch(cluster, busiest, &placed, &workers, "most replicas").await;
    cluster = second.0;
    let second = second.1;
    cluster = restart(cluster, busiest, &topology.queue).await;

    // The stream goes on after both restarts; then the publisher finishes what it holds.
    let before = env.tenant_count().await;
    wait_for("events stored after the restarts", || async {
        env.tenant_count().await >= before + 200
    })
    .await;
    stop_publishing.cancel();
    let published = publisher.await.unwrap();

    // Every event stored exactly once.
    let distinct: HashSet<&String> = published.ids.iter().collect();
    assert_eq!(distinct.len(), published.ids.len());
    wait_for("every event stored", || async {
        env.tenant_count().await == published.ids.len() as i64
    })
    .await;
    let stored = stored_event_ids(&env).await;
    assert_eq!(stored.len(), published.ids.len(), "one row per event");
    let stored_set: HashSet<&String> = stored.iter().collect();
    assert_eq!(
        stored_set, distinct,
        "the stored events are the published ones"
    );

    // Every confirmed publish was delivered and answered; repeats answer the same.
    let admin = amqp::connect(&broker, &format!("cluster test {}", env.id))
        .await
        .unwrap();
    wait_for("an outcome for every confirmed publish", || async {
        queue_count(&admin, &outcome_queue).await >= published.confirmed as u32
    })
    .await;
    let outcomes = drain(&admin, &outcome_queue).await;
    let mut by_event: HashMap<String, Vec<OutcomeEvent>> = HashMap::new();
    for o in &outcomes {
        by_event
            .entry(o.event_id.clone().unwrap())
            .or_default()
            .push(o.clone());
    }
    assert_eq!(by_event.len(), distinct.len(), "an outcome for every event");
    for (id, got) in &by_event {
        assert!(got.iter().all(|o| o == &got[0]), "{id}: {got:?}");
        assert_eq!(got[0].kind, amqp::COMPLETED, "{id}");
    }

    // Nothing dead-lettered, nothing left waiting.
    for q in [
        topology.dead_letter_queue(),
        topology.retry_queue(),
        topology.queue.clone(),
    ] {
        assert_eq!(queue_count(&admin, &q).await, 0, "{q}");
    }
    for outcome in ["invalid", "dead_lettered"] {
        let series = format!("signup_events_total{{outcome=\"{outcome}\"}}");
        assert_eq!(total(&workers, &series).await, 0.0, "{series}");
    }

    // Numbers: unique, within the bound, all of them used, none burned at rest.
    env.wait_nothing_burned().await;
    env.assert_numbering_invariants().await;
    env.assert_no_number_burned().await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM tenants WHERE founding_member_number IS NOT NULL")
            .await,
        i64::from(CAPACITY)
    );

    // The same three processes throughout, each still consuming, none panicked.
    let mut sessions_lost = Vec::new();
    let mut warnings: HashMap<String, usize> = HashMap::new();
    for w in &mut workers {
        assert_eq!(
            w.exited(),
            None,
            "a replica exited:\n{}",
            w.logs().join("\n")
        );
        assert!(w.is_ready().await, "a replica is not ready at the end");
        let logs = w.logs();
        assert!(
            logs.iter()
                .all(|l| !l.contains("panicked") && !l.contains("backtrace")),
            "{}",
            logs.join("\n")
        );
        // A store cancelled inside BEGIN left its pooled connection in a transaction, which
        // the next BEGIN on it reported (see `store_attempt` in src/worker/pipeline.rs).
        assert!(
            logs.iter()
                .all(|l| !l.contains("there is already a transaction in progress")),
            "a connection went back to the pool inside a transaction:\n{}",
            logs.join("\n")
        );
        sessions_lost.push(
            logs.iter()
                .filter(|l| l.contains("RabbitMQ session ended"))
                .count(),
        );
        for line in &logs {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["level"] == "WARN" || v["level"] == "ERROR" {
                let error: String = v["error"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(90)
                    .collect();
                let what = format!(
                    "{} {} {}: {error}",
                    v["level"].as_str().unwrap_or_default(),
                    v["target"].as_str().unwrap_or_default(),
                    v["message"].as_str().unwrap_or_default()
                );
                *warnings.entry(what).or_default() += 1;
            }
        }
    }
    let created = total(&workers, "signup_events_total{outcome=\"created\"}").await;
    let duplicates = total(&workers, "signup_events_total{outcome=\"duplicate\"}").await;
    let (cluster, members) = blocking(Some(cluster), {
        let names = [topology.queue.clone()];
        move |c| quorum_members(c, &names)
    })
    .await;
    assert_eq!(members[0].1, (3, 3), "members, online at the end");

    for (n, stop) in [(1, &first), (2, &second)] {
        eprintln!("CLUSTER stop {n}: {stop}");
    }
    eprintln!(
        "CLUSTER events: {} distinct published ({} demo), {} publishes confirmed ({} deliberate \
         duplicates, {} re-sent after a failed round), {} publisher connections; stored {}; \
         deliveries: {created} created, {duplicates} duplicate; {} outcomes; sessions lost per \
         replica {sessions_lost:?}",
        published.ids.len(),
        published.demo,
        published.confirmed,
        published.deliberate_duplicates,
        published.resent,
        published.connections,
        stored.len(),
        outcomes.len(),
    );
    let mut warnings: Vec<_> = warnings.into_iter().collect();
    warnings.sort();
    eprintln!("CLUSTER warnings and errors logged by the replicas: {warnings:#?}");
    eprintln!("CLUSTER test took {:?}", started.elapsed());

    let _ = admin.close(200, "".into()).await;
    drop(workers);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    env.cleanup().await;
}

/// Runs `f` on the cluster off the async runtime (the harness blocks), starting the cluster
/// first if `None` is given; hands the cluster back.
async fn blocking<T: Send + 'static>(
    cluster: Option<PrivateRabbitCluster>,
    f: impl FnOnce(&mut PrivateRabbitCluster) -> T + Send + 'static,
) -> (Option<PrivateRabbitCluster>, T) {
    tokio::task::spawn_blocking(move || {
        let mut c = cluster.unwrap_or_else(|| PrivateRabbitCluster::start(3));
        let out = f(&mut c);
        (Some(c), out)
    })
    .await
    .unwrap()
}

/// A quorum queue bound to the outcome routing keys, on the cluster.
async fn declare_outcome_capture(channel: &Channel, topology: &Topology, id: &str) -> String {
    let name = format!("test.{id}.outcomes");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    crate::helpers::declare_outcome_capture(channel, topology, &name, args).await;
    name
}

/// (members, members online) of each quorum queue, in one CLI call.
fn quorum_members(c: &mut PrivateRabbitCluster, names: &[String]) -> Vec<(String, (usize, usize))> {
    let at = (0..3).find(|&i| c.node_mut(i).is_running()).unwrap();
    let list = c
        .node(at)
        .ctl_json(&["list_queues", "name", "members", "online"]);
    names
        .iter()
        .map(|name| {
            let q = list
                .as_array()
                .and_then(|l| l.iter().find(|q| q["name"] == name.as_str()))
                .unwrap_or_else(|| panic!("{name} not listed: {list}"));
            let len = |key: &str| q[key].as_array().map_or(0, Vec::len);
            (name.clone(), (len("members"), len("online")))
        })
        .collect()
}

/// The node each replica (by pid) is connected to, from the broker's connection list: a
/// connection's pid names its node, the replica's connection name carries the process id.
fn replica_nodes(c: &mut PrivateRabbitCluster, queue: &str, pids: &[u32]) -> Vec<Option<usize>> {
    let at = (0..3).find(|&i| c.node_mut(i).is_running()).unwrap();
    let text = c
        .node(at)
        .ctl(&["list_connections", "pid", "client_properties"]);
    let needle = format!("signup-worker {queue} pid ");
    let mut placed = vec![None; pids.len()];
    for line in text.lines() {
        let Some(rest) = line.split(&needle).nth(1) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Some(replica) = pids.iter().position(|p| p.to_string() == digits) else {
            continue;
        };
        let pid = line.split_whitespace().next().unwrap_or_default();
        placed[replica] = (0..3).find(|&n| pid.contains(&format!("<{}.", c.node(n).node_name())));
    }
    placed
}

/// Starts a stopped node again and waits until it is back in the cluster and the queue's
/// member on it is online.
async fn restart(cluster: PrivateRabbitCluster, node: usize, queue: &str) -> PrivateRabbitCluster {
    let queue = queue.to_owned();
    let t = Instant::now();
    let (c, ()) = blocking(Some(cluster), move |c| {
        c.node_mut(node).start_again();
        poll_until("the node back in the queue", START_DEADLINE, || {
            (quorum_members(c, std::slice::from_ref(&queue))[0].1 == (3, 3)).then_some(())
        });
    })
    .await;
    eprintln!("CLUSTER node {node} started again in {:?}", t.elapsed());
    c.unwrap()
}

/// What happened to the replicas around one node stop.
struct StopFigures {
    node: usize,
    why: &'static str,
    /// How long the node took to stop (SIGTERM until its VM exited).
    stopping: Duration,
    replicas: Vec<Recovery>,
}

/// One replica's figures for one stop, timed from the stop command being issued.
struct Recovery {
    /// Its connection was on the stopped node.
    on_node: bool,
    /// `/readyz` went to 503 (its session ended) at this time.
    lost: Option<Duration>,
    /// `/readyz` was 200 again (a consumer registered on a new connection).
    ready_again: Option<Duration>,
    /// It acked a delivery after the node was gone.
    consuming: Duration,
    /// The longest time between two increases of its acked count, from the stop until it
    /// was consuming again (sampling adds up to ~0.1 s).
    longest_pause: Duration,
}

impl std::fmt::Display for StopFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let worst = self.replicas.iter().map(|r| r.consuming).max().unwrap();
        write!(
            f,
            "node {} ({}), stopped in {:.2}s; every replica consuming again {:.2}s after the stop \
             was issued ({:.2}s after the node was down);",
            self.node,
            self.why,
            self.stopping.as_secs_f64(),
            worst.as_secs_f64(),
            worst.saturating_sub(self.stopping).as_secs_f64(),
        )?;
        for (i, r) in self.replicas.iter().enumerate() {
            let secs =
                |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64()));
            write!(
                f,
                " replica {i}: {}, not ready at {}, ready at {}, consuming at {:.2}s, longest \
                 pause in acks {:.2}s;",
                if r.on_node {
                    "on the node"
                } else {
                    "elsewhere"
                },
                secs(r.lost),
                secs(r.ready_again),
                r.consuming.as_secs_f64(),
                r.longest_pause.as_secs_f64(),
            )?;
        }
        Ok(())
    }
}

/// Events acked by one replica so far (every outcome).
async fn acked(worker: &Worker) -> f64 {
    worker
        .metrics()
        .await
        .iter()
        .filter(|(series, _)| series.starts_with("signup_events_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// Stops `node` (gracefully) and watches the replicas until each is consuming again: ready,
/// and acking deliveries it got after the node was down.
async fn stop_and_watch(
    cluster: PrivateRabbitCluster,
    node: usize,
    placed: &[Option<usize>],
    workers: &[Worker],
    why: &'static str,
) -> (PrivateRabbitCluster, StopFigures) {
    let mut last_ack = Vec::new();
    for w in workers {
        last_ack.push((acked(w).await, Duration::ZERO));
    }
    let issued = Instant::now();
    let mut stopping = Some(tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        c.node_mut(node).stop();
        (c, issued.elapsed())
    }));
    let n = workers.len();
    let mut lost = vec![None; n];
    let mut ready_again = vec![None; n];
    let mut consuming = vec![None; n];
    let mut longest_pause = vec![Duration::ZERO; n];
    let mut down: Option<(PrivateRabbitCluster, Duration, Vec<f64>)> = None;
    loop {
        if stopping.as_ref().is_some_and(|h| h.is_finished()) {
            let (c, took) = stopping.take().unwrap().await.unwrap();
            let mut base = Vec::new();
            for w in workers {
                base.push(acked(w).await);
            }
            down = Some((c, took, base));
        }
        let at = issued.elapsed();
        for (i, w) in workers.iter().enumerate() {
            let ready = w.is_ready().await;
            let count = acked(w).await;
            if count > last_ack[i].0 {
                longest_pause[i] = longest_pause[i].max(at - last_ack[i].1);
                last_ack[i] = (count, at);
            }
            if !ready && lost[i].is_none() {
                lost[i] = Some(at);
            }
            if ready && lost[i].is_some() && ready_again[i].is_none() {
                ready_again[i] = Some(at);
            }
            if let Some((_, _, base)) = &down {
                if ready && consuming[i].is_none() && count > base[i] {
                    consuming[i] = Some(at);
                }
            }
        }
        if down.is_some() && consuming.iter().all(Option::is_some) {
            break;
        }
        assert!(
            at < Duration::from_secs(60),
            "replicas not consuming 60 s after node {node} was stopped: {consuming:?}\n{}",
            workers
                .iter()
                .map(|w| w.logs().join("\n"))
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cluster, took, _) = down.unwrap();
    let figures = StopFigures {
        node,
        why,
        stopping: took,
        replicas: (0..n)
            .map(|i| Recovery {
                on_node: placed[i] == Some(node),
                lost: lost[i],
                ready_again: ready_again[i],
                consuming: consuming[i].unwrap(),
                longest_pause: longest_pause[i],
            })
            .collect(),
    };
    eprintln!("CLUSTER {figures}");
    let worst = figures.replicas.iter().map(|r| r.consuming).max().unwrap();
    assert!(worst <= FAILOVER_BOUND, "{figures}");
    (cluster, figures)
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    /// Every event, in the order first published.
    ids: Vec<String>,
    demo: usize,
    /// Publishes the broker confirmed, deliberate duplicates included.
    confirmed: usize,
    deliberate_duplicates: usize,
    /// Publishes sent again because their round failed (the connection's node stopped).
    resent: usize,
    connections: usize,
}

/// A paced upstream: [`PER_TICK`] new events per [`TICK`] over the address list, each round
/// sent with confirms; a failed round is sent again (same event ids) on a connection to
/// another node. At-least-once, as a real upstream publishes.
async fn publish_paced(list: String, topology: Topology, stop: CancellationToken) -> Published {
    let endpoints = amqp::Endpoints::parse(&list).unwrap();
    let mut out = Published::default();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut session: Option<(Connection, Channel)> = None;
    let mut round: Vec<(usize, bool)> = Vec::new(); // (index into bodies, deliberate repeat)
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stopping = stop.is_cancelled();
        if stopping && round.is_empty() {
            break;
        }
        if !stopping {
            for _ in 0..PER_TICK {
                let i = bodies.len();
                let demo = i % 10 == 3;
                let (body, id) = event_with_id(Uuid::new_v4(), &format!("cl-{i}"), demo);
                out.demo += usize::from(demo);
                bodies.push(body);
                out.ids.push(id);
                round.push((i, false));
                if i % DUPLICATE_EVERY == 0 && i >= DUPLICATE_EVERY {
                    round.push((i - DUPLICATE_EVERY / 2, true));
                }
            }
        }
        if session.is_none() {
            match open(&endpoints, &topology).await {
                Ok(s) => {
                    out.connections += 1;
                    session = Some(s);
                }
                Err(_) => continue,
            }
        }
        let (_, channel) = session.as_ref().unwrap();
        let messages = round
            .iter()
            .map(|&(i, _)| amqp::Outgoing {
                exchange: &topology.exchange,
                routing_key: SIGNUP_REQUESTED,
                body: bodies[i].as_slice().into(),
                properties: amqp::json_properties().with_message_id(out.ids[i].as_str().into()),
                mandatory: true,
                target: &topology.queue,
            })
            .collect();
        match tokio::time::timeout(PUBLISH_TIMEOUT, amqp::publish_all(channel, messages)).await {
            Ok(Ok(())) => {
                out.confirmed += round.len();
                out.deliberate_duplicates += round.iter().filter(|(_, dup)| *dup).count();
                round.clear();
            }
            _ => {
                out.resent += round.len();
                if let Some((conn, _)) = session.take() {
                    let _ = conn.close(200, "".into()).await;
                }
            }
        }
    }
    if let Some((conn, _)) = session {
        let _ = conn.close(200, "".into()).await;
    }
    out
}

async fn open(
    endpoints: &amqp::Endpoints,
    topology: &Topology,
) -> anyhow::Result<(Connection, Channel)> {
    let conn = amqp::connect(endpoints, "cluster test publisher").await?;
    let channel = amqp::confirm_channel(&conn).await?;
    topology.declare(&channel).await?;
    Ok((conn, channel))
}

async fn queue_count(conn: &Connection, name: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = ch.close(200, "".into()).await;
    q.message_count()
}

/// Takes every message ready in a queue (outcome events).
async fn drain(conn: &Connection, name: &str) -> Vec<OutcomeEvent> {
    let n = queue_count(conn, name).await as usize;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            name.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("outcomes arrive")
            .expect("the consumer runs")
            .unwrap();
        out.push(serde_json::from_slice(&delivery.data).unwrap());
        if out.len() % 500 == 0 || out.len() == n {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    let _ = ch.close(200, "".into()).await;
    out
}

async fn stored_event_ids(env: &TestEnv) -> Vec<String> {
    env.db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT event_id::text FROM tenants",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect()
}
