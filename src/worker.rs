//! `signup-worker run`: consume, store in batches, publish outcomes, ack after commit.
//!
//! Layout:
//! - [`run`] owns the process: health/metrics listener, database connection (with migrations),
//!   the gauge refresher, and the consume loop, which reconnects to RabbitMQ with backoff
//!   whenever a session ends in error. Shutdown is a future passed in by the caller.
//! - A session holds one AMQP connection with two channels: one consumes (manual acks,
//!   bounded prefetch), one publishes outcomes, retries and dead letters in confirm mode.
//! - Deliveries are taken in opportunistic batches: the first waits, the rest are whatever the
//!   channel has already buffered, up to `batch_size`. Under load batches fill up; when idle a
//!   single event is not held back waiting for company.
//! - For each batch: parse, store (see `store`), publish and confirm every resulting message,
//!   then one `basic.ack` with `multiple` for the batch. Nothing is acked before its commit and
//!   its outcome's confirm; a crash anywhere before the ack means redelivery, which resolves
//!   as a duplicate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, PublisherConfirm};
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn};

use crate::amqp::{self, OutcomeEvent, PublishError, Topology, ATTEMPTS_HEADER, ERROR_HEADER};
use crate::db::DbTarget;
use crate::domain::{InvalidEvent, SignupRequest};
use crate::error::sqlstate;
use crate::error::{classify_db, DbFailure};
use crate::metrics::{self, ConflictKind, EventOutcome, RetryReason};
use crate::secrets::{self, SecretUrl};
use crate::store::{self, Resolution};

/// Quick in-process attempts of one event (after its batch failed and was split up) before
/// it is parked in the retry queue.
const IN_PROCESS_ATTEMPTS: u32 = 3;
/// First in-process retry delay; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Ceiling of the wait between attempts to reach PostgreSQL or RabbitMQ during an outage:
/// short enough to notice recovery quickly, long enough not to hammer a restarting server.
const OUTAGE_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// First delay of an event parked in the retry queue; doubles per delivery.
const RETRY_QUEUE_BASE: Duration = Duration::from_secs(1);
/// Ceiling of the retry-queue delay.
const RETRY_QUEUE_CAP: Duration = Duration::from_secs(60);
/// How often the founding gauges are read from the database, and burned numbers reclaimed.
/// The gauges are the same on every replica, so a few seconds of lag is harmless; a burned
/// number is reclaimed on the second tick after it was drawn (the reclaimer looks up to the
/// position of the previous tick), within the contract's 10 s.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);
/// On shutdown, how long to wait for deliveries still in flight from the broker after the
/// consumer is cancelled.
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// Connections per replica: one batch at a time plus the gauge refresher, with a spare for a
/// connection being replaced after a failure.
const DB_POOL_SIZE: u32 = 3;

/// Everything `run` needs, already parsed.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub database_url: SecretUrl,
    pub amqp_url: SecretUrl,
    pub topology: Topology,
    pub max_deliveries: u32,
    pub prefetch: u16,
    pub batch_size: usize,
    pub founding_capacity: i32,
    pub migrate: bool,
    pub metrics_addr: SocketAddr,
}

/// What `/readyz` reports: ready only while both servers are reachable, batches can be
/// stored, and we consume.
#[derive(Debug, Default)]
pub struct Health {
    /// PostgreSQL answers (the connection loop and the gauge refresher say so).
    database: AtomicBool,
    /// The last attempt to store a batch hit an outage (unreachable, or refusing our
    /// statements: a revoked grant). Separate from `database`: the gauge refresher can still
    /// read while INSERT is refused, and must not report ready meanwhile.
    store_blocked: AtomicBool,
    consuming: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.database.load(Ordering::Relaxed)
            && !self.store_blocked.load(Ordering::Relaxed)
            && self.consuming.load(Ordering::Relaxed)
    }

    fn set_database(&self, up: bool) {
        self.database.store(up, Ordering::Relaxed);
    }

    fn set_store_blocked(&self, blocked: bool) {
        self.store_blocked.store(blocked, Ordering::Relaxed);
    }

    fn set_consuming(&self, up: bool) {
        self.consuming.store(up, Ordering::Relaxed);
    }
}

/// Exponential backoff with "equal jitter": half the step is fixed, half random, so a retry
/// never fires at once and replicas that failed together spread out.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let step = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let half = step / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// Runs the worker until `shutdown` completes, then drains what it holds and returns.
pub async fn run(
    settings: WorkerSettings,
    metrics_handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuse a mistyped URL before binding anything: retrying it would loop forever.
    secrets::check_amqp_url(settings.amqp_url.expose())?;
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutdown requested: finishing what this replica holds");
        stop_on_signal.cancel();
    });

    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on METRICS_ADDR {}", settings.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    info!(%metrics_addr, "serving /metrics, /healthz and /readyz");
    // The listener outlives the drain: /healthz answers while the process runs.
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(crate::http::serve(
        listener,
        metrics_handle.clone(),
        health.clone(),
        http_stop.clone(),
    ));

    let target = DbTarget::parse(settings.database_url.expose())?;
    let Some(db) = connect_database(&settings, &target, &stop).await else {
        http_stop.cancel();
        let _ = http.await;
        return Ok(());
    };
    health.set_database(true);

    let gauges = tokio::spawn(refresh_gauges(
        db.clone(),
        metrics_handle,
        health.clone(),
        stop.clone(),
    ));

    let worker = Worker {
        settings,
        db: db.clone(),
        health: health.clone(),
        stop: stop.clone(),
    };
    worker.consume_until_stopped().await;

    stop.cancel();
    if let Err(error) = gauges.await {
        warn!(%error, "gauge refresher ended abnormally");
    }
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "metrics listener failed"),
        Err(error) => warn!(%error, "metrics listener ended abnormally"),
    }
    let _ = db.close().await;
    info!("stopped");
    Ok(())
}

/// Connects (and migrates, unless told not to) until it works or shutdown is requested.
async fn connect_database(
    settings: &WorkerSettings,
    target: &DbTarget,
    stop: &CancellationToken,
) -> Option<DatabaseConnection> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            if settings.migrate {
                target.migrate(settings.founding_capacity).await?;
            }
            target.connect(DB_POOL_SIZE).await
        }
        .await;
        match result {
            Ok(db) => return Some(db),
            Err(error) => {
                metrics::retry(RetryReason::DatabaseUnavailable);
                warn!(%error, attempt, "PostgreSQL not ready; retrying");
            }
        }
        if sleep_or_stop(backoff(attempt, RETRY_BASE * 5, OUTAGE_BACKOFF_CAP), stop)
            .await
            .is_err()
        {
            return None;
        }
    }
}

async fn refresh_gauges(
    db: DatabaseConnection,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    // The position seen on the previous tick: the reclaimer looks only at numbers drawn before
    // it, whose transactions have almost always ended, so it rarely needs its lock. At start-up
    // (the first tick) it looks up to the current position, to reclaim what a crash left.
    let mut reclaim_upto: Option<i64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Histograms need periodic upkeep when the exporter's own HTTP listener is not used.
        handle.run_upkeep();
        match store::founding_stats(&db).await {
            Ok(stats) => {
                let upto = reclaim_upto.unwrap_or(stats.position);
                reclaim_upto = Some(stats.position);
                let stats = match store::reclaim(&db, upto).await {
                    Ok(Some(0)) => stats,
                    Ok(Some(n)) => {
                        metrics::founding_reclaimed(n as u64);
                        info!(
                            reclaimed = n,
                            upto, "burned founding numbers returned to the pool"
                        );
                        store::founding_stats(&db).await.unwrap_or(stats)
                    }
                    Ok(None) => {
                        debug!(upto, "founding reclaim: a numbering transaction is still running; trying again next tick");
                        stats
                    }
                    Err(error) => {
                        // A missing grant on the pool tables would leave numbers burned for
                        // good: say so at every attempt, like any refused statement.
                        warn!(%error, "founding reclaim failed; trying again next tick");
                        stats
                    }
                };
                metrics::founding_stats(&stats);
                health.set_database(true);
            }
            Err(error) => {
                if classify_db(&error) == DbFailure::Unavailable {
                    health.set_database(false);
                }
                debug!(%error, "could not read founding stats");
            }
        }
    }
}

/// Waits `delay` unless shutdown comes first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.cancelled() => Err(Stopped),
    }
}

/// Shutdown came while waiting (for PostgreSQL, typically): leave the deliveries unacked.
#[derive(Debug, thiserror::Error)]
#[error("stopped before the batch could be stored")]
struct Stopped;

/// Why a RabbitMQ session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Unreachable(#[from] amqp::Unreachable),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    ConsumerCancelled,
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("the publishing stage ended")]
    PipelineClosed,
}

struct Worker {
    settings: WorkerSettings,
    db: DatabaseConnection,
    health: Arc<Health>,
    stop: CancellationToken,
}

/// One delivery of a batch.
struct Inbound {
    delivery: Delivery,
    received: Instant,
    parsed: Result<SignupRequest, InvalidEvent>,
}

/// A stored batch on its way to the second stage: what each delivery owes before the ack.
struct Committed {
    inbound: Vec<Inbound>,
    actions: Vec<Action>,
    store_time: Duration,
}

/// What must be published (and confirmed) for one delivery before the batch is acked.
enum Action {
    Outcome(OutcomeEvent),
    DeadLetter {
        error: String,
        outcome: Option<OutcomeEvent>,
        counted_as: EventOutcome,
    },
    Retry {
        attempts: u32,
    },
}

impl Worker {
    async fn consume_until_stopped(&self) {
        let mut attempt = 0;
        while !self.stop.is_cancelled() {
            attempt += 1;
            match self.session(&mut attempt).await {
                Ok(()) | Err(SessionError::Stopped(_)) => break,
                Err(error) => {
                    self.health.set_consuming(false);
                    metrics::retry(RetryReason::BrokerUnavailable);
                    warn!(%error, attempt, "RabbitMQ session ended; reconnecting");
                }
            }
            if sleep_or_stop(
                backoff(attempt, RETRY_BASE * 5, OUTAGE_BACKOFF_CAP),
                &self.stop,
            )
            .await
            .is_err()
            {
                break;
            }
        }
        self.health.set_consuming(false);
    }

    /// One connection's life. `Ok` only after a clean drain on shutdown.
    async fn session(&self, attempt: &mut u32) -> Result<(), SessionError> {
        let name = format!(
            "signup-worker {} pid {}",
            self.settings.topology.queue,
            std::process::id()
        );
        let conn = amqp::connect(self.settings.amqp_url.expose(), &name).await?;
        let result = self.consume(&conn, attempt).await;
        // Closing returns whatever we still hold to the queue; on error the connection may be
        // gone already, which is fine.
        let _ = conn.close(200, "signup-worker session ended".into()).await;
        result
    }

    async fn consume(&self, conn: &Connection, attempt: &mut u32) -> Result<(), SessionError> {
        let topology = &self.settings.topology;
        let consume_channel = conn.create_channel().await?;
        topology.declare(&consume_channel).await?;
        // QoS before consume, or the broker may push an unbounded backlog first.
        consume_channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let publish_channel = amqp::confirm_channel(conn).await?;
        let mut consumer = consume_channel
            .basic_consume(
                topology.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.health.set_consuming(true);
        *attempt = 0;
        info!(queue = %topology.queue, prefetch = self.settings.prefetch, batch_size = self.settings.batch_size, "consuming");

        // Two stages, so that storing batch k+1 overlaps publishing and acking batch k. The
        // channel holds one committed batch; with prefetch at three batches the broker keeps
        // the next one coming meanwhile. Batches leave the second stage in delivery order, so
        // each `ack(multiple)` covers exactly its own batch.
        let (committed, to_finish) = tokio::sync::mpsc::channel::<Committed>(1);
        // The negotiated frame size bounds the headers of every copy we publish.
        let frame_max = conn.configuration().frame_max();
        tokio::try_join!(
            self.intake(&consume_channel, &mut consumer, committed),
            self.finish_all(&consume_channel, &publish_channel, to_finish, frame_max),
        )?;
        // Close the channels before the connection, or lapin reports the connection closing
        // under open channels as an error.
        let _ = publish_channel.close(200, "shutting down".into()).await;
        let _ = consume_channel.close(200, "shutting down".into()).await;
        Ok(())
    }

    /// First stage: takes batches of deliveries and stores them. Returns `Ok` after a clean
    /// drain on shutdown; dropping `committed` then lets the second stage finish.
    async fn intake(
        &self,
        consume_channel: &Channel,
        consumer: &mut Consumer,
        committed: tokio::sync::mpsc::Sender<Committed>,
    ) -> Result<(), SessionError> {
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                next = consumer.next() => next,
            };
            let mut batch = Vec::with_capacity(self.settings.batch_size);
            let mut ended = false;
            match first {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SessionError::ConsumerCancelled),
            }
            while batch.len() < self.settings.batch_size {
                match futures_lite::future::poll_once(consumer.next()).await {
                    Some(Some(Ok(d))) => batch.push(d),
                    Some(Some(Err(_))) | Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            let done = self.store_stage(batch).await?;
            committed
                .send(done)
                .await
                .map_err(|_| SessionError::PipelineClosed)?;
            if ended {
                return Err(SessionError::ConsumerCancelled);
            }
        }

        // Shutdown: stop the flow, then finish and ack what the broker already sent us.
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
    async fn finish_all(
        &self,
        consume_channel: &Channel,
        publish_channel: &Channel,
        mut to_finish: tokio::sync::mpsc::Receiver<Committed>,
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
        let inbound: Vec<Inbound> = deliveries
            .into_iter()
            .map(|delivery| Inbound {
                parsed: SignupRequest::parse(&delivery.data),
                delivery,
                received,
            })
            .collect();
        let valid: Vec<&SignupRequest> = inbound
            .iter()
            .filter_map(|i| i.parsed.as_ref().ok())
            .collect();
        let mut resolutions = self.store_with_retries(&valid).await?.into_iter();
        let mut actions = Vec::with_capacity(inbound.len());
        for item in &inbound {
            let action = match &item.parsed {
                Err(invalid) => invalid_action(item, invalid),
                Ok(req) => {
                    let resolution = resolutions
                        .next()
                        .expect("store_with_retries returns one result per request");
                    self.resolved_action(item, req, resolution)
                }
            };
            actions.push(action);
        }
        Ok(Committed {
            inbound,
            actions,
            store_time: received.elapsed(),
        })
    }

    /// Publishes and confirms everything a committed batch owes, then acks the batch.
    async fn finish_stage(
        &self,
        consume_channel: &Channel,
        publish_channel: &Channel,
        batch: Committed,
        frame_max: u32,
    ) -> Result<(), SessionError> {
        let Committed {
            inbound,
            actions,
            store_time,
        } = batch;
        let Some(last_tag) = inbound.last().map(|i| i.delivery.delivery_tag) else {
            return Ok(());
        };
        let started = Instant::now();
        self.publish_actions(publish_channel, &inbound, &actions, frame_max)
            .await?;
        consume_channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
        debug!(
            events = inbound.len(),
            store_ms = store_time.as_millis() as u64,
            publish_ack_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        for (item, action) in inbound.iter().zip(&actions) {
            if let Action::DeadLetter { counted_as, .. } = action {
                metrics::event(*counted_as);
            }
            metrics::processing_duration(item.received.elapsed());
        }
        Ok(())
    }

    /// Stores the batch, retrying as `DbFailure` says. Returns one result per request; an
    /// `Err` is an event that kept failing on its own and must go to the retry queue.
    async fn store_with_retries(
        &self,
        requests: &[&SignupRequest],
    ) -> Result<Vec<Result<Resolution, DbFailure>>, Stopped> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match store::store_batch(&self.db, requests).await {
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
                sleep_or_stop(backoff(attempt, RETRY_BASE, OUTAGE_BACKOFF_CAP), &self.stop).await?;
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
                // and every failed attempt of a batch burns the numbers its earlier rows drew,
                // so a batch is never retried whole.
                let mut results = Vec::with_capacity(requests.len());
                for req in requests {
                    results.extend(Box::pin(self.store_with_retries(&[*req])).await?);
                }
                return Ok(results);
            }
            // One event. Its content refused: no retry can help. Otherwise a few quick
            // attempts here, then the retry queue.
            if permanent || attempt >= IN_PROCESS_ATTEMPTS {
                return Ok(vec![Err(failure)]);
            }
            sleep_or_stop(backoff(attempt, RETRY_BASE, OUTAGE_BACKOFF_CAP), &self.stop).await?;
        }
    }

    /// Counts and logs one stored (or not) valid event, and says what to publish for it.
    fn resolved_action(
        &self,
        item: &Inbound,
        req: &SignupRequest,
        resolution: Result<Resolution, DbFailure>,
    ) -> Action {
        let span = info_span!("signup", event_id = %req.event_id, slug = %req.slug);
        let _entered = span.enter();
        let event_id = req.event_id.to_string();
        match resolution {
            Ok(Resolution::Created { tenant, exhausted }) => {
                metrics::event(EventOutcome::Created);
                if exhausted {
                    metrics::founding_exhausted();
                    debug!(
                        tenant_id = tenant.id,
                        "tenant created without a number: founding programme is full"
                    );
                } else {
                    debug!(tenant_id = tenant.id, founding_member_number = ?tenant.founding_member_number, "tenant created");
                }
                Action::Outcome(OutcomeEvent::completed(
                    &event_id,
                    tenant.id,
                    &tenant.slug,
                    tenant.founding_member_number,
                ))
            }
            Ok(Resolution::Duplicate {
                tenant,
                slug_differs,
            }) => {
                metrics::event(EventOutcome::Duplicate);
                if slug_differs {
                    metrics::conflict(ConflictKind::EventId);
                    warn!(tenant_id = tenant.id, stored_slug = %tenant.slug, "event id already stored with another slug");
                } else {
                    debug!(tenant_id = tenant.id, "duplicate event");
                }
                Action::Outcome(OutcomeEvent::completed(
                    &event_id,
                    tenant.id,
                    &tenant.slug,
                    tenant.founding_member_number,
                ))
            }
            Ok(Resolution::SlugTaken) => {
                metrics::event(EventOutcome::Rejected);
                metrics::conflict(ConflictKind::Slug);
                info!("slug taken by another event");
                Action::Outcome(OutcomeEvent::rejected(
                    Some(event_id),
                    Some(req.slug.to_string()),
                    "slug_taken",
                ))
            }
            Err(failure) => {
                if let Some(reason) = failure.content_reason() {
                    warn!(error = %reason, "PostgreSQL refused the event's content: dead-lettering");
                    return Action::DeadLetter {
                        error: reason,
                        outcome: Some(OutcomeEvent::rejected(
                            Some(event_id),
                            Some(req.slug.to_string()),
                            "invalid",
                        )),
                        counted_as: EventOutcome::Invalid,
                    };
                }
                let attempts = amqp::prior_attempts(
                    &item.delivery.properties,
                    &self.settings.topology.retry_queue(),
                    self.settings.max_deliveries,
                ) + 1;
                if attempts >= self.settings.max_deliveries {
                    warn!(
                        attempts,
                        reason = failure.retry_reason().as_str(),
                        "giving up: dead-lettering"
                    );
                    Action::DeadLetter {
                        error: format!(
                            "failed {attempts} deliveries with transient errors (last: {})",
                            failure.retry_reason().as_str()
                        ),
                        outcome: None,
                        counted_as: EventOutcome::DeadLettered,
                    }
                } else {
                    info!(
                        attempts,
                        reason = failure.retry_reason().as_str(),
                        "parking in the retry queue"
                    );
                    Action::Retry { attempts }
                }
            }
        }
    }

    /// Publishes everything the batch owes, then waits for every confirm. Any failure ends
    /// the session without acking: the batch comes back and resolves as duplicates.
    async fn publish_actions(
        &self,
        channel: &Channel,
        inbound: &[Inbound],
        actions: &[Action],
        frame_max: u32,
    ) -> Result<(), SessionError> {
        let topology = &self.settings.topology;
        let dlq = topology.dead_letter_queue();
        let retry_queue = topology.retry_queue();
        let mut pending: Vec<(PublisherConfirm, &str)> = Vec::with_capacity(actions.len() * 2);
        for (item, action) in inbound.iter().zip(actions) {
            let outcome = match action {
                Action::Outcome(o) => Some(o),
                Action::DeadLetter { error, outcome, .. } => {
                    let props = amqp::copy_properties(
                        &item.delivery.properties,
                        vec![(ERROR_HEADER, AMQPValue::LongString(error.as_str().into()))],
                        frame_max,
                    );
                    let c =
                        amqp::publish(channel, "", &dlq, &item.delivery.data, props, true).await?;
                    pending.push((c, dlq.as_str()));
                    outcome.as_ref()
                }
                Action::Retry { attempts } => {
                    let delay = backoff(*attempts, RETRY_QUEUE_BASE, RETRY_QUEUE_CAP);
                    let props = amqp::copy_properties(
                        &item.delivery.properties,
                        vec![(
                            ATTEMPTS_HEADER,
                            AMQPValue::LongLongInt(i64::from(*attempts)),
                        )],
                        frame_max,
                    )
                    .with_expiration(delay.as_millis().to_string().into());
                    let c =
                        amqp::publish(channel, "", &retry_queue, &item.delivery.data, props, true)
                            .await?;
                    pending.push((c, retry_queue.as_str()));
                    None
                }
            };
            if let Some(o) = outcome {
                let c = amqp::publish(
                    channel,
                    &topology.exchange,
                    &o.kind,
                    &o.body(),
                    o.properties(),
                    false,
                )
                .await?;
                pending.push((c, topology.exchange.as_str()));
            }
        }
        for (confirm, target) in pending {
            amqp::confirmed(confirm, target).await?;
        }
        Ok(())
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

fn invalid_action(item: &Inbound, invalid: &InvalidEvent) -> Action {
    let (event_id, slug) = best_effort_ids(&item.delivery);
    let span = info_span!(
        "signup",
        event_id = event_id.as_deref().unwrap_or(""),
        slug = slug.as_deref().unwrap_or("")
    );
    let _entered = span.enter();
    warn!(error = %invalid, "invalid event: dead-lettering");
    Action::DeadLetter {
        error: format!("invalid: {invalid}"),
        outcome: Some(OutcomeEvent::rejected(event_id, slug, "invalid")),
        counted_as: EventOutcome::Invalid,
    }
}

/// For an invalid event's outcome: the body's event id if it is a UUID, else the AMQP
/// `message_id`; the body's slug if it is a string.
fn best_effort_ids(delivery: &Delivery) -> (Option<String>, Option<String>) {
    let json: Option<serde_json::Value> = if delivery.data.len() <= crate::domain::MAX_BODY_BYTES {
        serde_json::from_slice(&delivery.data).ok()
    } else {
        None
    };
    let body_id = json
        .as_ref()
        .and_then(|v| v.get("event_id")?.as_str().map(str::to_owned))
        .filter(|s| uuid::Uuid::parse_str(s).is_ok());
    let event_id = body_id.or_else(|| {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
    });
    let slug = json
        .as_ref()
        .and_then(|v| v.get("tenant")?.get("slug")?.as_str().map(str::to_owned));
    (event_id, slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..30 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            let step = (Duration::from_millis(100) * 2u32.pow(attempt.min(20) - 1))
                .min(Duration::from_secs(5));
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }
}
