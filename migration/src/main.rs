//! Development CLI for the migrations (`cargo run -p migration -- up|down|status`).
//! Production uses `signup-worker migrate`, which adds the advisory lock.
use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}
