//! The `signup-worker` binary: parse the command line, set up logging, run, report.
use std::process::ExitCode;

use clap::Parser;
use signup_worker::{app, cli::Cli, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the spans not exported yet.
    let _telemetry = telemetry::init(cli.global.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
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
