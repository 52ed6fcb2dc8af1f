//! Every metric of contract section 6, declared here with its help text. Nothing else in the
//! crate calls the `metrics` macros: callers use the typed functions below, so label values
//! stay within their small fixed sets (never a tenant, a slug or an error text).

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::RetryReason;
use crate::founding::FoundingStats;

const EVENTS: &str = "signup_events_total";
const CONFLICTS: &str = "signup_conflicts_total";
const RETRIES: &str = "signup_retries_total";
const EXHAUSTED: &str = "signup_founding_exhausted_total";
const CAPACITY: &str = "signup_founding_capacity";
const ASSIGNED: &str = "signup_founding_assigned";
const REMAINING: &str = "signup_founding_remaining";
const BURNED: &str = "signup_founding_burned";
const POOLED: &str = "signup_founding_pooled";
const RECLAIMED: &str = "signup_founding_reclaimed_total";
const DURATION: &str = "signup_processing_duration_seconds";

/// Delivery-to-ack latency buckets. A batch commits in milliseconds when PostgreSQL is
/// healthy; the upper buckets catch in-process retries and outages, where an event can wait
/// for the database for many seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What happened to one event (`signup_events_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Created,
    Duplicate,
    Rejected,
    Invalid,
    DeadLettered,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// `signup_conflicts_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    EventId,
    Slug,
    FoundingNumber,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventId => "event_id",
            Self::Slug => "slug",
            Self::FoundingNumber => "founding_number",
        }
    }
}

/// Installs the Prometheus recorder for this process and describes every metric. Call once,
/// from `main`; a second call (or another recorder) is an error.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(EVENTS, "Signup events handled, by outcome: created, duplicate, rejected (slug taken), invalid (dead-lettered), dead_lettered (out of attempts).");
    describe_counter!(CONFLICTS, "Conflicts met while storing signups, by kind: event_id (a stored event id came back with another slug), slug (slug taken by another event), founding_number (the partial unique index refused a number; must stay 0).");
    describe_counter!(RETRIES, "Retries, by reason: serialization, deadlock, database_unavailable, broker_unavailable, other.");
    describe_counter!(
        EXHAUSTED,
        "Non-demo tenants created after the founding-member bound was reached, hence unnumbered."
    );
    describe_gauge!(
        CAPACITY,
        "Founding-member capacity (the sequence MAXVALUE), read from the database."
    );
    describe_gauge!(
        ASSIGNED,
        "Tenants holding a founding-member number, read from the database."
    );
    describe_gauge!(
        REMAINING,
        "Founding-member numbers left: capacity minus sequence position plus pooled, read from the database."
    );
    describe_gauge!(BURNED, "Founding-member numbers drawn by transactions that have not committed (in flight, or dead and not reclaimed yet): position minus assigned, pooled and retired.");
    describe_gauge!(
        POOLED,
        "Reclaimed founding-member numbers waiting for a tenant, read from the database."
    );
    describe_counter!(
        RECLAIMED,
        "Burned founding-member numbers this replica returned to the pool."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time from delivery to ack of one signup event."
    );
    // Touch every labelled series once so that dashboards and alerts see zeros, not gaps,
    // before the first event of a kind arrives.
    for o in [
        EventOutcome::Created,
        EventOutcome::Duplicate,
        EventOutcome::Rejected,
        EventOutcome::Invalid,
        EventOutcome::DeadLettered,
    ] {
        counter!(EVENTS, "outcome" => o.as_str()).increment(0);
    }
    for k in [
        ConflictKind::EventId,
        ConflictKind::Slug,
        ConflictKind::FoundingNumber,
    ] {
        counter!(CONFLICTS, "kind" => k.as_str()).increment(0);
    }
    for r in [
        RetryReason::Serialization,
        RetryReason::Deadlock,
        RetryReason::DatabaseUnavailable,
        RetryReason::BrokerUnavailable,
        RetryReason::Other,
    ] {
        counter!(RETRIES, "reason" => r.as_str()).increment(0);
    }
    counter!(EXHAUSTED).increment(0);
    counter!(RECLAIMED).increment(0);
}

pub fn event(outcome: EventOutcome) {
    counter!(EVENTS, "outcome" => outcome.as_str()).increment(1);
}

pub fn conflict(kind: ConflictKind) {
    counter!(CONFLICTS, "kind" => kind.as_str()).increment(1);
}

pub fn retry(reason: RetryReason) {
    counter!(RETRIES, "reason" => reason.as_str()).increment(1);
}

pub fn founding_exhausted() {
    counter!(EXHAUSTED).increment(1);
}

pub fn processing_duration(elapsed: Duration) {
    histogram!(DURATION).record(elapsed.as_secs_f64());
}

pub fn founding_stats(stats: &FoundingStats) {
    gauge!(CAPACITY).set(stats.capacity as f64);
    gauge!(ASSIGNED).set(stats.assigned as f64);
    gauge!(REMAINING).set(stats.remaining() as f64);
    gauge!(BURNED).set(stats.burned() as f64);
    gauge!(POOLED).set(stats.pooled as f64);
}

pub fn founding_reclaimed(numbers: u64) {
    counter!(RECLAIMED).increment(numbers);
}
