//! Integration tests: one binary, a shared harness. Every test owns a fresh database and its
//! own exchange and queue names, drives the real `signup-worker` binary against the real
//! PostgreSQL and RabbitMQ of this machine, and waits on conditions under deadlines.

mod helpers;
// The private-server harness serves the TLS and cluster tests; not every accessor is used yet.
#[allow(dead_code)]
mod private;

mod brokers;
mod cli;
mod cluster;
mod concurrency;
mod dlq;
mod faults;
mod hostile;
mod in_process;
mod invalid;
mod migrations;
mod otlp;
mod outcomes;
mod private_smoke;
mod publishers;
mod reclaim;
mod secrets;
mod storable;
mod tls;
