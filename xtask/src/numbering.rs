//! `xtask bench-numbering`, what `scripts/bench-numbering.sh` runs: the numbering trigger's
//! cost per row, PostgreSQL alone. 100-row INSERTs (pgbench, one client) into `tenants` with
//!   - no trigger at all (the floor),
//!   - the numbering as it was before reclaiming existed (the schema of migration 3: the
//!     sequence only),
//!   - the current numbering (numbering lock, pool lookup, then the sequence), pool empty.
//!
//! Each variant runs `ROUNDS` times, interleaved, on an emptied table; the task prints the
//! median of each and the numbering cost per row (variant minus floor).

use std::time::Instant;

use anyhow::Context as _;

use migration::schema::{FOUNDING_SEQUENCE, TENANTS};
use migration::{Migrator, MigratorTrait as _};
use sea_orm::{ConnectionTrait as _, DatabaseConnection};

use crate::bench::pgbench;
use crate::target::{Database, BIN};

#[derive(clap::Args)]
pub struct Args {
    /// Rows per variant and round (pgbench runs ROWS / 100 transactions)
    #[arg(long, env = "ROWS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    rows: u64,
    /// Rounds; each variant's median is reported
    #[arg(long, env = "ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// The PostgreSQL server; the database signup_worker_bench_numbering is made and dropped there
    #[arg(
        long,
        env = "PG_SERVER",
        default_value = "postgres://postgres@127.0.0.1:5432",
        hide_env_values = true
    )]
    pg_server: String,
}

const DATABASE: &str = "signup_worker_bench_numbering";
/// The last migration before reclaiming existed: numbering was the sequence alone.
const BEFORE_RECLAIM: &str = "m20261124_000003_signup_locks";
/// Every inserted row draws a number.
const CAPACITY: &str = "100000000";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    NoTrigger,
    BeforeReclaim,
    Current,
}

const VARIANTS: [(Variant, &str); 3] = [
    (Variant::NoTrigger, "no numbering trigger"),
    (
        Variant::BeforeReclaim,
        "numbering before reclaiming (migration 2)",
    ),
    (Variant::Current, "numbering with pool and lock, empty pool"),
];

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let mut url = url::Url::parse(&args.pg_server).context("PG_SERVER is not a URL")?;
    url.set_path(DATABASE);
    let db = Database::new(url.as_str())?;
    db.drop_database(false).await?;
    let out = tokio::process::Command::new(BIN)
        .args(["migrate", "--founding-capacity", CAPACITY])
        .env("DATABASE_URL", &db.url)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = db.connect().await?;
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let back = names
        .iter()
        .rev()
        .position(|n| n == BEFORE_RECLAIM)
        .context("the migration before reclaiming is gone")?;
    let back = u32::try_from(back)?;

    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..args.rounds {
        for (i, (variant, _)) in VARIANTS.iter().enumerate() {
            samples[i].push(measure(&db, &conn, *variant, args.rows, back).await?);
        }
    }
    conn.close().await?;
    db.drop_database(false).await?;

    let [none, before, current] = samples.map(median);
    println!(
        "microseconds per inserted row, median of {} rounds of {} rows (one client):",
        args.rounds, args.rows
    );
    for ((_, label), value) in VARIANTS.iter().zip([none, before, current]) {
        println!("  {label:<44} {value:>8.3}");
    }
    let (was, now) = (before - none, current - none);
    println!(
        "numbering cost per row: before {was:.2} us, now {now:.2} us ({:+.0}%)",
        (now / was - 1.0) * 100.0
    );
    Ok(())
}

/// Microseconds per row of one pgbench run of `variant`, on an emptied table and sequence.
/// `back` is how many migrations to roll back to [`BEFORE_RECLAIM`].
async fn measure(
    db: &Database,
    conn: &DatabaseConnection,
    variant: Variant,
    rows: u64,
    back: u32,
) -> anyhow::Result<f64> {
    // Emptied before reclaiming, when there was no pool and no retire trigger (emptying the
    // table later would retire its numbers), then migrated up again unless the variant wants
    // the numbering of that time. Migrating up again starts with an empty pool.
    Migrator::down(conn, Some(back)).await?;
    conn.execute_unprepared(&format!(
        "TRUNCATE {TENANTS} RESTART IDENTITY; ALTER SEQUENCE {FOUNDING_SEQUENCE} RESTART WITH 1"
    ))
    .await?;
    if variant != Variant::BeforeReclaim {
        Migrator::up(conn, None).await?;
    }
    let triggers = |on: &str| format!("ALTER TABLE {TENANTS} {on} TRIGGER USER");
    if variant == Variant::NoTrigger {
        conn.execute_unprepared(&triggers("DISABLE")).await?;
    }
    conn.execute_unprepared(&format!("VACUUM ANALYZE {TENANTS}"))
        .await?;
    let started = Instant::now();
    pgbench(db, &["-c", "1", "-t", &(rows / 100).to_string()]).await?;
    let micros = started.elapsed().as_secs_f64() * 1e6 / rows as f64;
    match variant {
        Variant::NoTrigger => conn
            .execute_unprepared(&triggers("ENABLE"))
            .await
            .map(drop)?,
        Variant::BeforeReclaim => Migrator::up(conn, None).await?,
        Variant::Current => {}
    }
    Ok(micros)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[(samples.len() - 1) / 2]
}
