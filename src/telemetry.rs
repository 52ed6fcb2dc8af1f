//! Tracing setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`. Logs go
//! to stderr so that `status --json` keeps stdout for its own output.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::cli::LogFormat;

/// Targets whose DEBUG and TRACE output can carry credentials: lapin traces every frame it
/// sends, and the connection's Start-Ok frame holds the SASL response, i.e. the broker
/// password (`LongString([0, 103, 117, ...])`). They are capped at INFO whatever `RUST_LOG`
/// says, because "no level ever prints a password" (contract section 2) must not depend on an
/// operator knowing which targets are dangerous. Matched as prefixes: `amq_protocol` also
/// covers `amq_protocol_tcp`, `amq_protocol_uri`...
const CREDENTIAL_TARGETS: [&str; 2] = ["lapin::", "amq_protocol"];

/// True for an event or span (of this target and level) that may be recorded at all.
fn may_record(target: &str, level: Level) -> bool {
    let dangerous = target == "lapin" || CREDENTIAL_TARGETS.iter().any(|t| target.starts_with(t));
    !dangerous || level <= Level::INFO
}

pub fn init(format: LogFormat) {
    // The defaults quiet two chatty dependencies: PostgreSQL NOTICEs relayed by sqlx ("relation
    // already exists, skipping" on every idempotent migration run) and lapin's own error line
    // for a channel it closes during a normal shutdown. RUST_LOG overrides all of it (within
    // the credential cap above).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn,lapin=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let layer = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // try_init: tests may initialise more than once in one process.
    let _ = tracing_subscriber::registry()
        .with(
            layer
                .with_filter(filter)
                .with_filter(filter_fn(|meta: &Metadata<'_>| {
                    may_record(meta.target(), *meta.level())
                })),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_targets_are_capped_at_info() {
        assert!(!may_record("lapin::channels", Level::TRACE));
        assert!(!may_record("lapin", Level::DEBUG));
        assert!(!may_record("amq_protocol_tcp", Level::TRACE));
        assert!(!may_record("amq_protocol::frame", Level::TRACE));
        assert!(may_record("lapin::channel", Level::WARN));
        assert!(may_record("lapinator", Level::TRACE));
        assert!(may_record("signup_worker::worker", Level::TRACE));
    }
}
