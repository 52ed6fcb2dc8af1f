//! Runs one parsed command line. `main` only parses, sets up logging and calls [`execute`].

use anyhow::Context as _;

use crate::cli::{Cli, Command, DlqCommand, FoundingCommand};
use crate::worker::{self, WorkerSettings};
use crate::{admin, db::DbTarget, metrics, publish};

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    let topology = global.topology();
    match cli.command {
        Command::Migrate(args) => {
            DbTarget::parse(&global.database_url)?
                .migrate(args.capacity.founding_capacity)
                .await?;
            println!("migrations applied");
        }
        Command::Run(args) => {
            let handle = metrics::install().context("installing the metrics recorder")?;
            let settings = WorkerSettings {
                database_url: global.database_url,
                amqp_url: global.amqp_url,
                topology,
                max_deliveries: args.max_deliveries,
                prefetch: args.prefetch,
                batch_size: usize::from(args.batch_size.min(args.prefetch)),
                founding_capacity: args.capacity.founding_capacity,
                migrate: !args.no_migrate,
                metrics_addr: args.metrics_addr,
            };
            worker::run(settings, handle, shutdown_signal()).await?;
        }
        Command::Publish(args) => {
            let report = publish::publish(&global.amqp_url, &topology, &args).await?;
            println!("{}", report.summary());
        }
        Command::Status(args) => {
            let report = admin::status(&global.database_url, &global.amqp_url, &topology).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.human(&topology));
            }
        }
        Command::Founding {
            command: FoundingCommand::SetCapacity { capacity },
        } => {
            let stats = admin::set_capacity(&global.database_url, capacity).await?;
            println!(
                "founding capacity is now {} (position {}, remaining {})",
                stats.capacity,
                stats.position,
                stats.remaining()
            );
        }
        Command::Dlq {
            command: DlqCommand::Replay { limit },
        } => {
            let moved = admin::dlq_replay(&global.amqp_url, &topology, limit).await?;
            println!(
                "replayed {moved} dead-lettered messages onto {}",
                topology.queue
            );
        }
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
