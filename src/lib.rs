//! signup-worker: consumes tenant-signup events from RabbitMQ and creates tenants in
//! PostgreSQL exactly once, numbering the first N non-demo tenants as founding members.
//!
//! # Layout
//!
//! - [`domain`]: the event, parsed into domain types before any I/O.
//! - [`store`]: one transaction per batch; duplicates and slug conflicts are resolved before
//!   the numbering trigger can see them, so no number is ever wasted on them.
//! - [`error`]: the one place where database errors are classified (by SQLSTATE and
//!   constraint name) into "wait for the outage" (unreachable, or refusing our statements),
//!   "retry, then dead-letter" (transient) or "dead-letter now" (the event's content).
//! - [`worker`]: the consume loop: batches, retries, dead letters, acks after commit,
//!   reconnection, graceful shutdown.
//! - [`amqp`]: broker addresses (a list, TLS files), topology, confirmed publishing and
//!   outcome events.
//! - [`metrics`]: every metric, declared once. [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`secrets`]: connection URLs checked before any I/O and never printed with a password.
//!   [`tls`]: trust roots and plain words for certificate failures, for both drivers.
//! - [`trace`]: W3C trace context carried from an event to its outcome.
//! - [`schema`]: the JSON Schemas of the events, built in from `docs/schemas/`.
//! - [`cli`], [`app`], [`publish`], [`admin`], [`dlq`], [`db`], [`telemetry`]: the command
//!   line and the one-shot commands.
//!
//! The README explains the design and how it is tested.

pub mod admin;
pub mod amqp;
pub mod app;
pub mod cli;
pub mod db;
pub mod dlq;
pub mod domain;
pub mod error;
pub mod founding;
pub mod http;
pub mod metrics;
pub mod publish;
pub mod schema;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod worker;
