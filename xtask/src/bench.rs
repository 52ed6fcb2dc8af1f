//! `xtask bench`, what `scripts/bench.sh` runs: how fast do 1 and 2 replicas turn a full queue
//! into tenants, and how fast does PostgreSQL alone insert the same rows?
//!
//! For each replica count: a fresh database and fresh queues, N events pre-loaded while no
//! worker runs (publishing is timed too, separately), then the replicas start and the clock
//! runs until N tenants are stored. Peak RSS per worker is `VmHWM`. The baseline is pgbench
//! inserting 100 rows per transaction through the same trigger. Results are printed as a
//! table and as markdown for docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::builder::BoolishValueParser;
use tokio::process::Command;

use migration::schema::TENANTS;

use crate::target::{Database, Target};
use crate::ui::{note, section};
use crate::workers::{proc_value, Workers, POLL};

#[derive(clap::Args)]
pub struct Args {
    /// Events per run
    #[arg(long, env = "N", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Replica counts to measure, separated by spaces
    #[arg(long, env = "REPLICA_COUNTS", default_value = "1 2", value_parser = replica_counts)]
    replica_counts: ReplicaCounts,
    /// Seconds allowed for one run to store N tenants
    #[arg(long, env = "BENCH_TIMEOUT", default_value_t = 600)]
    bench_timeout: u64,
    /// The benchmark's database: dropped, then created by `migrate`
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
    /// The queue the replicas consume; it and its .retry and .dlq are deleted first
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

/// One pgbench transaction: 100 valid, non-demo tenants, through the numbering trigger.
fn insert_100() -> String {
    format!(
        "INSERT INTO {TENANTS} (event_id, slug, business_name, owner_email, tier, is_demo)
         SELECT gen_random_uuid(), 'bench-' || replace(gen_random_uuid()::text, '-', ''),
                'Bench Business ' || g, 'owner' || g || '@bench.example', 'starter', false
         FROM generate_series(1, 100) AS g;\n"
    )
}

struct Row {
    replicas: String,
    events: i64,
    secs: f64,
    peak_rss: String,
    publish_rate: String,
}

impl Row {
    fn cells(&self) -> [String; 6] {
        [
            self.replicas.clone(),
            self.events.to_string(),
            format!("{:.2}", self.secs),
            rate(self.events, self.secs),
            self.peak_rss.clone(),
            self.publish_rate.clone(),
        ]
    }
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
    note(&context);

    let mut rows = Vec::new();
    for &replicas in &args.replica_counts.0 {
        rows.push(replicas_run(&target, workers, args, replicas).await?);
    }
    rows.push(baseline(&target, args.n).await?);

    section("Results");
    let plain = |c: &[String; 6]| {
        let [a, b, c, d, e, f] = c;
        println!("{a:<18} {b:>8} {c:>9} {d:>11} {e:>26} {f:>14}");
    };
    plain(
        &[
            "replicas",
            "events",
            "seconds",
            "signups/s",
            "peak RSS/worker (MiB)",
            "publish msg/s",
        ]
        .map(String::from),
    );
    rows.iter().for_each(|r| plain(&r.cells()));

    section("Markdown (for docs/BENCHMARKS.md)");
    println!(
        "Measured {}: {context}. Queue pre-loaded with N events before the workers start; \
         time from worker start until N tenants are stored.\n",
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!("| replicas | events | seconds | signups/s | peak RSS per worker (MiB) | publish rate (msg/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    rows.iter()
        .for_each(|r| println!("| {} |", r.cells().join(" | ")));
    println!(
        "\nPostgreSQL alone: pgbench, 2 clients, one 100-row `INSERT ... SELECT FROM \
         generate_series` per transaction into the same `tenants` table (trigger and unique \
         indexes included)."
    );
    Ok(())
}

fn rate(count: i64, secs: f64) -> String {
    if secs > 0.0 {
        format!("{:.0}", count as f64 / secs)
    } else {
        "-".into()
    }
}

/// One line on the machine, the versions and the settings, printed with the figures.
async fn machine(db: &Database, rust_log: &str) -> anyhow::Result<String> {
    let cpu = proc_value("/proc/cpuinfo", "model name");
    let mem_kib: f64 = proc_value("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let pg = db.server_version().await?;
    let rabbit = output("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]).await;
    let mut commit = output("git", &["rev-parse", "--short", "HEAD"])
        .await
        .unwrap_or_else(|| "unknown".into());
    if output("git", &["status", "--porcelain"])
        .await
        .is_some_and(|s| !s.is_empty())
    {
        commit += " (uncommitted changes)";
    }
    let mut settings = format!("RUST_LOG={rust_log}");
    for var in SETTINGS {
        if let Ok(value) = std::env::var(var) {
            settings += &format!(", {var}={value}");
        }
    }
    Ok(format!(
        "{} CPUs ({}), {:.0} GiB RAM, PostgreSQL {pg}, RabbitMQ {}, all on one machine; commit {commit}; {settings} (other settings default)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu.as_deref().unwrap_or("unknown"),
        mem_kib / 1_048_576.0,
        rabbit.as_deref().unwrap_or("unknown"),
    ))
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

async fn replicas_run(
    target: &Target,
    workers: &mut Workers,
    args: &Args,
    replicas: u16,
) -> anyhow::Result<Row> {
    let n = args.n;
    section(&format!("{replicas} replica(s), {n} events"));
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
    let publish_rate = rate(n as i64, publish_secs);
    let depth = target
        .depths()
        .await
        .map_or("?".into(), |d| d.main.to_string());
    note(&format!(
        "published in {publish_secs:.2}s ({publish_rate} msg/s); main queue depth: {depth}"
    ));

    let db = target.db.connect().await?;
    let started = Instant::now();
    for i in 1..=replicas {
        let mut cmd = target.command();
        cmd.env("RUST_LOG", &args.rust_log)
            .args(["run", "--no-migrate"]);
        let log = PathBuf::from(format!("{LOG_DIR}/r{replicas}-worker-{i}.log"));
        workers.start(cmd, FIRST_PORT + i - 1, log)?;
    }
    let pids: Vec<String> = workers.pids().iter().map(u32::to_string).collect();
    note(&format!(
        "started {replicas} worker(s): {}; waiting for {n} tenants (up to {}s)",
        pids.join(" "),
        args.bench_timeout
    ));
    let deadline = started + Duration::from_secs(args.bench_timeout);
    let mut reported = Instant::now();
    loop {
        let stored = Database::tenant_count(&db).await.unwrap_or(0);
        if stored >= n as i64 {
            break;
        }
        workers.check_running()?;
        if Instant::now() >= deadline {
            bail!("only {stored} of {n} tenants after {}s", args.bench_timeout);
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            note(&format!("{stored} / {n} tenants"));
            reported = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    let secs = started.elapsed().as_secs_f64();
    db.close().await?;
    let rss: Vec<String> = workers
        .peak_rss_mib()
        .iter()
        .map(|m| format!("{m:.1}"))
        .collect();
    let peak_rss = rss.join(" / ");
    note(&format!(
        "{n} tenants in {secs:.2}s: {} signups/s; peak RSS per worker: {peak_rss} MiB",
        rate(n as i64, secs)
    ));
    workers.stop().await;
    Ok(Row {
        replicas: replicas.to_string(),
        events: n as i64,
        secs,
        peak_rss,
        publish_rate,
    })
}

async fn baseline(target: &Target, n: u64) -> anyhow::Result<Row> {
    section(
        "Baseline: PostgreSQL alone, 100-row INSERTs through the same trigger (pgbench, 2 clients)",
    );
    fresh(target).await?;
    let per_client = n.div_ceil(200).to_string();
    let started = Instant::now();
    let out = pgbench(&target.db, &["-c", "2", "-j", "2", "-t", &per_client]).await?;
    let secs = started.elapsed().as_secs_f64();
    let db = target.db.connect().await?;
    let rows = Database::tenant_count(&db).await?;
    db.close().await?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next())
        .unwrap_or("?");
    note(&format!(
        "{rows} rows in {secs:.2}s wall: {} rows/s (pgbench: {tps} transactions/s of 100 rows)",
        rate(rows, secs)
    ));
    Ok(Row {
        replicas: "PostgreSQL alone".into(),
        events: rows,
        secs,
        peak_rss: "-".into(),
        publish_rate: "-".into(),
    })
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
