//! The command line of contract section 1 and the settings of section 2. Every setting is a
//! flag and an environment variable; the flag wins.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::amqp::{QueueType, Topology};
use crate::schema::Schema;
use crate::secrets::SecretUrl;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/signup_worker";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Parser)]
#[command(
    name = "signup-worker",
    version,
    about = "Consumes tenant-signup events from RabbitMQ and creates tenants in PostgreSQL exactly once, \
             numbering the first N non-demo tenants as founding members.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// PostgreSQL URL (libpq's sslmode, sslrootcert, sslcert, sslkey select TLS)
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true, hide_default_value = true)]
    pub database_url: SecretUrl,
    /// RabbitMQ URL
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, global = true, hide_env_values = true, hide_default_value = true)]
    pub amqp_url: SecretUrl,
    /// Durable topic exchange that publishers send to and outcomes go to
    #[arg(
        long,
        env = "SIGNUP_EXCHANGE",
        default_value = "tenant.events",
        global = true
    )]
    pub signup_exchange: String,
    /// Queue bound with tenant.signup.requested; `<queue>.retry` and `<queue>.dlq` go with it
    #[arg(
        long,
        env = "SIGNUP_QUEUE",
        default_value = "tenant.signups",
        global = true
    )]
    pub signup_queue: String,
    /// Type of the queues
    #[arg(
        long,
        env = "SIGNUP_QUEUE_TYPE",
        default_value = "quorum",
        value_parser = queue_type,
        global = true
    )]
    pub signup_queue_type: QueueType,
    /// Log format
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    pub fn topology(&self) -> Topology {
        Topology {
            exchange: self.signup_exchange.clone(),
            queue: self.signup_queue.clone(),
            queue_type: self.signup_queue_type,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed and apply pending migrations (under an advisory lock)
    Migrate(MigrateArgs),
    /// Run the worker until SIGTERM or SIGINT
    Run(RunArgs),
    /// Publish synthetic signup events (load and demo), with publisher confirms
    Publish(PublishArgs),
    /// Show the founding-member programme and the queue depths
    Status(StatusArgs),
    /// Manage the founding-member programme
    Founding {
        #[command(subcommand)]
        command: FoundingCommand,
    },
    /// Manage the dead-letter queue
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the JSON Schema (draft 2020-12) of the signup event or of an outcome event, as
    /// built into this binary
    #[command(
        long_about = "Print the JSON Schema (draft 2020-12) of the signup event or of an outcome \
                      event, as built into this binary. Without an argument it prints the schema \
                      of the signup event (`request`), the one publishers validate against, so \
                      stdout is always one schema document. docs/asyncapi.yaml in the repository \
                      describes the channels and references the same schemas."
    )]
    Schema(SchemaArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// Which schema: the signup event publishers send, or one of the outcome events
    #[arg(value_enum, default_value_t = Schema::Request)]
    pub name: Schema,
}

#[derive(Debug, Clone, Args)]
pub struct CapacityArg {
    /// Founding-member capacity N, used only when the founding sequence is first created
    #[arg(long, env = "FOUNDING_CAPACITY", default_value_t = migration::DEFAULT_FOUNDING_CAPACITY, value_parser = clap::value_parser!(i32).range(1..))]
    pub founding_capacity: i32,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub capacity: CapacityArg,
    /// Grant this existing role exactly what `run --no-migrate` needs (no DDL, no ownership);
    /// repeat for several roles
    #[arg(long = "grant-to", value_name = "ROLE")]
    pub grant_to: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capacity: CapacityArg,
    /// Listener for /metrics, /healthz and /readyz
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// Unacked deliveries the broker may push to this replica: three batches, one being
    /// published and acked, one being stored, one filling. Bounded so that memory stays flat
    /// and the backlog stays visible as ready messages to autoscalers.
    #[arg(long, env = "PREFETCH", default_value_t = 1500, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Most events stored in one transaction (at most PREFETCH); each takes two advisory
    /// locks, so replicas x 2 x BATCH_SIZE must stay under PostgreSQL's lock table
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Deliveries of one event that end in a transient error before it is dead-lettered
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
    /// Do not apply pending migrations at start
    #[arg(long)]
    pub no_migrate: bool,
}

/// The transport names its queue types; the command line only parses them.
fn queue_type(s: &str) -> Result<QueueType, String> {
    QueueType::ALL
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("`{s}` is not a queue type: use quorum or classic"))
}

fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a ratio between 0 and 1"))
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(format!(
            "`{s}` must be a positive number of messages per second"
        ))
    }
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Number of messages to publish
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Share of messages that republish an earlier event (same event id)
    #[arg(long, default_value = "0", value_parser = ratio)]
    pub duplicates: f64,
    /// Share of messages that are new events reusing an earlier slug
    #[arg(long, default_value = "0", value_parser = ratio)]
    pub slug_collisions: f64,
    /// Share of messages that are invalid (not JSON, schema, size)
    #[arg(long, default_value = "0", value_parser = ratio)]
    pub invalid: f64,
    /// Share of new events that are demo tenants
    #[arg(long, default_value = "0", value_parser = ratio)]
    pub demo: f64,
    /// Cap on messages per second (default: as fast as confirms allow)
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Do not draw a progress bar
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FoundingCommand {
    /// List the numbered tenants in number order (number, slug, business name, created at)
    List {
        /// Print one JSON object, with the pooled and retired numbers too
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV with a header line
        #[arg(long)]
        csv: bool,
    },
    /// Change the founding-member capacity; refuses to go below the highest number handed out
    SetCapacity {
        /// The new capacity N
        capacity: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters (message id, event id, slug, reason, when it died, deliveries)
    /// and a count per reason, without removing any
    List {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// At most this many messages, from the head of the queue (default: all)
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Move the messages now in the dead-letter queue back onto the main queue
    Replay {
        /// At most this many messages (default: all)
        #[arg(long)]
        limit: Option<u64>,
        /// Only messages whose reason (x-signup-error) contains this text; the others stay
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Delete dead letters for good: all, or those whose reason contains TEXT
    Purge {
        /// Confirm the deletion; without it nothing is deleted
        #[arg(long)]
        yes: bool,
        /// Only messages whose reason (x-signup-error) contains this text; the others stay
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "signup-worker",
            "publish",
            "--count",
            "5",
            "--duplicates",
            "0.5",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Publish(p) if p.count == 5 && p.duplicates == 0.5));
        assert!(Cli::try_parse_from(["signup-worker", "publish", "--duplicates", "2"]).is_err());
        assert!(Cli::try_parse_from(["signup-worker", "run", "--bogus"]).is_err());
        let cli = Cli::try_parse_from(["signup-worker", "schema"]).unwrap();
        assert!(matches!(cli.command, Command::Schema(a) if a.name == Schema::Request));
        let cli = Cli::try_parse_from(["signup-worker", "schema", "rejected"]).unwrap();
        assert!(matches!(cli.command, Command::Schema(a) if a.name == Schema::Rejected));
        assert!(Cli::try_parse_from(["signup-worker", "schema", "bogus"]).is_err());
        let cli = Cli::try_parse_from(["signup-worker", "founding", "set-capacity", "7"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Founding {
                command: FoundingCommand::SetCapacity { capacity: 7 }
            }
        ));
    }
}
