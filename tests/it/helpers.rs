//! The test harness: a [`TestEnv`] per test (database, exchange, queues, an outcome capture
//! queue) and [`Worker`] processes of the real binary.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use entity::prelude::Tenants;
use entity::tenants;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use signup_worker::amqp::{self, OutcomeEvent, QueueType, Topology};
use signup_worker::db::DbTarget;
use signup_worker::domain::{signup_body, Tier, SIGNUP_REQUESTED};
use signup_worker::schema::Schema;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_signup-worker");
/// The servers come from `DATABASE_URL` and `AMQP_URL` when set (the database part of
/// `DATABASE_URL` is replaced per test), else the local ones of the contract's defaults.
fn server_url(var: &str, default: &str) -> url::Url {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    url::Url::parse(&text).unwrap_or_else(|e| panic!("{var} for the tests: {e}"))
}

/// A PostgreSQL URL for database `db` on the test server.
pub fn pg_url(db: &str) -> String {
    let mut url = server_url("DATABASE_URL", signup_worker::cli::DEFAULT_DATABASE_URL);
    url.set_path(db);
    url.into()
}

/// [`pg_url`] as another user, with a password if given.
pub fn pg_url_as(db: &str, user: &str, password: Option<&str>) -> String {
    let mut url = url::Url::parse(&pg_url(db)).unwrap();
    url.set_username(user).unwrap();
    url.set_password(password).unwrap();
    url.into()
}

/// The broker URL of the tests.
pub fn amqp_url() -> String {
    server_url("AMQP_URL", signup_worker::cli::DEFAULT_AMQP_URL).into()
}

/// [`amqp_url`], parsed.
pub fn broker() -> amqp::Endpoints {
    amqp::Endpoints::parse(&amqp_url()).expect("AMQP_URL for the tests")
}

/// [`amqp_url`] as another user.
pub fn amqp_url_as(user: &str, password: &str) -> String {
    let mut url = server_url("AMQP_URL", signup_worker::cli::DEFAULT_AMQP_URL);
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.into()
}

/// Generous: CI machines are small and tests run two at a time.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Polls `cond` until it holds or `DEADLINE` passes, then panics with `what`.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct TestEnv {
    pub id: String,
    pub db_name: String,
    pub db_url: String,
    pub topology: Topology,
    pub outcome_queue: String,
    pub db: DatabaseConnection,
    conn: Connection,
    channel: Channel,
    /// Each outcome event with its `traceparent` and `tracestate` headers.
    outcomes: Mutex<Vec<TracedOutcome>>,
}

impl TestEnv {
    /// A fresh database migrated by the binary itself with this founding capacity, and a
    /// declared topology with an outcome capture queue.
    pub async fn new(capacity: i32) -> Self {
        Self::with_queue_type(capacity, QueueType::Quorum).await
    }

    pub async fn with_queue_type(capacity: i32, queue_type: QueueType) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("signup_test_{id}");
        let db_url = pg_url(&db_name);
        let topology = Topology {
            exchange: format!("test.{id}.events"),
            queue: format!("test.{id}.signups"),
            queue_type,
        };
        let out = Command::new(BIN)
            .args(["migrate", "--founding-capacity", &capacity.to_string()])
            .env("DATABASE_URL", &db_url)
            .output()
            .expect("run signup-worker migrate");
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // One connection: the fault tests terminate every other backend of the database.
        let db = DbTarget::parse(&db_url).unwrap().connect(1).await.unwrap();
        let conn = amqp::connect(&broker(), &format!("test harness {id}"))
            .await
            .unwrap();
        let channel = amqp::confirm_channel(&conn).await.unwrap();
        topology.declare(&channel).await.unwrap();
        let outcome_queue = format!("test.{id}.outcomes");
        declare_outcome_capture(&channel, &topology, &outcome_queue, FieldTable::default()).await;
        Self {
            id,
            db_name,
            db_url,
            topology,
            outcome_queue,
            db,
            conn,
            channel,
            outcomes: Mutex::new(Vec::new()),
        }
    }

    /// The binary, pointed at this test's database and queues.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("DATABASE_URL", &self.db_url)
            .env("AMQP_URL", amqp_url())
            .env("SIGNUP_EXCHANGE", &self.topology.exchange)
            .env("SIGNUP_QUEUE", &self.topology.queue)
            .env(
                "SIGNUP_QUEUE_TYPE",
                match self.topology.queue_type {
                    QueueType::Quorum => "quorum",
                    QueueType::Classic => "classic",
                },
            )
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Runs a one-shot subcommand, requires it to succeed, and returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        self.run_ok_with(args, &[])
    }

    /// [`Self::run_ok`] with extra environment variables.
    pub fn run_ok_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = self.command();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn spawn_worker(&self, extra: &[(&str, &str)]) -> Worker {
        let mut cmd = self.command();
        cmd.args(["run", "--metrics-addr", "127.0.0.1:0"]);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Worker::spawn(cmd)
    }

    pub async fn publish_raw(&self, body: &[u8], message_id: &str) {
        self.publish_many(&[(body.to_vec(), message_id.to_owned())])
            .await;
    }

    /// Publishes a batch with all confirms awaited at the end.
    pub async fn publish_many(&self, bodies: &[(Vec<u8>, String)]) {
        let mut pending = Vec::new();
        for (body, id) in bodies {
            let props = amqp::json_properties().with_message_id(id.as_str().into());
            pending.push(self.send(body, props).await);
        }
        for c in pending {
            amqp::confirmed(c, &self.topology.queue).await.unwrap();
        }
    }

    /// Collects outcome events published so far and returns all collected.
    pub async fn outcomes(&self) -> Vec<OutcomeEvent> {
        loop {
            let got = self
                .channel
                .basic_get(
                    self.outcome_queue.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap();
            let Some(msg) = got else { break };
            assert_matches_its_schema(&msg.delivery.data, &msg.delivery.properties);
            let event: OutcomeEvent = serde_json::from_slice(&msg.delivery.data).unwrap();
            let correlation = msg
                .delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string());
            assert_eq!(
                correlation, event.event_id,
                "correlation_id is the event id"
            );
            let props = &msg.delivery.properties;
            self.outcomes.lock().unwrap().push(TracedOutcome {
                event,
                traceparent: string_header(props, "traceparent"),
                tracestate: string_header(props, "tracestate"),
            });
            self.channel
                .basic_ack(msg.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
        }
        self.traced_outcomes()
            .into_iter()
            .map(|t| t.event)
            .collect()
    }

    /// The outcomes collected so far, with their trace headers.
    pub fn traced_outcomes(&self) -> Vec<TracedOutcome> {
        self.outcomes.lock().unwrap().clone()
    }

    pub async fn wait_outcomes(&self, n: usize) -> Vec<OutcomeEvent> {
        wait_for(&format!("{n} outcome events"), || async {
            self.outcomes().await.len() >= n
        })
        .await;
        self.outcomes().await
    }

    /// Messages ready in a queue (passive declare on a fresh channel).
    pub async fn queue_messages(&self, name: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
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

    /// Takes every message from the DLQ: (body, x-signup-error).
    pub async fn take_dead_letters(&self) -> Vec<(Vec<u8>, Option<String>)> {
        self.take_dead_letter_deliveries()
            .await
            .into_iter()
            .map(|d| {
                let error = string_header(&d.properties, amqp::ERROR_HEADER);
                (d.data, error)
            })
            .collect()
    }

    /// Takes every message from the DLQ, whole.
    pub async fn take_dead_letter_deliveries(&self) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        let dlq = self.topology.dead_letter_queue();
        while let Some(msg) = self
            .channel
            .basic_get(dlq.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            self.channel
                .basic_ack(msg.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
            out.push(msg.delivery);
        }
        out
    }

    /// Publishes one message with the given properties to the signup routing key.
    pub async fn publish_with(&self, body: &[u8], props: lapin::BasicProperties) {
        let c = self.send(body, props).await;
        amqp::confirmed(c, &self.topology.queue).await.unwrap();
    }

    /// Sends one signup message (mandatory, so an unroutable one fails its confirm).
    async fn send(&self, body: &[u8], props: lapin::BasicProperties) -> lapin::PublisherConfirm {
        amqp::publish(
            &self.channel,
            &self.topology.exchange,
            SIGNUP_REQUESTED,
            body,
            props,
            true,
        )
        .await
        .unwrap()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    pub async fn execute(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.unwrap();
    }

    /// Runs a statement from the server's `postgres` database (for what cannot be done from
    /// inside the test database, such as closing it to connections).
    pub async fn execute_as_admin(&self, sql: &str) {
        let admin = DbTarget::parse(&pg_url("postgres"))
            .unwrap()
            .connect(1)
            .await
            .unwrap();
        admin.execute_unprepared(sql).await.unwrap();
        let _ = admin.close().await;
    }

    pub async fn tenant_count(&self) -> i64 {
        let n = Tenants::find().count(&self.db).await.unwrap();
        i64::try_from(n).unwrap()
    }

    /// (capacity, position, assigned)
    pub async fn founding(&self) -> signup_worker::founding::FoundingStats {
        signup_worker::founding::founding_stats(&self.db)
            .await
            .unwrap()
    }

    /// The invariants that hold after any run: numbers distinct, within 1..=capacity, never on
    /// a demo tenant, and the sequence position equal to assigned + burned.
    pub async fn assert_numbering_invariants(&self) {
        let stats = self.founding().await;
        let mut seen = std::collections::HashSet::new();
        for t in Tenants::find().all(&self.db).await.unwrap() {
            let Some(n) = t.founding_member_number else {
                continue;
            };
            assert!(seen.insert(n), "duplicate founding number {n}");
            assert!(
                (1..=stats.capacity).contains(&i64::from(n)),
                "number {n} outside 1..{}",
                stats.capacity
            );
            assert!(!t.is_demo, "demo tenant {} got number {n}", t.slug);
        }
        assert!(stats.position <= stats.capacity);
        assert!(stats.assigned <= stats.position);
    }

    /// The stronger property of runs without crashes or killed connections: not a single
    /// number burned, i.e. the sequence position equals the count of numbered tenants (plus
    /// pooled and retired ones, which such runs have none of unless the test made them).
    pub async fn assert_no_number_burned(&self) {
        let stats = self.founding().await;
        assert_eq!(stats.burned(), 0, "numbers burned: {stats:?}");
        assert_eq!(
            stats.position,
            stats.assigned + stats.pooled + stats.retired,
            "{stats:?}"
        );
    }

    /// Waits until no number is burned any more (dead transactions' numbers reclaimed).
    pub async fn wait_nothing_burned(&self) {
        wait_for("burned numbers to be reclaimed", || async {
            self.founding().await.burned() == 0
        })
        .await;
    }

    /// The numbers held by tenants, in order.
    pub async fn numbers_in_use(&self) -> Vec<i32> {
        Tenants::find()
            .select_only()
            .column(tenants::Column::FoundingMemberNumber)
            .filter(tenants::Column::FoundingMemberNumber.is_not_null())
            .order_by_asc(tenants::Column::FoundingMemberNumber)
            .into_tuple::<i32>()
            .all(&self.db)
            .await
            .unwrap()
    }

    /// Ends the test's use of its resources; the removal itself is in `Drop`, so that a test
    /// that fails (panics) cleans up as well.
    pub async fn cleanup(self) {
        drop(self);
    }
}

impl Drop for TestEnv {
    /// Deletes the queues, the exchange and the database, best effort. Drop cannot await and
    /// may run while a panic unwinds, so the work runs on a thread with a runtime of its own
    /// and new connections, and the test's thread waits for it.
    fn drop(&mut self) {
        let t = &self.topology;
        let queues = [
            t.queue.clone(),
            t.retry_queue(),
            t.dead_letter_queue(),
            self.outcome_queue.clone(),
        ];
        let exchange = t.exchange.clone();
        let db_name = self.db_name.clone();
        let removal = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(conn) = amqp::connect(&broker(), "test cleanup").await {
                    if let Ok(ch) = conn.create_channel().await {
                        for q in &queues {
                            let _ = ch
                                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                        let _ = ch
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "".into()).await;
                }
                if let Ok(admin) = DbTarget::parse(&pg_url("postgres"))
                    .unwrap()
                    .connect(1)
                    .await
                {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                        ))
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = removal.join();
    }
}

/// Drops a login role a test created (after its database is gone, so it owns nothing).
pub async fn drop_role(role: &str) {
    let admin = DbTarget::parse(&pg_url("postgres"))
        .unwrap()
        .connect(1)
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
    let _ = admin.close().await;
}

/// A header's value as text (long or short string).
pub fn string_header(props: &lapin::BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A valid event body with a fresh id: (body, event id).
pub fn event(slug: &str, is_demo: bool) -> (Vec<u8>, String) {
    event_with_id(Uuid::new_v4(), slug, is_demo)
}

pub fn event_with_id(id: Uuid, slug: &str, is_demo: bool) -> (Vec<u8>, String) {
    (
        signup_body(
            id,
            slug,
            &format!("Business {slug}"),
            &format!("owner@{slug}.example"),
            Tier::Starter,
            is_demo,
        ),
        id.to_string(),
    )
}

/// The outcome schemas the binary publishes (docs/schemas/), compiled once per test binary,
/// with format assertion on as their descriptions ask of consumers.
fn outcome_validator(schema: Schema) -> &'static jsonschema::Validator {
    static VALIDATORS: OnceLock<Vec<(Schema, jsonschema::Validator)>> = OnceLock::new();
    let all = VALIDATORS.get_or_init(|| {
        [Schema::Completed, Schema::Rejected]
            .into_iter()
            .map(|s| {
                let doc: serde_json::Value = serde_json::from_str(s.text()).unwrap();
                let v = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&doc)
                    .unwrap_or_else(|e| panic!("{s:?} schema: {e}"));
                (s, v)
            })
            .collect()
    });
    let (_, v) = all
        .iter()
        .find(|(s, _)| *s == schema)
        .expect("an outcome schema");
    v
}

/// Every outcome event a test captures is checked here, whatever the test is about: the body
/// matches the published schema for its `type` and names no field the schema does not (a
/// consumer ignores unknown fields, but a field the worker adds without documenting it is
/// drift), and its AMQP properties are the documented ones (docs/asyncapi.yaml).
fn assert_matches_its_schema(body: &[u8], props: &lapin::BasicProperties) {
    let value: serde_json::Value = serde_json::from_slice(body).expect("an outcome is JSON");
    let kind = value["type"].as_str().unwrap_or_default();
    let schema = Schema::for_outcome(kind)
        .unwrap_or_else(|| panic!("an outcome event of unknown type: {value}"));
    let errors: Vec<String> = outcome_validator(schema)
        .iter_errors(&value)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "an outcome event does not match docs/schemas/{kind}.json: {errors:?}\n{value}"
    );
    let doc: serde_json::Value = serde_json::from_str(schema.text()).unwrap();
    let named = doc["properties"]
        .as_object()
        .expect("the schema names its properties");
    let undocumented: Vec<&String> = value
        .as_object()
        .expect("an object, as the schema says")
        .keys()
        .filter(|k| !named.contains_key(*k))
        .collect();
    assert!(
        undocumented.is_empty(),
        "an outcome event has fields its schema does not name: {undocumented:?}\n{value}"
    );
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json"),
        "content_type of {value}"
    );
    assert_eq!(*props.delivery_mode(), Some(2), "delivery_mode of {value}");
}

/// An outcome event as received, with its W3C trace headers.
#[derive(Debug, Clone)]
pub struct TracedOutcome {
    pub event: OutcomeEvent,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// A running `signup-worker run` process. Killed on drop.
pub struct Worker {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    pub metrics_addr: String,
}

impl Worker {
    /// Spawns a prepared `run` command (see [`TestEnv::spawn_worker`] for the usual way).
    pub fn spawn_command(cmd: Command) -> Self {
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signup-worker run");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = v.get("metrics_addr").and_then(|a| a.as_str()) {
                        let _ = addr_tx.send(addr.to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let metrics_addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker logs its metrics address");
        Self {
            child,
            logs,
            metrics_addr,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The process id (a replica's AMQP connection name carries it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr)
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    pub async fn is_ready(&self) -> bool {
        matches!(self.get("/readyz").await, Some((200, _)))
    }

    pub async fn wait_ready(&self) {
        wait_for("the worker to be ready", || self.is_ready()).await;
    }

    /// All samples of /metrics, by series (`name{labels}`).
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let (_, body) = self.get("/metrics").await.expect("scrape /metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series).copied().unwrap_or(0.0)
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "worker did not exit; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until one worker's series reaches `want`. Events are counted when their batch is
/// acked, a moment after their outcomes are published, so a test that has seen the outcomes
/// waits for the counters.
pub async fn wait_metric(worker: &Worker, series: &str, want: f64) {
    wait_for(&format!("{series} = {want}"), || async {
        worker.metric(series).await == want
    })
    .await;
}

/// [`wait_metric`] for the sum over several workers.
pub async fn wait_total(workers: &[Worker], series: &str, want: f64) {
    wait_for(&format!("sum of {series} = {want}"), || async {
        total(workers, series).await == want
    })
    .await;
}

/// Sum of one series over several workers.
pub async fn total(workers: &[Worker], series: &str) -> f64 {
    let mut sum = 0.0;
    for w in workers {
        sum += w.metric(series).await;
    }
    sum
}

/// Closes the broker-side connections whose client properties mention `needle`.
pub fn close_amqp_connections(needle: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl list_connections");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let ok = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "closed by test"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        closed += usize::from(ok);
    }
    closed
}

/// Declares `name` (with `args`) and binds it to both outcome routing keys of `topology`'s
/// exchange, so that it captures every outcome event.
pub async fn declare_outcome_capture(
    channel: &lapin::Channel,
    topology: &signup_worker::amqp::Topology,
    name: &str,
    args: FieldTable,
) {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    for key in [amqp::COMPLETED, amqp::REJECTED] {
        channel
            .queue_bind(
                name.into(),
                topology.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
}

/// JSON properties with W3C `traceparent` and a fixed `tracestate` header.
pub fn traced_properties(traceparent: &str) -> lapin::BasicProperties {
    let mut h = FieldTable::default();
    h.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent.into()),
    );
    h.insert(
        "tracestate".into(),
        lapin::types::AMQPValue::LongString("congo=t61rcWkgMzE".into()),
    );
    amqp::json_properties().with_headers(h)
}
