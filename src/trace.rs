//! W3C trace context (`traceparent`, `tracestate`) carried from an event to what the worker
//! publishes about it (contract section 4).
//!
//! The worker's handling of an event is a span whose parent is the event's `traceparent`: it
//! keeps the trace id, gets a span id of its own, and its outcome event carries a
//! `traceparent` naming that span, so the trace goes on downstream. A DLQ copy keeps the
//! event's own headers, hence its trace. A missing or malformed `traceparent` is ignored (a
//! publisher's bad header must not cost the event anything); `tracestate` is only carried
//! along with a valid `traceparent`, as the specification says.
//!
//! The trace id is in each event's log span. With OTLP export on (see `telemetry`), the
//! exported span is that same span: its parent is the event's context and its id is the one
//! the outcome names, so a trace backend links the publisher, the worker and what comes next.

use lapin::types::AMQPValue;
use lapin::BasicProperties;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The specification caps `tracestate` at 32 list members; 512 bytes is what it asks
/// vendors to propagate at least. Longer values are dropped rather than cut.
const MAX_TRACESTATE: usize = 512;

/// A span's place in a trace: what a `traceparent` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` (version 00, or a later version read as 00 would be) and an
    /// optional `tracestate`.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let t = traceparent.trim();
        let (version, rest) = t.split_once('-')?;
        let version = hex_bytes::<1>(version)?[0];
        if version == 0xff || (version == 0 && rest.len() != 52) || rest.len() < 52 {
            return None;
        }
        if version != 0 && rest.len() > 52 && !rest[52..].starts_with('-') {
            return None;
        }
        let mut parts = rest[..52].split('-');
        let trace_id = hex_bytes::<16>(parts.next()?)?;
        let span_id = hex_bytes::<8>(parts.next()?)?;
        let flags = hex_bytes::<1>(parts.next()?)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
            .map(str::to_owned);
        Some(Self {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// Reads the context an AMQP message carries in its headers, if any.
    pub fn from_properties(props: &BasicProperties) -> Option<Self> {
        let headers = props.headers().as_ref()?;
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        };
        Self::parse(text(TRACEPARENT)?, text(TRACESTATE))
    }

    /// A new trace, for a message that starts one (`publish`), whose first span is `span`
    /// when OTLP export is on (its context is then the exported span's), else a random one.
    pub fn root(span: &tracing::Span) -> Self {
        if crate::telemetry::exporting() {
            let own = span.context().span().span_context().clone();
            if own.is_valid() {
                return Self {
                    trace_id: own.trace_id().to_bytes(),
                    span_id: own.span_id().to_bytes(),
                    flags: own.trace_flags().to_u8(),
                    state: None,
                };
            }
        }
        Self::new_root()
    }

    /// A new trace with random ids.
    fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand::random()),
            span_id: nonzero(rand::random()),
            flags: 1,
            state: None,
        }
    }

    /// The context of `span`, a span just created whose parent is this context: the same
    /// trace and state, and the span's own id. With OTLP export on, this context becomes the
    /// exported span's parent, and the id and flags are the exported span's (the sampler may
    /// turn the flags down); otherwise the id is random, as no one else sees the span.
    pub fn child(&self, span: &tracing::Span) -> Self {
        let exported = crate::telemetry::exporting()
            .then(|| self.adopt(span))
            .flatten();
        match exported {
            Some((span_id, flags)) => Self {
                span_id,
                flags,
                ..self.clone()
            },
            None => Self {
                span_id: nonzero(rand::random()),
                ..self.clone()
            },
        }
    }

    /// Makes this context the OpenTelemetry parent of `span` and returns the span id and flags
    /// the exporter gives it; `None` when no export layer records `span`.
    fn adopt(&self, span: &tracing::Span) -> Option<([u8; 8], u8)> {
        let state = self
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            state,
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .ok()?;
        // Reading the context starts the exported span, with the parent just set.
        let cx = span.context();
        let own = cx.span().span_context().clone();
        (own.is_valid() && own.trace_id() == TraceId::from_bytes(self.trace_id))
            .then(|| (own.span_id().to_bytes(), own.trace_flags().to_u8()))
    }

    pub fn trace_id(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }

    pub fn traceparent(&self) -> String {
        // Written digit by digit: this runs for every outcome, and `format!` per byte was 5% of
        // the worker's CPU at saturation (docs/BENCHMARKS.md).
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// `props` with this context's `traceparent` (and `tracestate`) headers added.
    pub fn on(&self, props: BasicProperties) -> BasicProperties {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(self.traceparent().into()),
        );
        if let Some(state) = &self.state {
            headers.insert(
                TRACESTATE.into(),
                AMQPValue::LongString(state.as_str().into()),
            );
        }
        props.with_headers(headers)
    }
}

fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    // All zeros is the one invalid id; a random one is all zeros once in 2^64 or 2^128.
    if bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Exactly `2 * N` lowercase hex digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips_and_a_child_keeps_the_trace() {
        let t = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.traceparent(), EXAMPLE);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = t.child(&tracing::Span::none());
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.traceparent(), EXAMPLE, "a new span id");
        assert!(c.traceparent().ends_with("-01"));
        let props = c.on(BasicProperties::default());
        let back = TraceContext::from_properties(&props).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.state.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may append fields after a dash.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert!(TraceContext::parse(v1, None).is_some());
        // tracestate only with a valid traceparent; oversized state dropped.
        let long = "k=".to_owned() + &"v".repeat(600);
        assert_eq!(
            TraceContext::parse(EXAMPLE, Some(&long)).unwrap().state,
            None
        );
    }

    #[test]
    fn a_new_root_is_a_valid_sampled_trace() {
        let r = TraceContext::new_root();
        let back = TraceContext::parse(&r.traceparent(), None).unwrap();
        assert_eq!(back, r);
    }
}
