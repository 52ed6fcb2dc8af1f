//! The two stages of a session: the intake stores batches, the finisher publishes what each
//! delivery owes and acks the batch.
//!
//! - Deliveries are taken in batches: the first waits, the rest are what arrives within
//!   [`LINGER`] of it, up to `batch_size`. Under load batches fill up at once; at low load a
//!   few events share a transaction instead of one each.
//! - Storing batch k+1 overlaps publishing and acking batch k. Batches leave the second stage
//!   in delivery order, so each `ack(multiple)` covers exactly its own batch.
//! - Nothing is acked before its commit and the confirms of what it owes; a crash anywhere
//!   before the ack means redelivery, which resolves as a duplicate.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Consumer};
use tokio::sync::mpsc;

use tracing::{debug, error, info, warn, Instrument as _, Span};

use crate::amqp::{self, Outgoing, ATTEMPTS_HEADER, ERROR_HEADER};
use crate::domain::{salvage_ids, InvalidEvent, SignupRequest};
use crate::error::{classify_db, sqlstate, DbFailure, RetryReason};
use crate::metrics::{self, ConflictKind};
use crate::store::{self, Resolution};
use crate::trace::TraceContext;

use super::disposition::{disposition, event_span, record, Disposition, Ids, Verdict};
use super::retry::{backoff, sleep_or_stop, Stopped};
use super::{SessionError, Worker};

/// Quick in-process attempts of one event (after its batch failed and was split up) before
/// it is parked in the retry queue.
const IN_PROCESS_ATTEMPTS: u32 = 3;
/// First in-process retry delay; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// On shutdown, how long to wait for deliveries still in flight from the broker after the
/// consumer is cancelled.
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// How long a batch waits for company after its first delivery. Every batch costs the same
/// fixed work (a transaction with its WAL flush, a publish, an ack, a dozen thread wake-ups),
/// so at 1,000 signups/s, where batches held one or two events, waiting 2 ms halved the CPU
/// per signup of the worker and of PostgreSQL, for 1 to 2 ms of latency (docs/BENCHMARKS.md).
const LINGER: Duration = Duration::from_millis(2);
/// Store transactions one replica runs at once. Each waits a few ms for its WAL flush, during
/// which a single transaction leaves the replica idle; a second one overlaps that wait. Every
/// event holds two advisory locks until its transaction ends, so a replica holds up to
/// `2 × STORES_IN_FLIGHT × BATCH_SIZE` locks (see the README's lock-table limit). Two bought
/// about 8% at one replica (17.0k against 15.7k signups/s, two runs each, docs/BENCHMARKS.md)
/// for twice the locks, which would halve the replicas the lock table allows: left at one.
const STORES_IN_FLIGHT: usize = 1;

/// One delivery on its way through the pipeline, with everything decided about it.
pub(super) struct InFlight {
    delivery: Delivery,
    received: Instant,
    disposition: Disposition,
    /// The worker's span for this event, from its arrival to its ack.
    span: Span,
    /// `span`'s place in the event's trace, when the event has a `traceparent`.
    trace: Option<TraceContext>,
}

/// A delivery as it arrives: parsed, named, and given its span before anything is stored.
struct Arrived {
    delivery: Delivery,
    /// `None` for a valid event, whose request goes to the store with its batch-mates'.
    invalid: Option<InvalidEvent>,
    ids: Ids,
    span: Span,
    trace: Option<TraceContext>,
}

impl Arrived {
    fn new(delivery: Delivery) -> (Self, Option<SignupRequest>) {
        let parsed = SignupRequest::parse(&delivery.data);
        let ids = match &parsed {
            Ok(req) => Ids {
                event_id: Some(req.event_id.to_string()),
                slug: Some(req.slug.to_string()),
            },
            Err(_) => salvaged_ids(&delivery),
        };
        let parent = TraceContext::from_properties(&delivery.properties);
        let span = event_span(&ids, parent.as_ref());
        let trace = parent.map(|p| p.child(&span));
        let (invalid, request) = match parsed {
            Ok(req) => (None, Some(req)),
            Err(invalid) => (Some(invalid), None),
        };
        let arrived = Self {
            delivery,
            invalid,
            ids,
            span,
            trace,
        };
        (arrived, request)
    }
}

/// A stored batch on its way to the second stage.
pub(super) struct Committed {
    items: Vec<InFlight>,
    store_time: Duration,
}

impl Worker {
    /// First stage: takes batches of deliveries and stores them. Returns `Ok` after a clean
    /// drain on shutdown; dropping `committed` then lets the second stage finish.
    pub(super) async fn intake(
        &self,
        consume_channel: &Channel,
        consumer: &mut Consumer,
        committed: mpsc::Sender<Committed>,
    ) -> Result<(), SessionError> {
        // Batches are collected while up to STORES_IN_FLIGHT earlier ones are being stored, and
        // leave in delivery order (`buffered` keeps it), so the finisher's ack(multiple) still
        // covers exactly one batch. All of it runs in this one task: no extra thread hand-off.
        let (batches, to_store) = mpsc::channel::<Vec<Delivery>>(1);
        let store = async {
            let to_store = futures_util::stream::unfold(to_store, |mut rx| async move {
                rx.recv().await.map(|batch| (batch, rx))
            });
            let mut stored = std::pin::pin!(to_store
                .map(|batch| self.store_stage(batch))
                .buffered(STORES_IN_FLIGHT));
            while let Some(done) = stored.next().await {
                committed
                    .send(done?)
                    .await
                    .map_err(|_| SessionError::PipelineClosed)?;
            }
            Ok::<_, SessionError>(())
        };
        tokio::try_join!(self.collect(consumer, batches), store)?;
        self.shut_down(consume_channel, consumer, &committed).await
    }

    /// Takes deliveries in batches until shutdown; dropping `batches` on return lets the
    /// stores in flight finish.
    async fn collect(
        &self,
        consumer: &mut Consumer,
        batches: mpsc::Sender<Vec<Delivery>>,
    ) -> Result<(), SessionError> {
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let mut batch = Vec::with_capacity(self.settings.batch_size);
            let mut ended = false;
            match first {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SessionError::ConsumerCancelled),
            }
            let linger_until = tokio::time::Instant::now() + LINGER;
            while batch.len() < self.settings.batch_size {
                match tokio::time::timeout_at(linger_until, consumer.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    Ok(Some(Err(_))) | Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            batches
                .send(batch)
                .await
                .map_err(|_| SessionError::PipelineClosed)?;
            if ended {
                return Err(SessionError::ConsumerCancelled);
            }
        }
    }

    /// After the last batch is stored: stop the flow, then finish and ack what the broker
    /// already sent us.
    async fn shut_down(
        &self,
        consume_channel: &Channel,
        consumer: &mut Consumer,
        committed: &mpsc::Sender<Committed>,
    ) -> Result<(), SessionError> {
        self.health.set_consuming(false);
        consume_channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await?;
        let held = drain(consumer).await;
        if !held.is_empty() {
            info!(count = held.len(), "finishing deliveries held at shutdown");
        }
        let mut held = held.into_iter().peekable();
        while held.peek().is_some() {
            let batch: Vec<Delivery> = held.by_ref().take(self.settings.batch_size).collect();
            let done = self.store_stage(batch).await?;
            committed
                .send(done)
                .await
                .map_err(|_| SessionError::PipelineClosed)?;
        }
        Ok(())
    }

    /// Second stage: publishes what each committed batch owes, then acks it, in order.
    pub(super) async fn finish_all(
        &self,
        consume_channel: &Channel,
        publish_channel: &Channel,
        mut to_finish: mpsc::Receiver<Committed>,
        frame_max: u32,
    ) -> Result<(), SessionError> {
        while let Some(batch) = to_finish.recv().await {
            self.finish_stage(consume_channel, publish_channel, batch, frame_max)
                .await?;
        }
        Ok(())
    }

    /// Parses and stores one batch, and decides what each delivery owes.
    async fn store_stage(&self, deliveries: Vec<Delivery>) -> Result<Committed, Stopped> {
        let received = Instant::now();
        let mut arrived = Vec::with_capacity(deliveries.len());
        let mut valid = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let (a, request) = Arrived::new(delivery);
            arrived.push(a);
            valid.extend(request);
        }
        let mut stored = self.store_with_retries(valid.into()).await?.into_iter();
        let retry_queue = self.settings.topology.retry_queue();
        let max_deliveries = self.settings.max_deliveries;
        let items = arrived
            .into_iter()
            .map(|a| {
                let verdict = match a.invalid {
                    Some(invalid) => Verdict::Invalid(invalid),
                    // `store_with_retries` returns one result per request; were one missing,
                    // retrying the event later is the safe reading.
                    None => match stored.next() {
                        Some(Ok(resolution)) => Verdict::Resolved(resolution),
                        Some(Err(failure)) => Verdict::Failed(failure),
                        None => Verdict::Failed(DbFailure::Transient {
                            reason: RetryReason::Other,
                            founding_number_conflict: false,
                        }),
                    },
                };
                let prior =
                    amqp::prior_attempts(&a.delivery.properties, &retry_queue, max_deliveries);
                let disposition =
                    disposition(&a.ids, &verdict, prior, max_deliveries, rand::random());
                InFlight {
                    delivery: a.delivery,
                    received,
                    disposition,
                    span: a.span,
                    trace: a.trace,
                }
            })
            .collect();
        Ok(Committed {
            items,
            store_time: received.elapsed(),
        })
    }

    /// Publishes and confirms everything a committed batch owes, acks the batch, then records
    /// each delivery's disposition.
    async fn finish_stage(
        &self,
        consume_channel: &Channel,
        publish_channel: &Channel,
        batch: Committed,
        frame_max: u32,
    ) -> Result<(), SessionError> {
        let Some(last_tag) = batch.items.last().map(|i| i.delivery.delivery_tag) else {
            return Ok(());
        };
        let started = Instant::now();
        self.publish_owed(publish_channel, &batch.items, frame_max)
            .await?;
        // The ack is handed to lapin's I/O thread, not awaited: lapin resolves it only once
        // the frame is written, and waiting for that cost this thread one more wake-up per
        // batch, the main cost at low load (docs/BENCHMARKS.md). A failed write breaks the
        // connection, which ends the session anyway; unacked deliveries come back and resolve
        // as duplicates. Frames leave a channel in order, so a later close still follows it.
        if let Some(Err(error)) = consume_channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .now_or_never()
        {
            return Err(error.into());
        }
        debug!(
            events = batch.items.len(),
            store_ms = batch.store_time.as_millis() as u64,
            publish_ack_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        for item in &batch.items {
            record(&item.span, &item.disposition, item.received.elapsed());
        }
        // Dropping the batch closes the events' spans (and hands them to the exporter).
        Ok(())
    }

    /// Publishes everything the batch owes, then waits for every confirm. Any failure ends
    /// the session without acking: the batch comes back and resolves as duplicates.
    async fn publish_owed(
        &self,
        channel: &Channel,
        items: &[InFlight],
        frame_max: u32,
    ) -> Result<(), SessionError> {
        let topology = &self.settings.topology;
        let (dlq, retry_queue) = (topology.dead_letter_queue(), topology.retry_queue());
        let mut owed: Vec<Outgoing<'_>> = Vec::with_capacity(items.len() + 8);
        for item in items {
            let props = &item.delivery.properties;
            let (copy, outcome) = match &item.disposition {
                Disposition::Complete { outcome, .. } => (None, Some(outcome)),
                Disposition::DeadLetter {
                    reason, outcome, ..
                } => {
                    let header = (ERROR_HEADER, AMQPValue::LongString(reason.as_str().into()));
                    let copy = amqp::copy_properties(props, vec![header], frame_max);
                    (Some((dlq.as_str(), copy)), outcome.as_ref())
                }
                Disposition::RetryLater { attempts, delay } => {
                    let header = (
                        ATTEMPTS_HEADER,
                        AMQPValue::LongLongInt(i64::from(*attempts)),
                    );
                    let copy = amqp::copy_properties(props, vec![header], frame_max)
                        .with_expiration(delay.as_millis().to_string().into());
                    (Some((retry_queue.as_str(), copy)), None)
                }
            };
            if let Some((queue, properties)) = copy {
                owed.push(Outgoing {
                    exchange: "",
                    routing_key: queue,
                    body: Cow::Borrowed(&item.delivery.data),
                    properties,
                    mandatory: true,
                    target: queue,
                });
            }
            if let Some(o) = outcome {
                owed.push(Outgoing {
                    exchange: &topology.exchange,
                    routing_key: &o.kind,
                    body: Cow::Owned(o.body()),
                    // The trace goes on from the worker's span (a DLQ copy keeps the event's).
                    properties: match &item.trace {
                        Some(trace) => trace.on(o.properties()),
                        None => o.properties(),
                    },
                    mandatory: false,
                    target: &topology.exchange,
                });
            }
        }
        Ok(amqp::publish_all(channel, owed).await?)
    }

    /// One attempt at storing a batch, run as a task of its own so that it always ends in
    /// COMMIT or ROLLBACK. Awaited inline, it would be cancelled whenever the session ends
    /// under it (a lost broker connection fails the publishing stage, and `try_join!` drops
    /// this one); sqlx 0.8 queues a ROLLBACK for a cancelled transaction only once its BEGIN
    /// has completed, so a cancellation inside BEGIN returned the connection to the pool in a
    /// transaction nobody would end. The next batch on it then merged into that transaction
    /// (PostgreSQL's "there is already a transaction in progress"), and a plain statement on
    /// it (the gauge refresher's) left it idle in the transaction until
    /// `idle_in_transaction_session_timeout` ended the session. Seen in the cluster test, on
    /// the replicas whose node was stopped. A batch stored after its session ended is not
    /// acked: it comes back and resolves as duplicates, like any lost ack.
    async fn store_attempt(
        &self,
        requests: Arc<[SignupRequest]>,
    ) -> Result<Result<Vec<Resolution>, sea_orm::DbErr>, Stopped> {
        let db = self.db.clone();
        let attempt = async move { store::store_batch(&db, &requests).await };
        match tokio::spawn(attempt.in_current_span()).await {
            Ok(result) => Ok(result),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(Stopped),
        }
    }

    /// Stores the batch, holding it through outages and splitting it on any other failure.
    /// Returns one result per request; an `Err` is an event that failed on its own (its
    /// content, or a transient error that outlasted the quick attempts).
    async fn store_with_retries(
        &self,
        requests: Arc<[SignupRequest]>,
    ) -> Result<Vec<Result<Resolution, DbFailure>>, Stopped> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.store_attempt(requests.clone()).await? {
                Ok(resolutions) => {
                    self.health.set_database(true);
                    self.health.set_store_blocked(false);
                    return Ok(resolutions.into_iter().map(Ok).collect());
                }
                Err(error) => error,
            };
            let failure = classify_db(&error);
            if failure.is_outage() {
                metrics::retry(failure.retry_reason());
                self.health.set_store_blocked(true);
                if failure == DbFailure::Unavailable {
                    self.health.set_database(false);
                    warn!(%error, attempt, events = requests.len(), "PostgreSQL unavailable; holding the batch until it is back");
                } else {
                    // The server's message names the privilege or the object.
                    error!(%error, sqlstate = sqlstate(&error).unwrap_or_default(), attempt, events = requests.len(),
                        "PostgreSQL refuses the worker's statements (a missing privilege or object); \
                         holding the batch until an operator fixes it");
                }
                sleep_or_stop(
                    backoff(attempt, RETRY_BASE, super::OUTAGE_BACKOFF_CAP),
                    &self.stop,
                )
                .await?;
                // An outage is not the events' fault: it never counts toward giving up.
                attempt = attempt.min(IN_PROCESS_ATTEMPTS - 1);
                continue;
            }
            self.health.set_store_blocked(false);
            if let DbFailure::Transient {
                founding_number_conflict: true,
                ..
            } = failure
            {
                metrics::conflict(ConflictKind::FoundingNumber);
            }
            let permanent = failure.content_reason().is_some();
            if !permanent {
                metrics::retry(failure.retry_reason());
            }
            warn!(%error, attempt, reason = failure.retry_reason().as_str(), permanent, events = requests.len(), "storing the batch failed");
            if requests.len() > 1 {
                // Isolate the event at fault at once: its batch-mates must not wait for it,
                // and a batch is never retried whole.
                let mut results = Vec::with_capacity(requests.len());
                for req in requests.iter() {
                    let alone: Arc<[SignupRequest]> = Arc::new([req.clone()]);
                    results.extend(Box::pin(self.store_with_retries(alone)).await?);
                }
                return Ok(results);
            }
            // One event. Its content refused: no retry can help. Otherwise a few quick
            // attempts here, then the retry queue.
            if permanent || attempt >= IN_PROCESS_ATTEMPTS {
                return Ok(vec![Err(failure)]);
            }
            sleep_or_stop(
                backoff(attempt, RETRY_BASE, super::OUTAGE_BACKOFF_CAP),
                &self.stop,
            )
            .await?;
        }
    }
}

/// Deliveries still arriving after the consumer was cancelled.
async fn drain(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut held = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(DRAIN_IDLE, consumer.next()).await {
        held.push(d);
    }
    held
}

/// For an invalid event's outcome: what [`salvage_ids`] finds in the body, else the AMQP
/// `message_id` as the event id.
fn salvaged_ids(delivery: &Delivery) -> Ids {
    let (event_id, slug) = salvage_ids(&delivery.data);
    let message_id = || {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
    };
    Ids {
        event_id: event_id.or_else(message_id),
        slug,
    }
}
