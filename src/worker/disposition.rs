//! What happens to one delivery (contract section 4), decided by a pure function, and recorded
//! (logged and counted) once, when the delivery is acked.
//!
//! An outage (PostgreSQL unreachable or refusing our statements) never reaches this module:
//! the pipeline holds the whole batch and retries it (see `pipeline::store_with_retries`), so
//! "pause" is not a per-delivery disposition.

use std::time::Duration;

use tracing::{debug, info, info_span, warn, Span};

use crate::amqp::OutcomeEvent;
use crate::domain::InvalidEvent;
use crate::error::DbFailure;
use crate::metrics::{self, ConflictKind, EventOutcome};
use crate::store::Resolution;
use crate::trace::TraceContext;

use super::retry::backoff_with;

/// First delay of an event parked in the retry queue; doubles per delivery.
const RETRY_QUEUE_BASE: Duration = Duration::from_secs(1);
/// Ceiling of the retry-queue delay.
const RETRY_QUEUE_CAP: Duration = Duration::from_secs(60);

/// What the pipeline learned about one delivery.
#[derive(Debug)]
pub enum Verdict {
    /// It failed validation.
    Invalid(InvalidEvent),
    /// It was stored, or recognised as a duplicate or a slug conflict.
    Resolved(Resolution),
    /// Storing it kept failing for reasons of its own (not an outage).
    Failed(DbFailure),
}

/// The ids an outcome and a log line can name: the parsed ones, or for an invalid body the
/// best the worker could salvage (see `domain::salvage_ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    pub event_id: Option<String>,
    pub slug: Option<String>,
}

/// What the delivery owes before it is acked.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Publish this outcome, then ack.
    Complete {
        outcome: OutcomeEvent,
        counted: EventOutcome,
        conflict: Option<ConflictKind>,
        /// A non-demo tenant created after the bound was reached.
        exhausted: bool,
    },
    /// Publish a copy to the DLQ with this reason (and the outcome, if any), then ack.
    DeadLetter {
        reason: String,
        outcome: Option<OutcomeEvent>,
        counted: EventOutcome,
    },
    /// Publish a copy to the retry queue that expires after `delay`, then ack.
    RetryLater { attempts: u32, delay: Duration },
}

/// Decides one delivery. `prior_attempts`: deliveries of this event that already ended in a
/// transient error (see `amqp::prior_attempts`); `jitter` in `0..=1` spreads retry delays.
pub fn disposition(
    ids: &Ids,
    verdict: &Verdict,
    prior_attempts: u32,
    max_deliveries: u32,
    jitter: f64,
) -> Disposition {
    let completed = |tenant: &crate::store::StoredTenant| {
        OutcomeEvent::completed(
            ids.event_id.as_deref().unwrap_or_default(),
            tenant.id,
            &tenant.slug,
            tenant.founding_member_number,
        )
    };
    let rejected =
        |reason: &str| OutcomeEvent::rejected(ids.event_id.clone(), ids.slug.clone(), reason);
    match verdict {
        Verdict::Invalid(invalid) => Disposition::DeadLetter {
            reason: format!("invalid: {invalid}"),
            outcome: Some(rejected("invalid")),
            counted: EventOutcome::Invalid,
        },
        Verdict::Resolved(Resolution::Created { tenant, exhausted }) => Disposition::Complete {
            outcome: completed(tenant),
            counted: EventOutcome::Created,
            conflict: None,
            exhausted: *exhausted,
        },
        Verdict::Resolved(Resolution::Duplicate {
            tenant,
            slug_differs,
        }) => Disposition::Complete {
            outcome: completed(tenant),
            counted: EventOutcome::Duplicate,
            conflict: slug_differs.then_some(ConflictKind::EventId),
            exhausted: false,
        },
        Verdict::Resolved(Resolution::SlugTaken) => Disposition::Complete {
            outcome: rejected("slug_taken"),
            counted: EventOutcome::Rejected,
            conflict: Some(ConflictKind::Slug),
            exhausted: false,
        },
        Verdict::Failed(failure) => {
            if let Some(reason) = failure.content_reason() {
                return Disposition::DeadLetter {
                    reason,
                    outcome: Some(rejected("invalid")),
                    counted: EventOutcome::Invalid,
                };
            }
            let attempts = prior_attempts.saturating_add(1);
            if attempts >= max_deliveries {
                Disposition::DeadLetter {
                    reason: format!(
                        "failed {attempts} deliveries with transient errors (last: {})",
                        failure.retry_reason().as_str()
                    ),
                    outcome: None,
                    counted: EventOutcome::DeadLettered,
                }
            } else {
                Disposition::RetryLater {
                    attempts,
                    delay: backoff_with(attempts, RETRY_QUEUE_BASE, RETRY_QUEUE_CAP, jitter),
                }
            }
        }
    }
}

/// The worker's span for one delivery, from its arrival to its ack: the fields of its log
/// lines and, with OTLP export on, the exported span (`signup`, with `event_id`, `slug`,
/// `trace_id` and, once acked, `outcome`; never the owner's email). A root: the delivery's
/// own trace context, not the batch it came in, is its parent (see `TraceContext::child`).
pub fn event_span(ids: &Ids, parent: Option<&TraceContext>) -> Span {
    info_span!(
        parent: None,
        "signup",
        event_id = ids.event_id.as_deref().unwrap_or(""),
        slug = ids.slug.as_deref().unwrap_or(""),
        trace_id = parent.map(TraceContext::trace_id).unwrap_or_default(),
        outcome = tracing::field::Empty,
    )
}

/// Logs and counts one delivery's disposition (in its span, see [`event_span`]), once, after
/// its ack. Nothing else counts events, so a batch that fails before its ack (and comes back)
/// is never counted twice.
pub fn record(span: &Span, disposition: &Disposition, elapsed: Duration) {
    let outcome = match disposition {
        Disposition::Complete { counted, .. } | Disposition::DeadLetter { counted, .. } => {
            counted.as_str()
        }
        Disposition::RetryLater { .. } => "retry_later",
    };
    span.record("outcome", outcome);
    let _entered = span.enter();
    match disposition {
        Disposition::Complete {
            outcome,
            counted,
            conflict,
            exhausted,
        } => {
            metrics::event(*counted);
            if let Some(kind) = conflict {
                metrics::conflict(*kind);
            }
            if *exhausted {
                metrics::founding_exhausted();
            }
            match (counted, conflict) {
                (EventOutcome::Rejected, _) => info!("slug taken by another event"),
                (EventOutcome::Duplicate, Some(_)) => {
                    warn!(
                        tenant_id = outcome.tenant_id,
                        stored_slug = outcome.slug.as_deref().unwrap_or(""),
                        "event id already stored with another slug"
                    )
                }
                (EventOutcome::Duplicate, None) => {
                    debug!(tenant_id = outcome.tenant_id, "duplicate event")
                }
                _ if *exhausted => debug!(
                    tenant_id = outcome.tenant_id,
                    "tenant created without a number: founding programme is full"
                ),
                _ => {
                    debug!(tenant_id = outcome.tenant_id, founding_member_number = ?outcome.founding_member_number, "tenant created")
                }
            }
        }
        Disposition::DeadLetter {
            reason, counted, ..
        } => {
            metrics::event(*counted);
            if *counted == EventOutcome::DeadLettered {
                warn!(error = %reason, "giving up: dead-lettering");
            } else {
                warn!(error = %reason, "invalid event: dead-lettering");
            }
        }
        Disposition::RetryLater { attempts, delay } => {
            info!(
                attempts,
                delay_ms = delay.as_millis() as u64,
                "parked in the retry queue"
            );
        }
    }
    metrics::processing_duration(elapsed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryReason;
    use crate::store::StoredTenant;
    use uuid::Uuid;

    fn ids() -> Ids {
        Ids {
            event_id: Some("e1".into()),
            slug: Some("acme".into()),
        }
    }

    fn tenant(number: Option<i32>) -> StoredTenant {
        StoredTenant {
            id: 7,
            event_id: Uuid::nil(),
            slug: "acme".into(),
            is_demo: false,
            founding_member_number: number,
        }
    }

    fn transient() -> DbFailure {
        DbFailure::Transient {
            reason: RetryReason::Deadlock,
            founding_number_conflict: false,
        }
    }

    /// One row per line of contract section 4 (the outage row is the pipeline's: it holds the
    /// batch and never asks for a disposition).
    #[test]
    fn every_row_of_the_outcome_table() {
        let completed = |n| OutcomeEvent::completed("e1", 7, "acme", n);
        let rejected = |r| OutcomeEvent::rejected(Some("e1".into()), Some("acme".into()), r);
        let rows: Vec<(&str, Verdict, u32, Disposition)> = vec![
            (
                "valid, new, numbered",
                Verdict::Resolved(Resolution::Created {
                    tenant: tenant(Some(3)),
                    exhausted: false,
                }),
                0,
                Disposition::Complete {
                    outcome: completed(Some(3)),
                    counted: EventOutcome::Created,
                    conflict: None,
                    exhausted: false,
                },
            ),
            (
                "valid, new, after the bound",
                Verdict::Resolved(Resolution::Created {
                    tenant: tenant(None),
                    exhausted: true,
                }),
                0,
                Disposition::Complete {
                    outcome: completed(None),
                    counted: EventOutcome::Created,
                    conflict: None,
                    exhausted: true,
                },
            ),
            (
                "same event id again",
                Verdict::Resolved(Resolution::Duplicate {
                    tenant: tenant(Some(3)),
                    slug_differs: false,
                }),
                0,
                Disposition::Complete {
                    outcome: completed(Some(3)),
                    counted: EventOutcome::Duplicate,
                    conflict: None,
                    exhausted: false,
                },
            ),
            (
                "same event id naming another slug",
                Verdict::Resolved(Resolution::Duplicate {
                    tenant: tenant(Some(3)),
                    slug_differs: true,
                }),
                0,
                Disposition::Complete {
                    outcome: completed(Some(3)),
                    counted: EventOutcome::Duplicate,
                    conflict: Some(ConflictKind::EventId),
                    exhausted: false,
                },
            ),
            (
                "slug taken",
                Verdict::Resolved(Resolution::SlugTaken),
                0,
                Disposition::Complete {
                    outcome: rejected("slug_taken"),
                    counted: EventOutcome::Rejected,
                    conflict: Some(ConflictKind::Slug),
                    exhausted: false,
                },
            ),
            (
                "invalid",
                Verdict::Invalid(InvalidEvent::NotAnObject),
                0,
                Disposition::DeadLetter {
                    reason: "invalid: body is not a JSON object".into(),
                    outcome: Some(rejected("invalid")),
                    counted: EventOutcome::Invalid,
                },
            ),
            (
                "content refused by PostgreSQL",
                Verdict::Failed(DbFailure::Content {
                    sqlstate: "23514".into(),
                    constraint: Some("c".into()),
                }),
                0,
                Disposition::DeadLetter {
                    reason: "invalid: refused by PostgreSQL (SQLSTATE 23514, constraint c)".into(),
                    outcome: Some(rejected("invalid")),
                    counted: EventOutcome::Invalid,
                },
            ),
            (
                "transient, first failure",
                Verdict::Failed(transient()),
                0,
                Disposition::RetryLater {
                    attempts: 1,
                    delay: Duration::from_millis(500),
                },
            ),
            (
                "transient, third failure",
                Verdict::Failed(transient()),
                2,
                Disposition::RetryLater {
                    attempts: 3,
                    delay: Duration::from_secs(2),
                },
            ),
            (
                "still failing after MAX_DELIVERIES",
                Verdict::Failed(transient()),
                9,
                Disposition::DeadLetter {
                    reason: "failed 10 deliveries with transient errors (last: deadlock)".into(),
                    outcome: None,
                    counted: EventOutcome::DeadLettered,
                },
            ),
        ];
        for (name, verdict, prior, want) in rows {
            assert_eq!(
                disposition(&ids(), &verdict, prior, 10, 0.0),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn retry_delays_grow_are_capped_and_jittered() {
        let delay = |prior, jitter| match disposition(
            &ids(),
            &Verdict::Failed(transient()),
            prior,
            100,
            jitter,
        ) {
            Disposition::RetryLater { delay, .. } => delay,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(delay(50, 0.0), Duration::from_secs(30));
        assert_eq!(delay(50, 1.0), Duration::from_secs(60));
    }
}
