//! The one place where storage errors are classified into what happens to the deliveries.
//!
//! Classification reads the SQLSTATE and the constraint name from the driver, never the
//! message text. sea-orm's own `DbErr::sql_err()` knows only 23505 and 23503, so the code is
//! reached through the underlying sqlx database error.

use sea_orm::{sqlx, DbErr, RuntimeErr};

use crate::metrics::RetryReason;

/// Name of the partial unique index on `founding_member_number` (migration 2).
pub const FOUNDING_NUMBER_INDEX: &str = "tenants_founding_member_number_key";

/// What a failed storage attempt means for the events it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// PostgreSQL cannot be reached or is shutting down: pause and retry the same batch
    /// until it is back. Never dead-letter for this.
    Unavailable,
    /// The attempt failed for reasons tied to this transaction; retry with backoff, a bounded
    /// number of times per event, then dead-letter.
    Transient {
        reason: RetryReason,
        /// The partial unique index refused a founding number (`signup_conflicts_total
        /// {kind="founding_number"}`, which must stay 0).
        founding_number_conflict: bool,
    },
}

impl DbFailure {
    pub fn retry_reason(self) -> RetryReason {
        match self {
            Self::Unavailable => RetryReason::DatabaseUnavailable,
            Self::Transient { reason, .. } => reason,
        }
    }
}

/// Classifies a sea-orm error. Everything not recognised is a bounded transient failure:
/// retried, then dead-lettered, but never dropped.
pub fn classify_db(err: &DbErr) -> DbFailure {
    let other = DbFailure::Transient {
        reason: RetryReason::Other,
        founding_number_conflict: false,
    };
    match err {
        // Whatever the server said while we were getting a connection (wrong password,
        // "database does not allow connections", too many clients...), it is not the events'
        // fault: wait for an operator or for the server, never dead-letter.
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => other,
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
    let Some(code) = code else {
        return transient(RetryReason::Other);
    };
    match code {
        "40001" => transient(RetryReason::Serialization),
        "40P01" => transient(RetryReason::Deadlock),
        // 08: connection exceptions; 57P01..57P03: admin or crash shutdown, cannot connect
        // now (pg_terminate_backend gives 57P01); 53300: too many connections; 3D000 and 28:
        // the database or the role is not there (yet): an operator fixes it, we wait.
        c if c.starts_with("08") || c.starts_with("28") => DbFailure::Unavailable,
        "57P01" | "57P02" | "57P03" | "53300" | "3D000" => DbFailure::Unavailable,
        // 42P01 / 42883: our table or lock function is missing, i.e. the schema is not
        // migrated yet (a `run --no-migrate` replica that started before the migration Job).
        // Wait for it; dead-lettering the events would be wrong.
        "42P01" | "42883" => DbFailure::Unavailable,
        "23505" => DbFailure::Transient {
            reason: RetryReason::Other,
            // The other unique constraints (event id, slug) cannot fire: the signup locks let
            // only new keys reach INSERT. If one does (a row written by hand, say), the retry
            // sees the committed row and resolves the event as a duplicate or a conflict.
            founding_number_conflict: constraint == Some(FOUNDING_NUMBER_INDEX),
        },
        _ => transient(RetryReason::Other),
    }
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

    #[test]
    fn sqlstates_are_classified() {
        let t = |reason| DbFailure::Transient {
            reason,
            founding_number_conflict: false,
        };
        assert_eq!(
            classify_sqlstate(Some("40001"), None),
            t(RetryReason::Serialization)
        );
        assert_eq!(
            classify_sqlstate(Some("40P01"), None),
            t(RetryReason::Deadlock)
        );
        for code in [
            "57P01", "57P02", "57P03", "08006", "08001", "53300", "3D000", "28P01", "42P01",
            "42883",
        ] {
            assert_eq!(
                classify_sqlstate(Some(code), None),
                DbFailure::Unavailable,
                "{code}"
            );
        }
        assert_eq!(
            classify_sqlstate(Some("22023"), None),
            t(RetryReason::Other)
        );
        assert_eq!(classify_sqlstate(None, None), t(RetryReason::Other));
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
        assert_eq!(
            classify_sqlstate(Some("23505"), Some("tenants_slug_key")),
            DbFailure::Transient {
                reason: RetryReason::Other,
                founding_number_conflict: false
            }
        );
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
