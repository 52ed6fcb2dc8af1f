//! Integration tests: one binary, a shared harness. Every test owns a fresh database and its
//! own exchange and queue names, drives the real `signup-worker` binary against the real
//! PostgreSQL and RabbitMQ of this machine, and waits on conditions under deadlines.

mod helpers;

mod cli;
mod concurrency;
mod dlq;
mod faults;
mod hostile;
mod in_process;
mod invalid;
mod migrations;
mod outcomes;
mod publishers;
mod reclaim;
mod secrets;
mod storable;
