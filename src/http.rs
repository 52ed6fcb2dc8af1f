//! The small HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process runs),
//! `/readyz` (connected to PostgreSQL and RabbitMQ, and consuming).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

    pub fn set_database(&self, up: bool) {
        self.database.store(up, Ordering::Relaxed);
    }

    pub fn set_store_blocked(&self, blocked: bool) {
        self.store_blocked.store(blocked, Ordering::Relaxed);
    }

    pub fn set_consuming(&self, up: bool) {
        self.consuming.store(up, Ordering::Relaxed);
    }
}

pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                let ready = health.ready();
                std::future::ready(if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                })
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}
