//! Runs one parsed command line. `main` only parses, sets up logging and calls [`execute`].

use anyhow::Context as _;

use crate::cli::{Cli, Command, DlqCommand, FoundingCommand};
use crate::worker::{self, WorkerSettings};
use crate::{admin, amqp, db::DbTarget, dlq, metrics, publish, secrets};

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    let topology = global.topology();
    // Both URLs are checked before any I/O, so a mistyped one is one clear line (password
    // masked) and never a connection attempt, a retry loop or a database named after it. The
    // broker list is parsed in each arm, before that arm's first connection.
    if matches!(
        cli.command,
        Command::Migrate(_) | Command::Founding { .. } | Command::Run(_) | Command::Status(_)
    ) {
        secrets::check_database_url(global.database_url.expose())?;
    }
    let broker = || amqp::Endpoints::parse(global.amqp_url.expose());
    let database_url = global.database_url.expose();
    match cli.command {
        Command::Schema(args) => print!("{}", args.name.text()),
        Command::Migrate(args) => {
            DbTarget::parse(database_url)?
                .migrate(args.capacity.founding_capacity, &args.grant_to)
                .await?;
            println!("migrations applied");
            for role in &args.grant_to {
                println!("granted role {role} what `run --no-migrate` needs");
            }
        }
        Command::Run(args) => {
            let handle = metrics::install().context("installing the metrics recorder")?;
            let settings = WorkerSettings {
                database_url: global.database_url.clone(),
                amqp_url: global.amqp_url.clone(),
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
            let report = publish::publish(&broker()?, &topology, &args).await?;
            println!("{}", report.summary());
        }
        Command::Status(args) => {
            let report = admin::status(database_url, &broker()?, &topology).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.human(&topology));
            }
        }
        Command::Founding {
            command: FoundingCommand::SetCapacity { capacity },
        } => {
            let stats = admin::set_capacity(database_url, capacity).await?;
            println!(
                "founding capacity is now {} (position {}, remaining {})",
                stats.capacity,
                stats.position,
                stats.remaining()
            );
        }
        Command::Founding {
            command: FoundingCommand::List { json, csv },
        } => {
            let list = admin::founding_list(database_url).await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else if csv {
                print!("{}", admin::founding_csv(&list)?);
            } else {
                print!("{}", admin::founding_human(&list));
            }
        }
        Command::Dlq { command } => match command {
            DlqCommand::List { json, limit } => {
                let listing = dlq::list(&broker()?, &topology, limit).await?;
                if json {
                    println!("{}", serde_json::to_string(&listing)?);
                } else {
                    print!("{}", listing.human());
                }
            }
            DlqCommand::Replay { limit, reason } => {
                let moved = dlq::replay(&broker()?, &topology, limit, reason.as_deref()).await?;
                println!(
                    "replayed {} dead-lettered messages onto {}{}",
                    moved.done,
                    topology.queue,
                    reason_note(reason.as_deref(), moved.skipped)
                );
            }
            DlqCommand::Purge { yes: false, .. } => anyhow::bail!(
                "dlq purge deletes dead letters for good: add --yes to confirm (dlq list shows them)"
            ),
            DlqCommand::Purge { yes: true, reason } => {
                let moved = dlq::purge(&broker()?, &topology, reason.as_deref()).await?;
                println!(
                    "purged {} dead letters from {}{}",
                    moved.done,
                    topology.dead_letter_queue(),
                    reason_note(reason.as_deref(), moved.skipped)
                );
            }
        },
    }
    Ok(())
}

/// The end of a `dlq replay`/`dlq purge` line: which messages `--reason` chose.
fn reason_note(reason: Option<&str>, skipped: u64) -> String {
    reason.map_or_else(String::new, |r| {
        format!(" (reason containing {r:?}; {skipped} not matching left in place)")
    })
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
