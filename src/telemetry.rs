//! Tracing setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`. Logs go
//! to stderr so that `status --json` keeps stdout for its own output.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    // The defaults quiet two chatty dependencies: PostgreSQL NOTICEs relayed by sqlx ("relation
    // already exists, skipping" on every idempotent migration run) and lapin's own error line
    // for a channel it closes during a normal shutdown. RUST_LOG overrides all of it.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: tests may initialise more than once in one process.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
