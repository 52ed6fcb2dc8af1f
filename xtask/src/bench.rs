//! `xtask bench`, what `scripts/bench.sh` runs: how fast do 1 and 2 replicas turn a full queue
//! into tenants and what does each signup cost in CPU, how quickly does one idle replica
//! answer a fixed rate of signups, and how fast does PostgreSQL alone insert the same rows?
//!
//! - **Saturation** (per replica count): a fresh database and fresh queues, N events pre-loaded
//!   while no worker runs (publishing is timed too, separately), then the replicas start and
//!   the clock runs until N tenants are stored. Over that window, the CPU of the replicas, of
//!   the PostgreSQL processes, of the broker and of the whole machine ([`crate::cpu`]); peak
//!   RSS per worker is `VmHWM`.
//! - **Fixed rate**: one replica started and idle, then valid events published at a fixed rate
//!   by this task ([`crate::fixed_rate`]) while it receives their outcome events: p50/p99 from
//!   publish to outcome, and the same CPU figures.
//! - **PostgreSQL alone**: pgbench inserting 100 rows per transaction through the same trigger.
//!
//! Each is run `RUNS` times from scratch; each run prints one `BENCH {json}` line, and the
//! tables at the end give the median of the runs with their range. The database and queues
//! are dropped at the end.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::builder::BoolishValueParser;
use sea_orm::{ConnectionTrait as _, DatabaseConnection};
use serde_json::Value;
use tokio::process::Command;

use migration::schema::TENANTS;

use crate::cpu::{Sampler, Usage};
use crate::fixed_rate::{percentile, Listener};
use crate::table::{cell, print_markdown, print_table};
use crate::target::{Database, Target};
use crate::ui::{note, section};
use crate::workers::{proc_value, Workers, POLL};

#[derive(clap::Args)]
pub struct Args {
    /// Events per saturation run (and rows for PostgreSQL alone)
    #[arg(long, env = "N", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Replica counts to measure at saturation, separated by spaces
    #[arg(long, env = "REPLICA_COUNTS", default_value = "1 2", value_parser = replica_counts)]
    replica_counts: ReplicaCounts,
    /// Runs of each measurement, each from scratch; the tables give their median and range
    #[arg(long, env = "RUNS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    runs: u32,
    /// What to measure, separated by spaces: saturation, fixed-rate, baseline
    #[arg(long, env = "BENCH_KINDS", default_value = "saturation fixed-rate baseline", value_parser = kinds)]
    kinds: Kinds,
    /// Signups per second offered in the fixed-rate run
    #[arg(long, env = "RATE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Seconds the fixed-rate run publishes for (RATE x RATE_SECS events)
    #[arg(long, env = "RATE_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    rate_secs: u64,
    /// Seconds allowed after the last fixed-rate publish for every outcome event to arrive
    #[arg(long, env = "OUTCOME_TIMEOUT", default_value_t = 30)]
    outcome_timeout: u64,
    /// Seconds allowed for one saturation run to store N tenants
    #[arg(long, env = "BENCH_TIMEOUT", default_value_t = 600)]
    bench_timeout: u64,
    /// The benchmark's database: dropped, then created by `migrate`; dropped again at the end
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/signup_worker_bench",
        hide_env_values = true
    )]
    database_url: String,
    /// RabbitMQ, as for the worker
    #[arg(long, env = "AMQP_URL", default_value = crate::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// The exchange events are published to
    #[arg(long, env = "SIGNUP_EXCHANGE", default_value = "bench.events")]
    signup_exchange: String,
    /// The queue the replicas consume; it and its .retry and .dlq are deleted first and at the end
    #[arg(long, env = "SIGNUP_QUEUE", default_value = "bench.signups")]
    signup_queue: String,
    /// The workers' log filter (their logs go to target/bench/)
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    rust_log: String,
    /// Allow database and queue names that do not contain "bench"
    #[arg(long, env = "BENCH_FORCE", value_parser = BoolishValueParser::new())]
    bench_force: bool,
}

#[derive(Clone)]
struct ReplicaCounts(Vec<u16>);

fn replica_counts(text: &str) -> Result<ReplicaCounts, String> {
    let counts: Result<Vec<u16>, _> = text.split_whitespace().map(str::parse).collect();
    match counts {
        Ok(c) if !c.is_empty() && !c.contains(&0) => Ok(ReplicaCounts(c)),
        _ => Err(format!("'{text}' is not a list of positive replica counts")),
    }
}

#[derive(Clone)]
struct Kinds {
    saturation: bool,
    fixed_rate: bool,
    baseline: bool,
}

fn kinds(text: &str) -> Result<Kinds, String> {
    let mut k = Kinds {
        saturation: false,
        fixed_rate: false,
        baseline: false,
    };
    for word in text.split_whitespace() {
        match word {
            "saturation" => k.saturation = true,
            "fixed-rate" => k.fixed_rate = true,
            "baseline" => k.baseline = true,
            _ => {
                return Err(format!(
                    "'{word}' is not one of saturation, fixed-rate, baseline"
                ))
            }
        }
    }
    if k.saturation || k.fixed_rate || k.baseline {
        Ok(k)
    } else {
        Err("nothing to measure".into())
    }
}

/// More numbers than any run stores, so every tenant draws one: the numbering is measured.
const CAPACITY: &str = "1000000";
/// Clear of the demo's ports (9464, ...), so a demo may keep running meanwhile.
const FIRST_PORT: u16 = 9471;
const LOG_DIR: &str = "target/bench";
/// Worker settings that change the figures, recorded with them when set.
const SETTINGS: [&str; 4] = [
    "PREFETCH",
    "BATCH_SIZE",
    "SIGNUP_QUEUE_TYPE",
    "MAX_DELIVERIES",
];
/// How long the fixed-rate replica may take to be ready, then to fall idle after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One pgbench transaction: 100 valid, non-demo tenants, through the numbering trigger.
fn insert_100() -> String {
    format!(
        "INSERT INTO {TENANTS} (event_id, slug, business_name, owner_email, tier, is_demo)
         SELECT gen_random_uuid(), 'bench-' || replace(gen_random_uuid()::text, '-', ''),
                'Bench Business ' || g, 'owner' || g || '@bench.example', 'starter', false
         FROM generate_series(1, 100) AS g;\n"
    )
}

/// One saturation run.
struct Saturation {
    replicas: u16,
    events: u64,
    secs: f64,
    publish_rate: f64,
    usage: Usage,
    rss: Vec<f64>,
}

/// One fixed-rate run.
struct FixedRate {
    rate: u32,
    events: u64,
    publish_secs: f64,
    max_lag_ms: f64,
    received: usize,
    completed: usize,
    rejected: usize,
    latencies_ms: Vec<f64>,
    usage: Usage,
    rss: Vec<f64>,
}

/// One run of PostgreSQL alone.
struct Baseline {
    rows: u64,
    secs: f64,
    usage: Usage,
}

/// CPU milliseconds per signup (or per row).
fn per(ms: f64, count: u64) -> f64 {
    ms / count.max(1) as f64
}

fn max_rss(rss: &[f64]) -> f64 {
    rss.iter().copied().fold(0.0, f64::max)
}

impl Usage {
    /// This task's own share of the machine, in % of all CPUs (part of `machine_busy_pct`).
    fn xtask_busy_pct(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if self.secs > 0.0 {
            100.0 * self.xtask_ms / (self.secs * 1e3 * cpus)
        } else {
            0.0
        }
    }

    /// The CPU fields of a BENCH line, per signup (or row) of `count`.
    fn fields(&self, count: u64, unit: &str) -> Fields {
        let opt = |v: Option<f64>| v.map_or(Value::Null, |ms| num(per(ms, count), 5));
        vec![
            (
                format!("worker_cpu_ms_per_{unit}"),
                num(per(self.worker_ms, count), 5),
            ),
            (format!("pg_cpu_ms_per_{unit}"), opt(self.pg_ms)),
            (
                format!("pg_db_backends_cpu_ms_per_{unit}"),
                opt(self.pg_db_ms),
            ),
            (format!("broker_cpu_ms_per_{unit}"), opt(self.broker_ms)),
            ("machine_busy_pct".into(), num(self.machine_busy_pct, 1)),
            ("xtask_busy_pct".into(), num(self.xtask_busy_pct(), 1)),
        ]
    }
}

/// A number rounded to `decimals` places, as JSON (an integer for 0; null when not finite).
fn num(x: f64, decimals: i32) -> Value {
    if decimals == 0 && x.is_finite() {
        return Value::from(x.round() as i64);
    }
    let scale = 10f64.powi(decimals);
    serde_json::Number::from_f64((x * scale).round() / scale).map_or(Value::Null, Value::Number)
}

/// Prints one machine-readable line, `BENCH {...}`: the run's kind and number, the commit and
/// the worker settings, then its `fields` in the order given.
fn bench_line(context: &Context, kind: &str, run: u32, fields: Fields) {
    let head: Fields = vec![
        ("kind".into(), kind.into()),
        ("run".into(), run.into()),
        ("commit".into(), context.commit.as_str().into()),
        ("dirty".into(), context.dirty.into()),
        ("settings".into(), context.settings.clone()),
    ];
    let body: Vec<String> = head
        .into_iter()
        .chain(fields)
        .map(|(k, v)| format!("{}:{v}", Value::String(k)))
        .collect();
    println!("BENCH {{{}}}", body.join(","));
}

/// The fields of a BENCH line, in order.
type Fields = Vec<(String, Value)>;

impl Saturation {
    fn fields(&self) -> Fields {
        let mut f: Fields = vec![
            ("replicas".into(), self.replicas.into()),
            ("n".into(), self.events.into()),
            ("secs".into(), num(self.secs, 3)),
            (
                "signups_per_s".into(),
                num(self.events as f64 / self.secs, 0),
            ),
        ];
        f.extend(self.usage.fields(self.events, "signup"));
        f.extend([
            ("peak_rss_mib".into(), num(max_rss(&self.rss), 1)),
            (
                "peak_rss_mib_per_worker".into(),
                self.rss.iter().map(|&m| num(m, 1)).collect(),
            ),
            ("publish_msg_per_s".into(), num(self.publish_rate, 0)),
        ]);
        f
    }
}

impl FixedRate {
    fn fields(&self) -> Fields {
        let p = |q: f64| percentile(&self.latencies_ms, q).map_or(Value::Null, |v| num(v, 2));
        let mut f: Fields = vec![
            ("rate".into(), self.rate.into()),
            ("events".into(), self.events.into()),
            ("publish_secs".into(), num(self.publish_secs, 3)),
            (
                "offered_per_s".into(),
                num(self.events as f64 / self.publish_secs, 0),
            ),
            ("publisher_max_lag_ms".into(), num(self.max_lag_ms, 2)),
            ("outcomes".into(), self.received.into()),
            ("completed".into(), self.completed.into()),
            ("rejected".into(), self.rejected.into()),
            ("p50_ms".into(), p(50.0)),
            ("p90_ms".into(), p(90.0)),
            ("p99_ms".into(), p(99.0)),
            ("max_ms".into(), p(100.0)),
            ("window_secs".into(), num(self.usage.secs, 3)),
        ];
        f.extend(self.usage.fields(self.events, "signup"));
        f.push(("peak_rss_mib".into(), num(max_rss(&self.rss), 1)));
        f
    }
}

impl Baseline {
    fn fields(&self) -> Fields {
        let mut f: Fields = vec![
            ("rows".into(), self.rows.into()),
            ("secs".into(), num(self.secs, 3)),
            ("rows_per_s".into(), num(self.rows as f64 / self.secs, 0)),
        ];
        // No worker and no broker in it, and pgbench's backends have gone by the end.
        f.extend(
            self.usage
                .fields(self.rows, "row")
                .into_iter()
                .filter(|(k, _)| {
                    !["worker", "broker", "pg_db"]
                        .iter()
                        .any(|p| k.starts_with(p))
                }),
        );
        f
    }
}

struct Context {
    /// One line on the machine, versions and settings.
    line: String,
    commit: String,
    /// Whether the working tree differs from the commit.
    dirty: bool,
    /// The worker settings set in the environment, as a JSON object.
    settings: Value,
}

pub async fn run(args: &Args, workers: &mut Workers) -> anyhow::Result<()> {
    let target = Target::new(
        &args.database_url,
        &args.amqp_url,
        &args.signup_exchange,
        &args.signup_queue,
    )?;
    target.check_names("bench", args.bench_force, "BENCH_FORCE")?;
    std::fs::create_dir_all(LOG_DIR)?;
    let context = machine(&target.db, &args.rust_log).await?;
    note(&context.line);
    let sampler = Sampler::new(&target.db.name);

    let measured = measure(args, &target, &sampler, &context, workers).await;
    // However it went: no replica left, and no database or queue (the fixed-rate run's own
    // outcome queue is exclusive and went with its connection).
    workers.stop().await;
    let cleaned = target.start_clean(false).await;
    measured?;
    cleaned.context("dropping the benchmark's database and queues")?;
    note(&format!(
        "dropped database {} and queues {}",
        target.db.name,
        target.queues().join(", ")
    ));
    Ok(())
}

async fn measure(
    args: &Args,
    target: &Target,
    sampler: &Sampler,
    context: &Context,
    workers: &mut Workers,
) -> anyhow::Result<()> {
    let mut saturation: Vec<Vec<Saturation>> = Vec::new();
    if args.kinds.saturation {
        for &replicas in &args.replica_counts.0 {
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                let r = saturation_run(target, sampler, workers, args, replicas, run).await?;
                bench_line(context, "saturation", run, r.fields());
                runs.push(r);
            }
            saturation.push(runs);
        }
    }
    let mut fixed = Vec::new();
    if args.kinds.fixed_rate {
        for run in 1..=args.runs {
            let r = fixed_rate_run(target, sampler, workers, args, run).await?;
            bench_line(context, "fixed_rate", run, r.fields());
            fixed.push(r);
        }
    }
    let mut alone = Vec::new();
    if args.kinds.baseline {
        for run in 1..=args.runs {
            let r = baseline(target, sampler, args.n, run).await?;
            bench_line(context, "pg_alone", run, r.fields());
            alone.push(r);
        }
    }
    report(args, context, &saturation, &fixed, &alone);
    Ok(())
}

const SATURATION_HEADERS: [&str; 10] = [
    "replicas",
    "events",
    "signups/s",
    "worker CPU ms/signup",
    "PostgreSQL CPU ms/signup",
    "of it, bench DB backends",
    "broker CPU ms/signup",
    "machine busy %",
    "peak RSS/worker MiB",
    "publish msg/s",
];

const FIXED_HEADERS: [&str; 11] = [
    "offered signups/s",
    "events",
    "p50 ms",
    "p99 ms",
    "max ms",
    "worker CPU ms/signup",
    "PostgreSQL CPU ms/signup",
    "broker CPU ms/signup",
    "machine busy %",
    "of it, xtask %",
    "peak RSS MiB",
];

fn report(
    args: &Args,
    context: &Context,
    saturation: &[Vec<Saturation>],
    fixed: &[FixedRate],
    alone: &[Baseline],
) {
    let mut sat_rows: Vec<Vec<String>> = saturation
        .iter()
        .map(|runs| {
            let first = &runs[0];
            let per_signup = |f: fn(&Usage) -> Option<f64>| {
                cell(
                    runs.iter().map(|r| f(&r.usage).map(|ms| per(ms, r.events))),
                    4,
                )
            };
            vec![
                first.replicas.to_string(),
                first.events.to_string(),
                cell(runs.iter().map(|r| Some(r.events as f64 / r.secs)), 0),
                per_signup(|u| Some(u.worker_ms)),
                per_signup(|u| u.pg_ms),
                per_signup(|u| u.pg_db_ms),
                per_signup(|u| u.broker_ms),
                cell(runs.iter().map(|r| Some(r.usage.machine_busy_pct)), 0),
                cell(runs.iter().map(|r| Some(max_rss(&r.rss))), 1),
                cell(runs.iter().map(|r| Some(r.publish_rate)), 0),
            ]
        })
        .collect();
    if let Some(first) = alone.first() {
        let per_row = |f: fn(&Usage) -> Option<f64>| {
            cell(
                alone.iter().map(|r| f(&r.usage).map(|ms| per(ms, r.rows))),
                4,
            )
        };
        sat_rows.push(vec![
            "PostgreSQL alone".into(),
            first.rows.to_string(),
            cell(alone.iter().map(|r| Some(r.rows as f64 / r.secs)), 0),
            "-".into(),
            per_row(|u| u.pg_ms),
            per_row(|u| u.pg_db_ms),
            "-".into(),
            cell(alone.iter().map(|r| Some(r.usage.machine_busy_pct)), 0),
            "-".into(),
            "-".into(),
        ]);
    }
    let fixed_rows: Vec<Vec<String>> = fixed
        .first()
        .map(|first| {
            let per_signup = |f: fn(&Usage) -> Option<f64>| {
                cell(
                    fixed
                        .iter()
                        .map(|r| f(&r.usage).map(|ms| per(ms, r.events))),
                    4,
                )
            };
            let p = |q: f64| cell(fixed.iter().map(|r| percentile(&r.latencies_ms, q)), 1);
            vec![
                first.rate.to_string(),
                first.events.to_string(),
                p(50.0),
                p(99.0),
                p(100.0),
                per_signup(|u| Some(u.worker_ms)),
                per_signup(|u| u.pg_ms),
                per_signup(|u| u.broker_ms),
                cell(fixed.iter().map(|r| Some(r.usage.machine_busy_pct)), 0),
                cell(fixed.iter().map(|r| Some(r.usage.xtask_busy_pct())), 0),
                cell(fixed.iter().map(|r| Some(max_rss(&r.rss))), 1),
            ]
        })
        .into_iter()
        .collect();

    let runs = match args.runs {
        1 => "1 run".to_owned(),
        n => format!("median of {n} runs (min–max)"),
    };
    section(&format!("Results: {runs}"));
    if !sat_rows.is_empty() {
        print_table(&SATURATION_HEADERS, &sat_rows);
    }
    if !fixed_rows.is_empty() {
        println!();
        print_table(&FIXED_HEADERS, &fixed_rows);
    }

    section("Markdown (for docs/BENCHMARKS.md)");
    println!(
        "Measured {}: {}; {runs}.",
        chrono::Utc::now().format("%Y-%m-%d"),
        context.line
    );
    if !sat_rows.is_empty() {
        println!(
            "\nSaturation: queue pre-loaded with N events before the workers start; time and CPU \
             from worker start until N tenants are stored. CPU in ms per signup; PostgreSQL = \
             all its processes, of which the backends of the bench database.\n"
        );
        print_markdown(&SATURATION_HEADERS, &sat_rows);
        if !alone.is_empty() {
            println!(
                "\nPostgreSQL alone: pgbench, 2 clients, one 100-row `INSERT ... SELECT FROM \
                 generate_series` per transaction into the same `tenants` table (trigger and \
                 unique indexes included); CPU per row."
            );
        }
    }
    if !fixed_rows.is_empty() {
        println!(
            "\nFixed rate: one replica started and idle, then {} events offered at {}/s by \
             the xtask's own publisher; latency from publish to the outcome event's arrival \
             on the xtask's own queue; CPU from the first publish to the last outcome.\n",
            args.rate as u64 * args.rate_secs,
            args.rate
        );
        print_markdown(&FIXED_HEADERS, &fixed_rows);
    }
}

/// The machine, the versions and the settings, printed with the figures.
async fn machine(db: &Database, rust_log: &str) -> anyhow::Result<Context> {
    let cpu = proc_value("/proc/cpuinfo", "model name");
    let mem_kib: f64 = proc_value("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let pg = db.server_version().await?;
    let rabbit = output("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]).await;
    let commit = output("git", &["rev-parse", "--short", "HEAD"])
        .await
        .unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain"])
        .await
        .is_some_and(|s| !s.is_empty());
    let mut settings = format!("RUST_LOG={rust_log}");
    let mut json = serde_json::Map::new();
    for var in SETTINGS {
        if let Ok(value) = std::env::var(var) {
            settings += &format!(", {var}={value}");
            json.insert(var.into(), value.into());
        }
    }
    let changes = if dirty { " (uncommitted changes)" } else { "" };
    let line = format!(
        "{} CPUs ({}), {:.0} GiB RAM, PostgreSQL {pg}, RabbitMQ {}, all on one machine; commit {commit}{changes}; {settings} (other settings default)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu.as_deref().unwrap_or("unknown"),
        mem_kib / 1_048_576.0,
        rabbit.as_deref().unwrap_or("unknown"),
    );
    Ok(Context {
        line,
        commit,
        dirty,
        settings: Value::Object(json),
    })
}

/// A command's trimmed standard output, if it succeeds.
async fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Fresh database and queues, migrated with [`CAPACITY`]; the migration's output goes to a log.
async fn fresh(target: &Target) -> anyhow::Result<()> {
    target.start_clean(false).await?;
    let out = target
        .command()
        .args(["migrate", "--founding-capacity", CAPACITY])
        .output()
        .await?;
    let log = format!("{LOG_DIR}/migrate.log");
    std::fs::write(&log, [out.stdout, out.stderr].concat())?;
    ensure!(out.status.success(), "migrate failed, see {log}");
    Ok(())
}

/// `signup-worker run --no-migrate` replicas on ports from [`FIRST_PORT`], logs in [`LOG_DIR`].
fn start_replicas(
    target: &Target,
    workers: &mut Workers,
    args: &Args,
    count: u16,
    log_prefix: &str,
) -> anyhow::Result<Vec<u32>> {
    for i in 1..=count {
        let mut cmd = target.command();
        cmd.env("RUST_LOG", &args.rust_log)
            .args(["run", "--no-migrate"]);
        let log = PathBuf::from(format!("{LOG_DIR}/{log_prefix}-worker-{i}.log"));
        workers.start(cmd, FIRST_PORT + i - 1, log)?;
    }
    Ok(workers.pids())
}

async fn saturation_run(
    target: &Target,
    sampler: &Sampler,
    workers: &mut Workers,
    args: &Args,
    replicas: u16,
    run: u32,
) -> anyhow::Result<Saturation> {
    let n = args.n;
    section(&format!(
        "Saturation: {replicas} replica(s), {n} events, run {run} of {}",
        args.runs
    ));
    fresh(target).await?;
    note(&format!("pre-loading {n} events (no worker running)"));
    let started = Instant::now();
    let published = target
        .command()
        .args(["publish", "--count", &n.to_string()])
        .status()
        .await?;
    let publish_secs = started.elapsed().as_secs_f64();
    ensure!(published.success(), "publish failed");
    let publish_rate = n as f64 / publish_secs;
    let depth = target
        .depths()
        .await
        .map_or("?".into(), |d| d.main.to_string());
    note(&format!(
        "published in {publish_secs:.2}s ({publish_rate:.0} msg/s); main queue depth: {depth}"
    ));

    let db = target.db.connect().await?;
    let window = sampler.open(&[]);
    let started = Instant::now();
    let pids = start_replicas(target, workers, args, replicas, &format!("r{replicas}"))?;
    let shown: Vec<String> = pids.iter().map(u32::to_string).collect();
    note(&format!(
        "started {replicas} worker(s): {}; waiting for {n} tenants (up to {}s)",
        shown.join(" "),
        args.bench_timeout
    ));
    let pollers = wait_for_tenants(&db, workers, n, started, args.bench_timeout).await?;
    let secs = started.elapsed().as_secs_f64();
    let usage = window.close(sampler, &pids, &pollers);
    let rss = workers.peak_rss_mib();
    db.close().await?;
    let shown: Vec<String> = rss.iter().map(|m| format!("{m:.1}")).collect();
    note(&format!(
        "{n} tenants in {secs:.2}s: {:.0} signups/s; worker CPU {:.4} ms/signup; peak RSS per worker: {} MiB",
        n as f64 / secs,
        per(usage.worker_ms, n),
        shown.join(" / ")
    ));
    workers.stop().await;
    Ok(Saturation {
        replicas,
        events: n,
        secs,
        publish_rate,
        usage,
        rss,
    })
}

/// Polls the count of tenants until it reaches `n`: every [`POLL`] at first, then, as the end
/// nears, after half the time the remaining tenants should take at the rate so far (at least
/// 10 ms), so that the window closes close to the last row without a `count(*)` every few
/// milliseconds for the whole run. Returns the pids of the backends that served the polls, to leave them out of the PostgreSQL figure.
async fn wait_for_tenants(
    db: &DatabaseConnection,
    workers: &mut Workers,
    n: u64,
    started: Instant,
    timeout_secs: u64,
) -> anyhow::Result<HashSet<u32>> {
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut pollers = HashSet::new();
    let mut reported = Instant::now();
    loop {
        let (stored, pid) = count_tenants(db).await.unwrap_or((0, 0));
        pollers.insert(pid);
        if stored >= n {
            return Ok(pollers);
        }
        workers.check_running()?;
        if Instant::now() >= deadline {
            bail!("only {stored} of {n} tenants after {timeout_secs}s");
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            note(&format!("{stored} / {n} tenants"));
            reported = Instant::now();
        }
        let wait = if stored > 0 {
            started
                .elapsed()
                .mul_f64((n - stored) as f64 / stored as f64 / 2.0)
        } else {
            POLL
        };
        tokio::time::sleep(wait.clamp(Duration::from_millis(10), POLL)).await;
    }
}

/// The number of tenants, and the pid of the backend that counted them.
async fn count_tenants(db: &DatabaseConnection) -> anyhow::Result<(u64, u32)> {
    let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT count(*) AS n, pg_backend_pid() AS pid FROM {TENANTS}"),
        ))
        .await?
        .context("count(*) returned no row")?;
    let n: i64 = row.try_get("", "n")?;
    let pid: i32 = row.try_get("", "pid")?;
    Ok((n.try_into()?, pid.try_into()?))
}

async fn fixed_rate_run(
    target: &Target,
    sampler: &Sampler,
    workers: &mut Workers,
    args: &Args,
    run: u32,
) -> anyhow::Result<FixedRate> {
    let (rate, count) = (args.rate, u64::from(args.rate) * args.rate_secs);
    section(&format!(
        "Fixed rate: {rate} signups/s for {}s, 1 replica, run {run} of {}",
        args.rate_secs, args.runs
    ));
    fresh(target).await?;
    let pids = start_replicas(target, workers, args, 1, "rate")?;
    workers
        .wait_ready(READY_TIMEOUT, |_, w| {
            note(&format!(
                "worker pid {} ready on 127.0.0.1:{}",
                w.pid, w.port
            ))
        })
        .await?;
    settle(pids[0]).await;

    let conn = target.amqp().await?;
    let measured = async {
        let mut listener = Listener::bind(&conn, &target.exchange).await?;
        note(&format!(
            "publishing {count} events at {rate}/s; outcomes on an exclusive queue bound to {}",
            target.exchange
        ));
        let window = sampler.open(&pids);
        let sent = crate::fixed_rate::publish(&conn, &target.exchange, rate, count).await?;
        note(&format!(
            "published {count} in {:.2}s ({:.0}/s, at worst {:.1} ms behind schedule); waiting for the outcomes (up to {}s)",
            sent.secs,
            count as f64 / sent.secs,
            sent.max_lag_ms,
            args.outcome_timeout
        ));
        let timeout = Duration::from_secs(args.outcome_timeout);
        let outcomes = listener
            .wait_for(&sent, timeout, || workers.check_running())
            .await?;
        let usage = window.close(sampler, &pids, &HashSet::new());
        listener.close().await;
        anyhow::Ok((sent, outcomes, usage))
    }
    .await;
    let _ = conn.close(200, "bench done".into()).await;
    let (sent, outcomes, usage) = measured?;
    let rss = workers.peak_rss_mib();
    workers.stop().await;
    let p = |q: f64| percentile(&outcomes.latencies_ms, q).unwrap_or(f64::NAN);
    note(&format!(
        "{} outcomes ({} completed, {} rejected): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; worker CPU {:.4} ms/signup; machine {:.0}% busy",
        outcomes.received,
        outcomes.completed,
        outcomes.rejected,
        p(50.0),
        p(99.0),
        p(100.0),
        per(usage.worker_ms, count),
        usage.machine_busy_pct
    ));
    Ok(FixedRate {
        rate,
        events: count,
        publish_secs: sent.secs,
        max_lag_ms: sent.max_lag_ms,
        received: outcomes.received,
        completed: outcomes.completed,
        rejected: outcomes.rejected,
        latencies_ms: outcomes.latencies_ms,
        usage,
        rss,
    })
}

/// Waits until the replica has stopped spending CPU (no tick over [`POLL`]) after its start,
/// for up to [`SETTLE_TIMEOUT`]; says so if it never does.
async fn settle(pid: u32) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let ticks = || crate::cpu::process_ticks(pid).map_or(0, |(t, _)| t);
    let mut before = ticks();
    while Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let now = ticks();
        if now == before {
            return;
        }
        before = now;
    }
    note(&format!(
        "the replica still spends CPU {}s after it became ready; measuring anyway",
        SETTLE_TIMEOUT.as_secs()
    ));
}

async fn baseline(
    target: &Target,
    sampler: &Sampler,
    n: u64,
    run: u32,
) -> anyhow::Result<Baseline> {
    section(&format!(
        "Baseline: PostgreSQL alone, 100-row INSERTs through the same trigger (pgbench, 2 clients), run {run}"
    ));
    fresh(target).await?;
    let per_client = n.div_ceil(200).to_string();
    let window = sampler.open(&[]);
    let started = Instant::now();
    let out = pgbench(&target.db, &["-c", "2", "-j", "2", "-t", &per_client]).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut usage = window.close(sampler, &[], &HashSet::new());
    // pgbench's backends ended with it: they count in the PostgreSQL figure through the
    // postmaster, but the bench database's figure only sees the backends still there.
    usage.pg_db_ms = None;
    let db = target.db.connect().await?;
    let rows = u64::try_from(Database::tenant_count(&db).await?)?;
    db.close().await?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next())
        .unwrap_or("?");
    note(&format!(
        "{rows} rows in {secs:.2}s wall: {:.0} rows/s (pgbench: {tps} transactions/s of 100 rows)",
        rows as f64 / secs
    ));
    Ok(Baseline { rows, secs, usage })
}

/// Runs pgbench with [`insert_100`] as its script on `db`; returns its output.
pub async fn pgbench(db: &Database, args: &[&str]) -> anyhow::Result<String> {
    let script = format!("{LOG_DIR}/insert-100.sql");
    std::fs::create_dir_all(LOG_DIR)?;
    std::fs::write(&script, insert_100())?;
    let out = Command::new(find_pgbench()?)
        .arg("-n")
        .args(args)
        .args(["-f", &script, &db.url])
        .output()
        .await
        .context("running pgbench")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "pgbench failed:\n{text}");
    Ok(text)
}

/// pgbench from PATH, else from the newest PostgreSQL server package.
fn find_pgbench() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let packaged = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.parse::<u32>().ok()?,
                e.path().join("bin/pgbench"),
            ))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .rev();
    on_path
        .chain(packaged)
        .find(|p| p.is_file())
        .context("pgbench not found (it ships with the PostgreSQL server package, postgresql-15 on Debian 12)")
}
