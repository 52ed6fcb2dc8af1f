//! What a task works on: a database and the queues of one exchange, started clean, and the
//! binary under test pointed at them.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use migration::schema::{quote_ident, TENANTS};
use sea_orm::{ConnectOptions, ConnectionTrait, Database as Orm, DatabaseConnection};
use tokio::process::Command;

use crate::ui::show;

/// The binary every task drives, relative to the workspace root.
pub const BIN: &str = "target/release/signup-worker";

/// Bounds each connection attempt, so that a task on a dead server fails with a message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A database that a task may drop and create again.
pub struct Database {
    pub url: String,
    pub name: String,
    /// The maintenance database `postgres` on the same server, with the same credentials.
    admin_url: String,
    /// `host:port`, for messages: never the password.
    pub server: String,
}

impl Database {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        // The url crate's errors never quote the input, so a password cannot leak from here.
        let mut parsed = url::Url::parse(url).context("DATABASE_URL is not a URL")?;
        let path = parsed.path().trim_start_matches('/');
        let name = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .context("the database name in DATABASE_URL is not UTF-8")?
            .into_owned();
        ensure!(
            !name.is_empty() && name != "postgres",
            "refusing to use database '{name}': a task drops its database"
        );
        let server = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("localhost"),
            parsed.port().unwrap_or(5432)
        );
        parsed.set_path("/postgres");
        Ok(Self {
            url: url.to_owned(),
            name,
            admin_url: parsed.into(),
            server,
        })
    }

    pub async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        connect(&self.url, &self.server).await
    }

    pub async fn drop_database(&self, shown: bool) -> anyhow::Result<()> {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        );
        if shown {
            show(&format!("{sql}   (on {})", self.server));
        }
        let admin = connect(&self.admin_url, &self.server).await?;
        admin.execute_unprepared(&sql).await?;
        admin.close().await?;
        Ok(())
    }

    /// The server's version, such as `15.20`.
    pub async fn server_version(&self) -> anyhow::Result<String> {
        let admin = connect(&self.admin_url, &self.server).await?;
        let row = admin
            .query_one(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                "SHOW server_version",
            ))
            .await?
            .context("SHOW server_version returned no row")?;
        admin.close().await?;
        let version: String = row.try_get("", "server_version")?;
        Ok(version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn tenant_count(db: &DatabaseConnection) -> anyhow::Result<i64> {
        let row = db
            .query_one(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT count(*) AS n FROM {TENANTS}"),
            ))
            .await?
            .context("count(*) returned no row")?;
        Ok(row.try_get("", "n")?)
    }
}

async fn connect(url: &str, server: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(2)
        .connect_timeout(CONNECT_TIMEOUT)
        .sqlx_logging(false);
    Orm::connect(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {server}"))
}

/// A database plus the exchange and queue names that the worker takes from its environment.
pub struct Target {
    pub db: Database,
    amqp_url: String,
    pub exchange: String,
    pub queue: String,
}

/// Message counts of the three queues, from `status --json`.
pub struct Depths {
    pub main: u64,
    pub retry: u64,
    pub dlq: u64,
}

impl Target {
    pub fn new(
        database_url: &str,
        amqp_url: &str,
        exchange: &str,
        queue: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            db: Database::new(database_url)?,
            amqp_url: amqp_url.to_owned(),
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
        })
    }

    /// A task drops its database and deletes its queues: it refuses names that do not contain
    /// `word` (such as the production defaults) unless `forced`.
    pub fn check_names(&self, word: &str, forced: bool, force_var: &str) -> anyhow::Result<()> {
        let looks_right = self.db.name.contains(word) && self.queue.contains(word);
        if !(forced || looks_right) {
            bail!(
                "this task drops its database and deletes its queues; '{}' / '{}' do not look like {word} names (set {force_var}=1 to insist)",
                self.db.name,
                self.queue
            );
        }
        Ok(())
    }

    pub fn queues(&self) -> [String; 3] {
        let q = &self.queue;
        [q.clone(), format!("{q}.retry"), format!("{q}.dlq")]
    }

    /// The binary with this target's settings in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("DATABASE_URL", &self.db.url)
            .env("AMQP_URL", &self.amqp_url)
            .env("SIGNUP_EXCHANGE", &self.exchange)
            .env("SIGNUP_QUEUE", &self.queue);
        cmd
    }

    /// No database and no queues: the next `migrate` and `run` start from nothing.
    pub async fn start_clean(&self, shown: bool) -> anyhow::Result<()> {
        self.db.drop_database(shown).await?;
        let conn = self.amqp().await?;
        for queue in self.queues() {
            if shown {
                show(&format!("delete queue {queue}"));
            }
            // One channel each: a failed delete closes its channel. A queue that does not
            // exist yet is what we want.
            let channel = conn.create_channel().await?;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "deleted".into()).await;
        }
        let _ = conn.close(200, "clean start done".into()).await;
        Ok(())
    }

    /// The first broker of `AMQP_URL` (a comma-separated list for a cluster) that answers.
    pub async fn amqp(&self) -> anyhow::Result<Connection> {
        let mut last = None;
        for uri in self.amqp_url.split(',').map(str::trim) {
            let connect = Connection::connect(uri, ConnectionProperties::default());
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("no answer".into()),
            }
        }
        bail!("cannot connect to RabbitMQ: {}", last.unwrap_or_default())
    }

    /// The queue depths that `status --json` reports (contract section 5).
    pub async fn depths(&self) -> anyhow::Result<Depths> {
        let out = self.command().args(["status", "--json"]).output().await?;
        ensure!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let messages = |queue: &str| {
            json["queues"][queue]["messages"]
                .as_u64()
                .with_context(|| format!("status --json has no queues.{queue}.messages"))
        };
        Ok(Depths {
            main: messages("main")?,
            retry: messages("retry")?,
            dlq: messages("dlq")?,
        })
    }
}
