//! Developer tasks that read better in Rust than in bash: the end-to-end demo and the
//! benchmarks. `scripts/demo.sh`, `scripts/bench.sh` and `scripts/bench-numbering.sh` make sure
//! PostgreSQL and RabbitMQ run, build the workspace, and run these; by hand:
//!
//! ```sh
//! cargo build --release && cargo run --release -p xtask -- demo --help
//! ```
//!
//! # Layout
//!
//! - [`target`]: the database and queues a task works on, started clean, and `status --json`.
//! - [`workers`]: `signup-worker run` replicas as child processes, their `/readyz` and
//!   `/metrics`, and stopping them with SIGTERM.
//! - [`cpu`]: CPU time of the replicas, PostgreSQL, the broker and the machine, from `/proc`.
//! - [`fixed_rate`]: the benchmark's fixed-rate publisher and its outcome listener.
//! - [`table`]: medians and ranges over runs, as plain and markdown tables.
//! - [`demo`], [`bench`], [`numbering`]: the tasks.
//!
//! The tasks drive `target/release/signup-worker` through its command line (`migrate`, `run`,
//! `publish`, `status --json`) and link none of its code: they show and measure the binary as
//! shipped. They take the schema's names from the migration crate.

mod bench;
mod cpu;
mod demo;
mod fixed_rate;
mod numbering;
mod table;
mod target;
mod ui;
mod workers;

use std::process::ExitCode;

use anyhow::{ensure, Context as _};
use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::target::BIN;
use crate::ui::{section, show};
use crate::workers::Workers;

/// The broker of the worker's own default (contract section 2).
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
#[command(
    about = "signup-worker's developer tasks (run by scripts/demo.sh, scripts/bench.sh, scripts/bench-numbering.sh)"
)]
enum Task {
    /// The main job end to end: clean demo setup, replicas, a mixed load, a summary
    Demo(demo::Args),
    /// Throughput and CPU per signup of 1 and 2 replicas from a full queue, latency at a fixed
    /// rate, and PostgreSQL alone
    Bench(bench::Args),
    /// The numbering trigger's cost per row, PostgreSQL alone
    BenchNumbering(numbering::Args),
}

/// How a task ended, when it did not fail.
pub enum Done {
    Finished,
    /// The demo's KEEP_RUNNING: the replicas stay up until Ctrl-C.
    KeepRunning,
}

// One thread for the load generator, like the worker: its own CPU is part of the machine's
// busy figure, and thread hand-offs were most of it.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let task = Task::parse();
    let mut stop = match Stop::listen() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The replicas belong here, not to the task: however the task ends (done, failed, Ctrl-C
    // or SIGTERM), they are stopped the same way and each exit is reported.
    let mut workers = Workers::default();
    let ended = tokio::select! {
        result = run(&task, &mut workers) => Some(result),
        () = stop.requested() => None,
    };
    let code = match ended {
        Some(Ok(Done::Finished)) => ExitCode::SUCCESS,
        Some(Ok(Done::KeepRunning)) => {
            section("Workers keep running (KEEP_RUNNING=1): press Ctrl-C to stop them");
            stop.requested().await;
            println!();
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            workers.print_log_tails();
            eprintln!("\nERROR: {e:#}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("\ninterrupted");
            ExitCode::from(130)
        }
    };
    if !workers.is_empty() {
        if matches!(task, Task::Demo(_)) {
            section("Stopping the workers (SIGTERM)");
        }
        workers.stop().await;
    }
    code
}

async fn run(task: &Task, workers: &mut Workers) -> anyhow::Result<Done> {
    // Paths (the binary, logs) are relative to the workspace root, wherever cargo started.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .context("entering the workspace root")?;
    ensure!(
        std::path::Path::new(BIN).is_file(),
        "{BIN} is missing: build it first with `cargo build --release`"
    );
    match task {
        Task::Demo(args) => demo::run(args, workers).await,
        Task::Bench(args) => bench::run(args, workers).await.map(|()| Done::Finished),
        Task::BenchNumbering(args) => numbering::run(args).await.map(|()| Done::Finished),
    }
}

/// Runs `cmd` after echoing it, its output going to ours; fails unless it exits 0.
pub async fn run_shown(cmd: &mut tokio::process::Command) -> anyhow::Result<()> {
    let line: Vec<String> = std::iter::once(cmd.as_std().get_program())
        .chain(cmd.as_std().get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = line.join(" ");
    show(&line);
    let status = cmd
        .status()
        .await
        .with_context(|| format!("starting {line}"))?;
    ensure!(status.success(), "`{line}` failed ({status})");
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, listened to from the start so that neither kills the task
/// before it has stopped its replicas.
struct Stop {
    int: Signal,
    term: Signal,
}

impl Stop {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn requested(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
