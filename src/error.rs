//! The one place where storage errors are classified into what happens to the deliveries.
//!
//! Classification reads the SQLSTATE and the constraint name from the driver, never the
//! message text. sea-orm's own `DbErr::sql_err()` knows only 23505 and 23503, so the code is
//! reached through the underlying sqlx database error.

use migration::schema::{EVENT_ID_KEY, FOUNDING_NUMBER_INDEX, SLUG_KEY};
use sea_orm::{sqlx, DbErr, RuntimeErr};

/// Why an attempt is retried (`signup_retries_total{reason}`): the classification's output,
/// so it lives here and `metrics` only names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Serialization,
    Deadlock,
    DatabaseUnavailable,
    BrokerUnavailable,
    Other,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serialization => "serialization",
            Self::Deadlock => "deadlock",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Other => "other",
        }
    }
}

/// The unique constraints on the natural keys. The signup locks keep both from firing; if one
/// does (a row written by hand), a retry re-reads and resolves the event.
const NATURAL_KEY_CONSTRAINTS: [&str; 2] = [EVENT_ID_KEY, SLUG_KEY];

/// What a failed storage attempt means for the events it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFailure {
    /// PostgreSQL cannot be reached, is shutting down or out of resources: pause and retry
    /// the same batch until it is back. Never dead-letter for this.
    Unavailable,
    /// PostgreSQL answers but refuses the worker's own statements: a missing privilege, a
    /// missing table or function, a read-only server. No event is at fault and none would
    /// fare better on retry, so this is an outage too, one that an operator must fix: pause,
    /// report it loudly, never dead-letter.
    Misconfigured,
    /// The attempt failed for reasons tied to this transaction; retry with backoff, a bounded
    /// number of times per event, then dead-letter.
    Transient {
        reason: RetryReason,
        /// The partial unique index refused a founding number (`signup_conflicts_total
        /// {kind="founding_number"}`, which must stay 0).
        founding_number_conflict: bool,
    },
    /// PostgreSQL refuses an event's *content* (SQLSTATE class 22, or class 23 other than the
    /// unique keys handled above). Validation should have caught it; retrying cannot help,
    /// so the event is dead-lettered at once with this reason.
    Content {
        sqlstate: String,
        constraint: Option<String>,
    },
}

impl DbFailure {
    pub fn retry_reason(&self) -> RetryReason {
        match self {
            Self::Unavailable | Self::Misconfigured => RetryReason::DatabaseUnavailable,
            Self::Transient { reason, .. } => *reason,
            Self::Content { .. } => RetryReason::Other,
        }
    }

    /// Pause and hold the batch (an outage), rather than judge its events.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable | Self::Misconfigured)
    }

    /// The `x-signup-error` text of an event PostgreSQL refused. Only the code and the
    /// constraint name: the server's message may quote the row, i.e. personal data.
    pub fn content_reason(&self) -> Option<String> {
        match self {
            Self::Content {
                sqlstate,
                constraint,
            } => Some(match constraint {
                Some(c) => {
                    format!("invalid: refused by PostgreSQL (SQLSTATE {sqlstate}, constraint {c})")
                }
                None => format!("invalid: refused by PostgreSQL (SQLSTATE {sqlstate})"),
            }),
            _ => None,
        }
    }
}

/// Classifies a sea-orm error. Everything not recognised is a bounded transient failure:
/// retried, then dead-lettered, but never dropped.
pub fn classify_db(err: &DbErr) -> DbFailure {
    match err {
        // Whatever the server said while we were getting a connection (wrong password,
        // "database does not allow connections", too many clients...), it is not the events'
        // fault: wait for an operator or for the server, never dead-letter.
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => DbFailure::Transient {
            reason: RetryReason::Other,
            founding_number_conflict: false,
        },
    }
}

fn classify_sqlx(err: &sqlx::Error) -> DbFailure {
    match err {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref(), db.constraint()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        _ => DbFailure::Transient {
            reason: RetryReason::Other,
            founding_number_conflict: false,
        },
    }
}

/// Classifies by SQLSTATE (and, for unique violations, constraint name).
pub fn classify_sqlstate(code: Option<&str>, constraint: Option<&str>) -> DbFailure {
    let transient = |reason| DbFailure::Transient {
        reason,
        founding_number_conflict: false,
    };
    let content = |code: &str| DbFailure::Content {
        sqlstate: code.to_owned(),
        constraint: constraint.map(str::to_owned),
    };
    let Some(code) = code else {
        return transient(RetryReason::Other);
    };
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        (_, "40001") => transient(RetryReason::Serialization),
        (_, "40P01") => transient(RetryReason::Deadlock),
        // 08: connection exceptions; 57P01..57P03: admin or crash shutdown, cannot connect
        // now (pg_terminate_backend gives 57P01); 53: insufficient resources (disk full, out
        // of memory, too many connections); 3D000 and 28: the database or the role is not
        // there (yet): an operator fixes it, we wait.
        ("08" | "28" | "53", _) | (_, "57P01" | "57P02" | "57P03" | "3D000") => {
            DbFailure::Unavailable
        }
        // 42: our static SQL meets a schema or privileges it does not expect: 42501 a revoked
        // grant, 42P01 / 42883 a table or function not migrated yet (a `run --no-migrate`
        // replica that started before the migration Job). 3F000: the schema is missing.
        // 25006: a read-only server (a standby after a failover).
        ("42", _) | (_, "3F000" | "25006") => DbFailure::Misconfigured,
        (_, "23505") if constraint == Some(FOUNDING_NUMBER_INDEX) => DbFailure::Transient {
            reason: RetryReason::Other,
            founding_number_conflict: true,
        },
        (_, "23505") if constraint.is_some_and(|c| NATURAL_KEY_CONSTRAINTS.contains(&c)) => {
            transient(RetryReason::Other)
        }
        // 22: data exceptions (a value the column cannot hold); 23: integrity constraints
        // (a CHECK, NOT NULL, foreign key or unique index added by an operator).
        ("22" | "23", _) => content(code),
        _ => transient(RetryReason::Other),
    }
}

/// `CREATE DATABASE` lost a race with another replica creating the same database (42P04
/// duplicate_database, or 23505 when both insert into pg_database at once).
pub fn is_database_already_created(err: &DbErr) -> bool {
    matches!(sqlstate(err).as_deref(), Some("42P04" | "23505"))
}

/// `ALTER SEQUENCE ... MAXVALUE` refused because the sequence is already past the new bound
/// (22023 invalid_parameter_value).
pub fn is_bound_below_position(err: &DbErr) -> bool {
    sqlstate(err).as_deref() == Some("22023")
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(err: &DbErr) -> Option<String> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(e)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(e)))
        | DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::Database(e))) => {
            e.code().map(|c| c.into_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(reason: RetryReason) -> DbFailure {
        DbFailure::Transient {
            reason,
            founding_number_conflict: false,
        }
    }

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(
            classify_sqlstate(Some("40001"), None),
            t(RetryReason::Serialization)
        );
        assert_eq!(
            classify_sqlstate(Some("40P01"), None),
            t(RetryReason::Deadlock)
        );
        for code in [
            "57P01", "57P02", "57P03", "08006", "08001", "53300", "53100", "3D000", "28P01",
        ] {
            assert_eq!(
                classify_sqlstate(Some(code), None),
                DbFailure::Unavailable,
                "{code}"
            );
        }
        for code in ["42501", "42P01", "42883", "42703", "3F000", "25006"] {
            let got = classify_sqlstate(Some(code), None);
            assert_eq!(got, DbFailure::Misconfigured, "{code}");
            assert!(got.is_outage());
            assert_eq!(got.retry_reason(), RetryReason::DatabaseUnavailable);
        }
        assert_eq!(
            classify_sqlstate(Some("55P03"), None),
            t(RetryReason::Other)
        );
        assert_eq!(
            classify_sqlstate(Some("57014"), None),
            t(RetryReason::Other)
        );
        assert_eq!(classify_sqlstate(None, None), t(RetryReason::Other));
    }

    #[test]
    fn content_errors_are_permanent_and_say_only_code_and_constraint() {
        for code in [
            "22008", "22021", "22P02", "22001", "23502", "23503", "23514",
        ] {
            let got = classify_sqlstate(Some(code), Some("some_check"));
            assert!(!got.is_outage(), "{code}");
            assert_eq!(
                got.content_reason().unwrap(),
                format!("invalid: refused by PostgreSQL (SQLSTATE {code}, constraint some_check)")
            );
        }
        // A unique index an operator added is about the event's content too.
        assert!(
            classify_sqlstate(Some("23505"), Some("tenants_owner_email_key"))
                .content_reason()
                .is_some()
        );
        assert_eq!(
            classify_sqlstate(Some("22008"), None)
                .content_reason()
                .unwrap(),
            "invalid: refused by PostgreSQL (SQLSTATE 22008)"
        );
    }

    #[test]
    fn unique_violations_are_told_apart_by_constraint_name() {
        assert_eq!(
            classify_sqlstate(Some("23505"), Some(FOUNDING_NUMBER_INDEX)),
            DbFailure::Transient {
                reason: RetryReason::Other,
                founding_number_conflict: true
            }
        );
        for c in NATURAL_KEY_CONSTRAINTS {
            assert_eq!(
                classify_sqlstate(Some("23505"), Some(c)),
                t(RetryReason::Other)
            );
        }
    }

    #[test]
    fn driver_level_failures_mean_unavailable() {
        let io = DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Io(
            std::io::Error::other("reset"),
        )));
        assert_eq!(classify_db(&io), DbFailure::Unavailable);
        let timeout = DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut));
        assert_eq!(classify_db(&timeout), DbFailure::Unavailable);
        assert_eq!(
            classify_db(&DbErr::Custom("x".into())).retry_reason(),
            RetryReason::Other
        );
        let refused = DbErr::Conn(RuntimeErr::Internal(
            "database does not allow connections".into(),
        ));
        assert_eq!(classify_db(&refused), DbFailure::Unavailable);
    }
}
