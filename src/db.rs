//! PostgreSQL connections and migrations.

use std::time::Duration;

use migration::{schema, Migrator, MigratorTrait, FOUNDING_CAPACITY_SETTING};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::ConnectOptions as _;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqlxPostgresConnector, Statement,
    TransactionTrait,
};

/// How long one attempt to get a connection may take. Bounds every one-shot command's wait
/// on an unreachable server well under the contract's 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// See [`DbTarget::parse`].
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

/// Arbitrary, fixed key of the advisory lock that serialises `migrate` across replicas
/// (sea-orm-migration takes none). Spells "signupmg" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x7369_676e_7570_6d67;

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error(transparent)]
    Url(#[from] crate::secrets::UrlError),
    #[error("invalid DATABASE_URL {url}: {problem}")]
    BadUrl { url: String, problem: String },
    // `cause`, not `source`: the message already carries it, and a `source` would make the
    // one-line error report print the same cause again.
    #[error("cannot reach PostgreSQL at {server}: {cause}")]
    Unreachable { server: String, cause: DbErr },
    #[error("cannot reach PostgreSQL at {server}: {problem}")]
    Certificate { server: String, problem: String },
    #[error("migration failed on {server}: {cause}")]
    Migration { server: String, cause: DbErr },
    #[error("cannot grant to role `{role}` on {server}: no such role (create it first, e.g. CREATE ROLE \"{role}\" LOGIN PASSWORD '...'); nothing was granted")]
    NoSuchRole { server: String, role: String },
}

/// Parsed connection settings, with a printable name of the server that never shows the
/// password.
#[derive(Clone)]
pub struct DbTarget {
    options: PgConnectOptions,
    pub server: String,
}

impl DbTarget {
    pub fn parse(url: &str) -> Result<Self, DbSetupError> {
        crate::secrets::check_database_url(url)?;
        let options: PgConnectOptions =
            url.parse()
                .map_err(|e: sea_orm::sqlx::Error| DbSetupError::BadUrl {
                    url: crate::secrets::mask(url),
                    problem: e.to_string(),
                })?;
        // Statements are traced by our own spans; sqlx's per-statement log would flood. (The
        // batch lookup's plan is kept robust to the table's growth inside its function, see
        // migration 7, so sessions keep the default plan cache.)
        //
        // idle_in_transaction_session_timeout: a numbering transaction holds the numbering
        // lock until it ends, and the reclaimer cannot return a burned number to the pool
        // while any such transaction may still commit (see the reclaim migration). A worker
        // that stops between statements (SIGSTOP, a frozen VM, a client that vanished without
        // closing its socket) would hold it for ever; PostgreSQL ends such a session after
        // this long, its numbers are then reclaimed, and the worker, if it wakes, finds its
        // connection gone and stores the batch again. The worker never idles in a transaction
        // for more than milliseconds, so 10 s is generous.
        let options = options
            .options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )])
            .log_statements(log::LevelFilter::Trace)
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(2));
        let server = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("postgres")
        );
        Ok(Self { options, server })
    }

    pub fn database(&self) -> &str {
        self.options.get_database().unwrap_or("postgres")
    }

    fn unreachable(&self, cause: DbErr) -> DbSetupError {
        let server = self.server.clone();
        // A certificate failure reads as rustls's type names; say what they mean.
        let raw = cause.to_string();
        match crate::tls::explain(&raw) {
            Some(_) => DbSetupError::Certificate {
                server,
                problem: crate::tls::describe(raw),
            },
            None => DbSetupError::Unreachable { server, cause },
        }
    }

    /// A pool of at most `max_connections`. Connects eagerly, so an unreachable server is
    /// reported here and not at the first query.
    pub async fn connect(&self, max_connections: u32) -> Result<DatabaseConnection, DbSetupError> {
        self.connect_with(self.options.clone(), max_connections)
            .await
    }

    async fn connect_with(
        &self,
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<DatabaseConnection, DbSetupError> {
        // One plain connection first: the pool retries a refused connection until its
        // acquire timeout and then reports only "pool timed out"; this reports the real cause
        // (refused, unknown database, authentication) at once.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| {
                self.unreachable(DbErr::Custom(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            })?
            .map_err(|e| self.unreachable(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))))?;
        let _ = sea_orm::sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            // A broken connection fails its statement, which the worker classifies and
            // retries; pinging before every acquire would cost a round trip per batch.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| self.unreachable(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))))?;
        Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
    }

    /// Creates the database if it does not exist, through the server's `postgres` database.
    pub async fn ensure_database(&self) -> Result<(), DbSetupError> {
        let admin = self
            .connect_with(self.options.clone().database("postgres"), 1)
            .await?;
        let name = self.database().to_owned();
        let exists = admin
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                [name.clone().into()],
            ))
            .await
            .map_err(|e| self.unreachable(e))?
            .is_some();
        if !exists {
            let sql = format!("CREATE DATABASE {}", schema::quote_ident(&name));
            match admin.execute_unprepared(&sql).await {
                Ok(_) => tracing::info!(database = %name, "created database"),
                // Another replica created it between our check and our CREATE.
                Err(e) if crate::error::is_database_already_created(&e) => {}
                Err(e) => {
                    return Err(DbSetupError::Migration {
                        server: self.server.clone(),
                        cause: e,
                    })
                }
            }
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// `signup-worker migrate`: creates the database if needed, then applies pending
    /// migrations in one transaction that holds an advisory lock, so replicas starting together
    /// run them once. `founding_capacity` is used only if this run creates the sequence. Each
    /// role of `grant_to` gets what `run --no-migrate` needs, in the same transaction: all the
    /// grants or none.
    pub async fn migrate(
        &self,
        founding_capacity: i32,
        grant_to: &[String],
    ) -> Result<(), DbSetupError> {
        self.ensure_database().await?;
        let db = self.connect(1).await?;
        let fail = |cause| DbSetupError::Migration {
            server: self.server.clone(),
            cause,
        };
        let run = async {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
            txn.execute_unprepared(&format!(
                "SET LOCAL {FOUNDING_CAPACITY_SETTING} = '{founding_capacity}'"
            ))
            .await?;
            let pending = Migrator::get_pending_migrations(&txn).await?.len();
            Migrator::up(&txn, None).await?;
            for role in grant_to {
                let exists = txn
                    .query_one(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT 1 AS one FROM pg_roles WHERE rolname = $1",
                        [role.clone().into()],
                    ))
                    .await?
                    .is_some();
                if !exists {
                    return Ok(Err(role.clone()));
                }
                for grant in schema::runtime_grants(&schema::quote_ident(role)) {
                    txn.execute_unprepared(&grant).await?;
                }
            }
            txn.commit().await?;
            Ok::<_, DbErr>(Ok(pending))
        };
        let applied = run
            .await
            .map_err(fail)?
            .map_err(|role| DbSetupError::NoSuchRole {
                server: self.server.clone(),
                role,
            })?;
        for role in grant_to {
            tracing::info!(role = %role, "granted what `run --no-migrate` needs");
        }
        tracing::info!(applied, database = %self.database(), "migrations are up to date");
        let _ = db.close().await;
        Ok(())
    }
}
