//! The `signup-worker` binary: parse the command line, set up logging, run, report.
use std::process::ExitCode;

use clap::Parser;
use signup_worker::{app, cli::Cli, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the spans not exported yet.
    let _telemetry = telemetry::init(cli.global.log_format);
    // One thread for the whole service: the pipeline, sqlx and the Tokio I/O driver share it,
    // and lapin adds its own I/O thread. With the multi-thread runtime the pipeline ran on this
    // thread (block_on) while each store attempt, and the driver, ran on a worker thread, so
    // every batch crossed threads several times: at saturation one thread cut the worker's CPU
    // per signup by a quarter to a half and raised throughput (docs/BENCHMARKS.md). The worker
    // needs well under one core at the broker's and PostgreSQL's pace.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
