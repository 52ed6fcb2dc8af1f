//! Schema migrations for signup-worker, one file per migration, each with `up` and `down`.
//!
//! Run them through `signup-worker migrate` (which takes a PostgreSQL advisory lock, creates
//! the database if needed and sets the initial founding capacity) rather than through the
//! bare `migration` CLI in this crate, which is kept for development (`up`, `down`, `status`).

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_tenants;
mod m20261124_000002_founding_numbers;
mod m20261124_000003_signup_locks;
mod m20261128_000004_reclaim_numbers;
mod m20261128_000005_cheap_numbering_when_full;
mod m20261128_000006_assigned_count;
mod m20261128_000007_lock_and_read;
mod m20261203_000008_store_distinct;
pub mod schema;

pub use m20261128_000004_reclaim_numbers::NUMBERING_LOCK;

/// Name of the session setting that carries the initial founding capacity into the migration
/// that creates the sequence. `signup-worker migrate` sets it with `SET LOCAL` in the
/// migration transaction; when it is absent the sequence is created with
/// [`DEFAULT_FOUNDING_CAPACITY`].
pub const FOUNDING_CAPACITY_SETTING: &str = "signup_worker.founding_capacity";

/// Capacity used when nothing else is said, as in the contract (`FOUNDING_CAPACITY`).
pub const DEFAULT_FOUNDING_CAPACITY: i32 = 100;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_tenants::Migration),
            Box::new(m20261124_000002_founding_numbers::Migration),
            Box::new(m20261124_000003_signup_locks::Migration),
            Box::new(m20261128_000004_reclaim_numbers::Migration),
            Box::new(m20261128_000005_cheap_numbering_when_full::Migration),
            Box::new(m20261128_000006_assigned_count::Migration),
            Box::new(m20261128_000007_lock_and_read::Migration),
            Box::new(m20261203_000008_store_distinct::Migration),
        ]
    }
}
