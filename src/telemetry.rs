//! Tracing setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`. Logs go
//! to stderr so that `status --json` keeps stdout for its own output.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the
//! process's own spans are also exported over OTLP/HTTP with protobuf (contract section 2): a
//! second layer hands them to the OpenTelemetry SDK, whose batch processor sends them from a
//! thread of its own. The SDK reads its standard variables itself (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`...). Unset, or with `OTEL_SDK_DISABLED=true`, there is
//! no such layer, no exporter and no thread: nothing changes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Key;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::{info, warn, Level, Metadata};
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

/// The service name of exported spans when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
const SERVICE_NAME: &str = "signup-worker";

/// While exports keep failing (collector down), at most one warning per this interval: the
/// worker goes on regardless, and its logs must not fill up with the same line.
const EXPORT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Whether [`init`] installed the OTLP layer; read on the hot path (see [`exporting`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True for an event or span (of this target and level) that may be recorded at all.
fn may_record(target: &str, level: Level) -> bool {
    let dangerous = target == "lapin" || CREDENTIAL_TARGETS.iter().any(|t| target.starts_with(t));
    !dangerous || level <= Level::INFO
}

/// What is exported: this crate's spans (and their INFO and higher events, as span events).
/// Dependencies' spans (lapin, sqlx, the HTTP client of the exporter itself) are not: they
/// would cost more than they tell, and the exporter's would feed back into itself.
fn may_export(target: &str, level: Level) -> bool {
    let ours = target == "signup_worker" || target.starts_with("signup_worker::");
    ours && level <= Level::INFO && may_record(target, level)
}

/// Whether spans are exported: `OTEL_EXPORTER_OTLP_ENDPOINT` or its traces-only variant is
/// set and not empty, and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`
/// turns the SDK off (the specification's switches, which the Rust SDK leaves to us). `var`
/// reads the environment.
fn export_wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let is =
        |name: &str, value: &str| var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// Why the configured export cannot work with this build, if it cannot: it speaks OTLP over
/// plain HTTP with protobuf only (see `otlp_provider`). Said once at start, in words, instead
/// of a "network error" on every export.
fn unsupported_export(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let first = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
    };
    let endpoint = first([
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ])
    .unwrap_or_default();
    if !endpoint.trim().to_ascii_lowercase().starts_with("http://") {
        return Some(format!(
            "endpoint {endpoint} is not http://: this build exports over plain HTTP only (use a \
             collector or agent beside the worker for TLS)"
        ));
    }
    match first([
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]) {
        Some(p) if p.trim() != "http/protobuf" => Some(format!(
            "protocol {p} is not supported: this build speaks http/protobuf only"
        )),
        _ => None,
    }
}

/// True when spans are exported over OTLP. Callers use it to skip OpenTelemetry work (a remote
/// parent context per event) that would be thrown away without the layer.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Returned by [`init`]; dropping it flushes the spans not exported yet (at most the SDK's
/// 5 s shutdown timeout, so a collector that is down cannot hold up an exit). `main` keeps it
/// until the command has finished.
#[must_use = "dropping the guard stops the export of spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(error) = provider.shutdown() {
            warn!(%error, "could not flush the last spans to the OTLP endpoint");
        }
    }
}

pub fn init(format: LogFormat) -> Telemetry {
    // The defaults quiet two chatty dependencies: PostgreSQL NOTICEs relayed by sqlx ("relation
    // already exists, skipping" on every idempotent migration run) and lapin, whose ERROR lines
    // repeat what our own line says with the same cause (a node stopping: "Connection reset by
    // peer" and CONNECTION_FORCED next to the worker's WARN; `dlq list` on a DLQ not declared
    // yet: NOT_FOUND before its "0 dead letters"), and would break the one-error-line rule of
    // the one-shot commands. Every lapin error reaches us as a `Result` and is reported there.
    // RUST_LOG overrides all of it (within the credential cap above).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn,lapin=off"));
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
    let env = |name: &str| std::env::var(name).ok();
    let (provider, build_error) = if export_wanted(env) {
        match unsupported_export(env) {
            Some(problem) => (None, Some(problem)),
            None => match otlp_provider() {
                Ok(provider) => (Some(provider), None),
                Err(error) => (None, Some(error.to_string())),
            },
        }
    } else {
        (None, None)
    };
    // The export layer has its own filter, not RUST_LOG's: quieter logs must not thin out
    // the traces. The credential cap applies to it all the same.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("signup-worker"))
            .with_filter(filter_fn(|meta: &Metadata<'_>| {
                may_export(meta.target(), *meta.level())
            }))
    });
    // try_init: tests may initialise more than once in one process.
    let installed = tracing_subscriber::registry()
        .with(
            layer
                .with_filter(filter)
                .with_filter(filter_fn(|meta: &Metadata<'_>| {
                    may_record(meta.target(), *meta.level())
                })),
        )
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(error) = build_error {
        // Observability must not take the worker down: it runs, without traces.
        warn!(%error, "OTLP export of spans is configured but cannot start; spans are not exported");
    }
    let provider = provider.filter(|_| installed);
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Telemetry { provider }
}

/// The SDK's pipeline: the OTLP/HTTP exporter (endpoint, headers, timeout from the
/// environment), wrapped to report failures, behind a batch processor with the default (or
/// `OTEL_BSP_*`) queue sizes. A full queue drops spans, never blocks the worker.
fn otlp_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(Reporting::new(exporter))
        .with_resource(named(Resource::builder().build()))
        .build())
}

/// `detected` (what the SDK made of `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`) with
/// this service's name when it names none: the SDK then falls back to the specification's
/// `unknown_service:<executable>`.
fn named(detected: Resource) -> Resource {
    let name = detected.get(&Key::from_static_str("service.name"));
    if name.is_some_and(|n| !n.as_str().starts_with("unknown_service")) {
        return detected;
    }
    Resource::builder().with_service_name(SERVICE_NAME).build()
}

/// An exporter that says when exports fail: the SDK's own diagnostics are compiled out (its
/// `internal-logs` feature is off), so a collector that is down would otherwise go unnoticed.
/// One warning at the first failure, then at most one per [`EXPORT_WARNING_INTERVAL`] with the
/// count of spans lost meanwhile, and one line when exports work again.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// When the last warning was given; `None` while exports succeed.
    warned: Mutex<Option<Instant>>,
    /// Spans lost since the last warning.
    lost: AtomicU64,
}

impl<E> Reporting<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            warned: Mutex::new(None),
            lost: AtomicU64::new(0),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        // A poisoned lock only means another export panicked; the Option inside is still fine.
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => {
                if warned.take().is_some() {
                    self.lost.store(0, Ordering::Relaxed);
                    info!("OTLP export of spans works again");
                }
            }
            Err(error) => {
                let lost = self.lost.fetch_add(spans, Ordering::Relaxed) + spans;
                if warned.is_none_or(|at| at.elapsed() >= EXPORT_WARNING_INTERVAL) {
                    *warned = Some(Instant::now());
                    self.lost.store(0, Ordering::Relaxed);
                    warn!(%error, spans_lost = lost, "OTLP export of spans failed; the worker goes on without them");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
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

    #[test]
    fn only_this_crates_spans_are_exported() {
        assert!(may_export("signup_worker::worker::pipeline", Level::INFO));
        assert!(may_export("signup_worker", Level::WARN));
        assert!(!may_export("signup_worker::worker", Level::DEBUG));
        assert!(!may_export("signup_workers", Level::INFO));
        assert!(!may_export("lapin::channel", Level::INFO));
        assert!(!may_export("sqlx::query", Level::INFO));
        assert!(!may_export("reqwest::connect", Level::INFO));
    }

    #[test]
    fn export_needs_an_endpoint_and_no_off_switch() {
        let wanted = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            export_wanted(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!wanted(&[]));
        assert!(!wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(wanted(&[endpoint]));
        assert!(wanted(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )]));
        assert!(!wanted(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]));
        assert!(wanted(&[endpoint, ("OTEL_SDK_DISABLED", "false")]));
        assert!(!wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")]));
    }

    #[test]
    fn the_service_is_named_unless_the_environment_names_it() {
        let name = |r: &Resource| {
            r.get(&Key::from_static_str("service.name"))
                .map(|v| v.as_str().into_owned())
        };
        let unnamed = Resource::builder_empty()
            .with_service_name("unknown_service:signup-worker")
            .build();
        assert_eq!(name(&named(unnamed)).as_deref(), Some(SERVICE_NAME));
        let given = Resource::builder_empty()
            .with_service_name("signups-eu")
            .build();
        assert_eq!(name(&named(given)).as_deref(), Some("signups-eu"));
    }

    #[test]
    fn unsupported_endpoints_and_protocols_are_named() {
        let check = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            unsupported_export(move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(
            check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            None
        );
        assert!(check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])
            .unwrap()
            .contains("plain HTTP only"));
        assert!(check(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        ])
        .unwrap()
        .contains("grpc"));
        // The traces-only endpoint wins over the general one.
        assert_eq!(
            check(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                )
            ]),
            None
        );
    }
}
