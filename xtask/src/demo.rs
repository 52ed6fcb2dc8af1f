//! `xtask demo`, what `scripts/demo.sh` runs after services and build: a clean demo database
//! and queues, a migration with a founding capacity, worker replicas, a mixed load of signup
//! events, and once it is all handled, a summary of what happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::builder::BoolishValueParser;
use migration::schema::TENANTS;
use sea_orm::{ConnectionTrait, Statement};

use crate::target::{Depths, Target, BIN};
use crate::ui::{heading, note, section, show};
use crate::workers::{listening, sum_by_label, Workers};
use crate::{run_shown, Done};

#[derive(clap::Args)]
pub struct Args {
    /// Events to publish
    #[arg(long, env = "COUNT", default_value_t = 2000)]
    count: u64,
    /// Founding-member numbers available
    #[arg(long, env = "FOUNDING_CAPACITY", default_value_t = 100)]
    founding_capacity: u64,
    /// Worker replicas (metrics on 127.0.0.1:9464, :9465, ...)
    #[arg(long, env = "REPLICAS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=100))]
    replicas: u16,
    /// The demo's database: dropped, then created by `migrate`
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/signup_worker_demo",
        hide_env_values = true
    )]
    database_url: String,
    /// RabbitMQ, as for the worker
    #[arg(long, env = "AMQP_URL", default_value = crate::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// The exchange events are published to
    #[arg(long, env = "SIGNUP_EXCHANGE", default_value = "demo.events")]
    signup_exchange: String,
    /// The queue the replicas consume; it and its .retry and .dlq are deleted first
    #[arg(long, env = "SIGNUP_QUEUE", default_value = "demo.signups")]
    signup_queue: String,
    /// Leave the workers up after the summary until Ctrl-C
    #[arg(long, env = "KEEP_RUNNING", value_parser = BoolishValueParser::new())]
    keep_running: bool,
    /// Allow database and queue names that do not contain "demo"
    #[arg(long, env = "DEMO_FORCE", value_parser = BoolishValueParser::new())]
    demo_force: bool,
    /// Seconds to wait for every replica's /readyz
    #[arg(long, env = "READY_TIMEOUT", default_value_t = 60)]
    ready_timeout: u64,
    /// Seconds to wait for the workers to handle every event
    #[arg(long, env = "DRAIN_TIMEOUT", default_value_t = 120)]
    drain_timeout: u64,
}

const FIRST_PORT: u16 = 9464;
/// Between two looks at the queues: each is a `status --json` process with two connections.
const DRAIN_POLL: Duration = Duration::from_millis(500);
const LOG_DIR: &str = "target/demo";
/// The hard cases mixed into the load, as `publish` flags.
const MIX: &str = "--duplicates 0.05 --slug-collisions 0.03 --invalid 0.02 --demo 0.1";
/// `signup_events_total` outcomes and `signup_conflicts_total` kinds (contract section 6),
/// in the order printed, with what each means.
const OUTCOMES: [(&str, &str); 5] = [
    ("created", "tenant inserted"),
    (
        "duplicate",
        "event id already stored (copy or redelivery): nothing added",
    ),
    ("rejected", "slug taken by another event"),
    (
        "invalid",
        "failed validation: sent to the dead-letter queue",
    ),
    (
        "dead_lettered",
        "valid, but out of attempts: sent to the dead-letter queue",
    ),
];
const CONFLICTS: [(&str, &str); 3] = [
    (
        "event_id",
        "a stored event id came back naming another slug",
    ),
    ("slug", "slug taken by another event"),
    (
        "founding_number",
        "the unique index refused a number (must stay 0)",
    ),
];

pub async fn run(args: &Args, workers: &mut Workers) -> anyhow::Result<Done> {
    let target = Target::new(
        &args.database_url,
        &args.amqp_url,
        &args.signup_exchange,
        &args.signup_queue,
    )?;
    let ports: Vec<u16> = (0..args.replicas).map(|i| FIRST_PORT + i).collect();

    section("2. Clean demo setup");
    note(&format!(
        "database: {}   exchange: {}   queue: {} (+ .retry, .dlq)",
        target.db.name, target.exchange, target.queue
    ));
    target.check_names("demo", args.demo_force, "DEMO_FORCE")?;
    for &port in &ports {
        if listening(port).await {
            bail!("something already listens on 127.0.0.1:{port} (a previous demo still running?)");
        }
    }
    target.start_clean(true).await?;

    section(&format!(
        "3. Migrate and start {} worker replicas",
        args.replicas
    ));
    let capacity = args.founding_capacity.to_string();
    run_shown(
        target
            .command()
            .args(["migrate", "--founding-capacity", &capacity]),
    )
    .await?;
    std::fs::create_dir_all(LOG_DIR)?;
    for (i, &port) in ports.iter().enumerate() {
        let log = PathBuf::from(format!("{LOG_DIR}/worker-{}.log", i + 1));
        show(&format!(
            "{BIN} run --metrics-addr 127.0.0.1:{port} > {} 2>&1 &",
            log.display()
        ));
        let mut cmd = target.command();
        cmd.arg("run");
        workers.start(cmd, port, log)?;
    }
    note(&format!(
        "waiting for /readyz on every replica (up to {}s)",
        args.ready_timeout
    ));
    workers
        .wait_ready(Duration::from_secs(args.ready_timeout), |n, w| {
            note(&format!(
                "worker {n} ready: pid {}, http://127.0.0.1:{}/readyz, log {}",
                w.pid,
                w.port,
                w.log.display()
            ))
        })
        .await?;

    section(&format!("4. Publish {} signup events", args.count));
    note("mixed in: 5% duplicate event ids, 3% slug collisions, 2% invalid, 10% demo tenants");
    let count = args.count.to_string();
    run_shown(
        target
            .command()
            .args(["publish", "--count", &count])
            .args(MIX.split(' ')),
    )
    .await?;

    section(&format!(
        "5. Waiting for the workers to handle every event (up to {}s)",
        args.drain_timeout
    ));
    let handled = drain(
        &target,
        workers,
        args.count,
        Duration::from_secs(args.drain_timeout),
    )
    .await?;
    note(&format!(
        "drained: main queue 0, retry queue 0, {handled} events handled"
    ));

    section("6. Summary");
    heading("signup-worker status");
    let status = target.command().arg("status").status().await?;
    anyhow::ensure!(status.success(), "signup-worker status failed");
    heading(&format!("Tenants in {}", target.db.name));
    print_tenants(&target).await?;
    print_counters(&workers.metrics().await, usize::from(args.replicas));

    println!();
    note(&format!(
        "Full metrics: http://127.0.0.1:{FIRST_PORT}/metrics (one endpoint per replica, ports {})",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    note(&format!("Worker logs:  {LOG_DIR}/worker-*.log"));
    note(&format!(
        "Dead-lettered events stay in {}.dlq (see 'signup-worker dlq replay --help')",
        target.queue
    ));
    if args.keep_running {
        return Ok(Done::KeepRunning);
    }
    note("(run with KEEP_RUNNING=1 to keep the workers up and browse the metrics)");
    Ok(Done::Finished)
}

/// Waits until the main and retry queues are empty and the replicas have counted an outcome
/// for every published message: a queue's depth leaves out the deliveries a worker holds
/// unacked, the counters do not. Returns the number of outcomes.
async fn drain(
    target: &Target,
    workers: &mut Workers,
    published: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut reported: Option<Instant> = None;
    loop {
        let depths = target.depths().await.ok();
        let handled: u64 = sum_by_label(
            &workers.metrics().await,
            "signup_events_total",
            "outcome",
            &[],
        )
        .iter()
        .map(|(_, n)| n)
        .sum();
        let empty = depths.as_ref().is_some_and(|d| d.main == 0 && d.retry == 0);
        if empty && handled >= published {
            return Ok(handled);
        }
        let depth =
            |f: fn(&Depths) -> u64| depths.as_ref().map_or("?".into(), |d| f(d).to_string());
        let (main, retry, dlq) = (depth(|d| d.main), depth(|d| d.retry), depth(|d| d.dlq));
        if reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
            note(&format!(
                "main queue: {main}   retry queue: {retry}   dead-letter queue: {dlq}   events handled: {handled} of {published}"
            ));
            reported = Some(Instant::now());
        }
        workers.check_running()?;
        if Instant::now() >= deadline {
            bail!("not drained after {}s (main={main}, retry={retry}, handled {handled} of {published})", timeout.as_secs());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// The founding rules, checked on the stored tenants.
async fn print_tenants(target: &Target) -> anyhow::Result<()> {
    let db = target.db.connect().await?;
    let sql = format!(
        "SELECT count(*) AS tenants,
                count(founding_member_number) AS numbered,
                coalesce(min(founding_member_number), 0)::bigint AS lowest,
                coalesce(max(founding_member_number), 0)::bigint AS highest,
                count(*) FILTER (WHERE is_demo) AS demo,
                count(*) FILTER (WHERE is_demo AND founding_member_number IS NOT NULL) AS demo_numbered,
                count(*) FILTER (WHERE NOT is_demo AND founding_member_number IS NULL) AS after_bound,
                count(DISTINCT founding_member_number) = count(founding_member_number) AS unique_numbers,
                coalesce(max(founding_member_number), 0) = count(founding_member_number) AS no_gaps
         FROM {TENANTS}"
    );
    let row = db
        .query_one(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("the tenant summary returned no row")?;
    db.close().await?;
    let count = |column: &str| row.try_get::<i64>("", column);
    let yes_no = |column: &str| {
        row.try_get::<bool>("", column)
            .map(|b| if b { "yes" } else { "NO" })
    };
    let lines = [
        ("tenants", count("tenants")?.to_string()),
        (
            "founding members (numbered)",
            count("numbered")?.to_string(),
        ),
        ("lowest number", count("lowest")?.to_string()),
        ("highest number", count("highest")?.to_string()),
        ("numbers unique", yes_no("unique_numbers")?.to_owned()),
        ("numbers without gaps", yes_no("no_gaps")?.to_owned()),
        ("demo tenants", count("demo")?.to_string()),
        (
            "demo tenants numbered (must be 0)",
            count("demo_numbered")?.to_string(),
        ),
        (
            "non-demo, after the bound",
            count("after_bound")?.to_string(),
        ),
    ];
    for (label, value) in lines {
        note(&format!("{label:<34} {value:>6}"));
    }
    Ok(())
}

fn print_counters(metrics: &[String], replicas: usize) {
    let print = |name: &str, label: &str, rows: &[(&str, &str)]| {
        let keys: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
        for (key, n) in sum_by_label(metrics, name, label, &keys) {
            let what = rows.iter().find(|(k, _)| *k == key).map_or("", |(_, w)| w);
            note(format!("{key:<16} {n:>6}   {what}").trim_end());
        }
    };
    heading(&format!(
        "signup_events_total, summed over {replicas} replicas"
    ));
    print("signup_events_total", "outcome", &OUTCOMES);
    heading("signup_conflicts_total");
    print("signup_conflicts_total", "kind", &CONFLICTS);
    heading("signup_retries_total");
    let retries = sum_by_label(metrics, "signup_retries_total", "reason", &[]);
    let retries: Vec<_> = retries.into_iter().filter(|(_, n)| *n > 0).collect();
    if retries.is_empty() {
        note("none: no serialization failure, deadlock or outage during the run");
    }
    for (reason, n) in retries {
        note(&format!("{reason:<22} {n:>6}"));
    }
}
