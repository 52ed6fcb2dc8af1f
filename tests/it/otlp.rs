//! OTLP export of spans (contract section 2, `OTEL_EXPORTER_OTLP_ENDPOINT`): a small OTLP/HTTP
//! receiver in the test takes what the binary exports (protobuf, the SDK's default), and the
//! spans must continue the events' traces exactly as the outcomes say. Without the variable,
//! or with the SDK switched off, nothing is sent and no exporter thread runs.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use crate::helpers::*;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the receiver saw: every request (whatever its path) and the spans it decoded.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    spans: Vec<Exported>,
}

struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(seen.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, seen, server }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().requests.clone()
    }

    fn spans(&self, name: &str) -> Vec<Exported> {
        let seen = self.seen.lock().unwrap();
        seen.spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// POST /v1/traces with an `ExportTraceServiceRequest` in protobuf; anything else is noted
/// (and refused) so that a test sees it.
async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().unwrap();
    seen.requests.push(format!("{uri} {content_type}"));
    if uri.path() != "/v1/traces" || content_type != "application/x-protobuf" {
        return (StatusCode::NOT_FOUND, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            seen.spans.push(Exported {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.clone(),
                            text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                        )
                    })
                    .collect(),
            });
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (trace id, span id) of a `traceparent`.
fn ids_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Threads of a process whose name (cut to 15 bytes by Linux) says they belong to the
/// exporter: the SDK's batch processor and the blocking HTTP client's runtime.
fn exporter_threads(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("OpenTelemetry") || n.starts_with("reqwest"))
        .collect()
}

/// An event with a known `traceparent` gives an exported `signup` span in that trace, child of
/// the event's span, whose id is the one the outcome's `traceparent` names; `publish` exports
/// the first span of each trace it starts, and the worker's spans are their children. Both
/// processes flush on exit: the spans are there as soon as each has exited, though the batch
/// processor's schedule (5 s by default) has not come round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_in_the_events_traces_and_flushed_on_exit() {
    let env = TestEnv::new(10).await;
    let receiver = Receiver::start().await;
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str());
    let (event_trace, event_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let parent = format!("00-{event_trace}-{event_span}-01");
    let (body, event_id) = event("otlp-known", false);
    env.publish_with(
        &body,
        traced_properties(&parent).with_message_id(event_id.clone().into()),
    )
    .await;

    let mut worker = env.spawn_worker(&[endpoint]);
    env.wait_outcomes(1).await;
    let threads = exporter_threads(worker.pid());
    assert!(
        threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "the batch processor runs: {threads:?}"
    );

    // `publish`, a one-shot command, exports its spans before it exits.
    env.run_ok_with(&["publish", "--count", "2", "--no-progress"], &[endpoint]);
    let published = receiver.spans("publish");
    assert_eq!(published.len(), 2, "{published:?}");
    env.wait_outcomes(3).await;

    worker.sigterm();
    assert!(worker.wait_exit().await.success());
    let signup = receiver.spans("signup");
    assert_eq!(signup.len(), 3, "one span per event: {signup:?}");
    for r in receiver.requests() {
        assert_eq!(r, "/v1/traces application/x-protobuf");
    }

    let outcomes = env.traced_outcomes();
    let outcome = outcomes
        .iter()
        .find(|o| o.event.event_id.as_deref() == Some(event_id.as_str()))
        .expect("the traced event's outcome");
    let (outcome_trace, outcome_span) =
        ids_of(outcome.traceparent.as_deref().expect("a traceparent"));
    assert_eq!(
        outcome_trace, event_trace,
        "the outcome carries the event's trace"
    );
    let span = signup
        .iter()
        .find(|s| s.trace_id == event_trace)
        .unwrap_or_else(|| panic!("no exported span in the event's trace: {signup:?}"));
    assert_eq!(span.parent_span_id, event_span, "child of the event's span");
    assert_eq!(span.span_id, outcome_span, "the span the outcome names");
    assert_eq!(span.service, "signup-worker");
    assert_eq!(span.attribute("event_id"), Some(event_id.as_str()));
    assert_eq!(span.attribute("slug"), Some("otlp-known"));
    assert_eq!(span.attribute("outcome"), Some("created"));
    assert!(
        span.attributes.iter().all(|(_, v)| !v.contains('@')),
        "never the owner's email: {span:?}"
    );

    // The publisher's spans start the other two traces; the worker's are their children.
    for p in &published {
        assert_eq!(p.parent_span_id, "", "a root: {p:?}");
        let outcome = outcomes
            .iter()
            .find(|o| o.event.event_id.as_deref() == p.attribute("event_id"))
            .unwrap_or_else(|| panic!("no outcome for {p:?}"));
        let (trace, span_id) = ids_of(outcome.traceparent.as_deref().expect("a traceparent"));
        assert_eq!(trace, p.trace_id);
        let child = signup
            .iter()
            .find(|s| s.span_id == span_id)
            .unwrap_or_else(|| panic!("no exported span {span_id}: {signup:?}"));
        assert_eq!(child.trace_id, p.trace_id);
        assert_eq!(child.parent_span_id, p.span_id);
    }
    env.cleanup().await;
}

/// Unset, nothing changes: no exporter thread and not a request, though a receiver listens
/// where `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` point it, as the OpenTelemetry
/// specification has them switch the SDK off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_the_endpoint_or_with_the_sdk_off() {
    let env = TestEnv::new(10).await;
    let receiver = Receiver::start().await;
    let runs: [&[(&str, &str)]; 3] = [
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_SDK_DISABLED", "true"),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    ];
    for (i, vars) in runs.iter().enumerate() {
        let (body, event_id) = event(&format!("otlp-off-{i}"), false);
        env.publish_with(
            &body,
            traced_properties("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .with_message_id(event_id.into()),
        )
        .await;
        let mut worker = env.spawn_worker(vars);
        env.wait_outcomes(i + 1).await;
        let threads = exporter_threads(worker.pid());
        assert!(threads.is_empty(), "{vars:?}: {threads:?}");
        worker.sigterm();
        assert!(worker.wait_exit().await.success());
        assert!(
            env.traced_outcomes()[i].traceparent.is_some(),
            "the trace still goes on"
        );
    }
    assert_eq!(receiver.requests(), Vec::<String>::new());
    env.cleanup().await;
}

/// A collector that is down costs the worker nothing but a warning: events flow, and the
/// exit's flush gives up within the SDK's shutdown timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_a_warning_and_nothing_else() {
    let env = TestEnv::new(10).await;
    // A port that nothing listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut worker = env.spawn_worker(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &closed)]);
    let bodies: Vec<_> = (0..3)
        .map(|i| event(&format!("otlp-down-{i}"), false))
        .collect();
    env.publish_many(&bodies).await;
    env.wait_outcomes(3).await;
    let stopping = std::time::Instant::now();
    worker.sigterm();
    assert!(worker.wait_exit().await.success());
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(15),
        "exit took {:?}",
        stopping.elapsed()
    );
    let about_otlp: Vec<String> = worker
        .logs()
        .into_iter()
        .filter(|l| l.contains("OTLP"))
        .collect();
    assert!(
        !about_otlp.is_empty() && about_otlp.len() <= 2,
        "a warning, not a flood: {about_otlp:#?}"
    );
    assert!(
        about_otlp.iter().all(|l| l.contains("\"level\":\"WARN\"")),
        "{about_otlp:#?}"
    );
    env.cleanup().await;
}
