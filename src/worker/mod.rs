//! `signup-worker run`: consume, store in batches, publish outcomes, ack after commit.
//!
//! Layout:
//! - this file owns the process: the health/metrics listener, the database connection (with
//!   migrations), the founding task (gauges and reclaiming), and the session loop, which
//!   reconnects to RabbitMQ with backoff whenever a session ends in error. Shutdown is a
//!   future passed in by the caller.
//! - [`pipeline`]: one session's two stages, intake (batch, parse, store) and finish (publish
//!   what each delivery owes, confirm, ack).
//! - [`disposition`]: what happens to one delivery, as a pure function of what the pipeline
//!   learned; and the one place where a delivery is logged and counted, after its ack.
//! - [`retry`]: backoff and waits that give way to shutdown.
//!
//! A session holds one AMQP connection with two channels: one consumes (manual acks, bounded
//! prefetch), one publishes outcomes, retries and dead letters in confirm mode.

mod disposition;
mod pipeline;
mod retry;

pub use retry::backoff;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Connection;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::amqp::{self, PublishError, Topology};
use crate::db::DbTarget;
use crate::error::{classify_db, DbFailure, RetryReason};
use crate::founding;
use crate::http::Health;
use crate::metrics;
use crate::secrets::SecretUrl;

use pipeline::Committed;
use retry::{sleep_or_stop, Stopped};

/// First wait between attempts to reach PostgreSQL or RabbitMQ; doubles per attempt.
const CONNECT_RETRY_BASE: Duration = Duration::from_millis(500);
/// Ceiling of the wait between attempts to reach PostgreSQL or RabbitMQ during an outage. A
/// replica must be consuming again within 5 s of a broker node coming back (issue 11): with
/// the jitter the wait is 1-2 s, plus the connection itself. Each attempt tries every address
/// of the list once, so a few replicas cost a restarting node a handful of TCP connects a
/// second, which it shrugs off.
const OUTAGE_BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often the founding gauges are read from the database, and burned numbers reclaimed.
/// The gauges are the same on every replica, so a few seconds of lag is harmless; a burned
/// number is reclaimed on the second tick after it was drawn (the reclaimer looks up to the
/// position of the previous tick), within the contract's 10 s.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);
/// Connections per replica: the store transaction in flight, the gauge refresher, one for a
/// store attempt of a session that just ended (it runs to its COMMIT or ROLLBACK as a task of
/// its own while the next session starts), and a spare for a connection being replaced.
const DB_POOL_SIZE: u32 = 4;

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

/// Runs the worker until `shutdown` completes, then drains what it holds and returns.
pub async fn run(
    settings: WorkerSettings,
    metrics_handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuse a mistyped URL (or a missing certificate file) before binding anything: retrying
    // it would loop forever.
    let broker = amqp::Endpoints::parse(settings.amqp_url.expose())?;
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
        broker,
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
                target.migrate(settings.founding_capacity, &[]).await?;
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
        if sleep_or_stop(
            backoff(attempt, CONNECT_RETRY_BASE, OUTAGE_BACKOFF_CAP),
            stop,
        )
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
        match founding::founding_stats(&db).await {
            Ok(stats) => {
                let upto = reclaim_upto.unwrap_or(stats.position);
                reclaim_upto = Some(stats.position);
                let stats = match founding::reclaim(&db, upto).await {
                    Ok(Some(0)) => stats,
                    Ok(Some(n)) => {
                        metrics::founding_reclaimed(n as u64);
                        info!(
                            reclaimed = n,
                            upto, "burned founding numbers returned to the pool"
                        );
                        founding::founding_stats(&db).await.unwrap_or(stats)
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
    broker: amqp::Endpoints,
    db: DatabaseConnection,
    health: Arc<Health>,
    stop: CancellationToken,
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
                backoff(attempt, CONNECT_RETRY_BASE, OUTAGE_BACKOFF_CAP),
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
        let conn = amqp::connect(&self.broker, &name).await?;
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
}
