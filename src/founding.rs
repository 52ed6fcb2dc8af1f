//! The founding-member programme's figures (contract section 5), shared by the store, the
//! metrics and `status` without tying them to each other, and the operations on the
//! programme itself: reading it, reclaiming burned numbers, changing the bound.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};

use crate::store::stmt;

/// The founding-member programme as the database sees it (contract section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FoundingStats {
    /// The sequence's MAXVALUE.
    pub capacity: i64,
    /// The highest number the sequence has handed out (0 before the first).
    pub position: i64,
    /// Tenants holding a number.
    pub assigned: i64,
    /// Reclaimed numbers waiting for a tenant.
    pub pooled: i64,
    /// Numbers whose tenant was deleted: never handed out again.
    pub retired: i64,
}

impl FoundingStats {
    // Clamped at 0: a figure that went negative (a number written by hand past the position,
    // a capacity lowered behind our back) would only mislead the dashboards and alerts.
    pub fn remaining(&self) -> i64 {
        (self.capacity - self.position + self.pooled).max(0)
    }

    /// Drawn by transactions that have not committed: in flight, or dead and not yet
    /// reclaimed (contract section 5).
    pub fn burned(&self) -> i64 {
        (self.position - self.assigned - self.pooled - self.retired).max(0)
    }
}

// pg_sequences.last_value is NULL until the first nextval(), and also whenever the role lacks
// USAGE and SELECT on the sequence: the privilege check tells the two apart, so that a revoked
// grant is an error and not a position of 0 (which made `burned` negative). The count reads
// only the partial unique index, which holds at most `capacity` entries.
const STATS_SQL: &str = "SELECT s.max_value::bigint AS capacity, \
            CASE WHEN has_sequence_privilege(format('%I.%I', s.schemaname, s.sequencename), 'USAGE,SELECT') \
                 THEN coalesce(s.last_value, 0) END::bigint AS position, \
            (SELECT count(*) FROM tenants WHERE founding_member_number IS NOT NULL)::bigint AS assigned, \
            (SELECT count(*) FROM founding_number_pool)::bigint AS pooled, \
            (SELECT count(*) FROM founding_number_retired)::bigint AS retired \
     FROM pg_sequences s \
     WHERE s.schemaname = current_schema() AND s.sequencename = 'founding_member_number_seq'";

pub async fn founding_stats(db: &impl ConnectionTrait) -> Result<FoundingStats, DbErr> {
    let row = db
        .query_one(stmt(STATS_SQL, vec![]))
        .await?
        .ok_or_else(|| {
            DbErr::Custom(
                "founding_member_number_seq does not exist: run `signup-worker migrate`".into(),
            )
        })?;
    let position: Option<i64> = row.try_get("", "position")?;
    let position = position.ok_or_else(|| {
        DbErr::Custom(
            "permission denied for sequence founding_member_number_seq: the role needs USAGE \
             and SELECT on it"
                .into(),
        )
    })?;
    Ok(FoundingStats {
        capacity: row.try_get("", "capacity")?,
        position,
        assigned: row.try_get("", "assigned")?,
        pooled: row.try_get("", "pooled")?,
        retired: row.try_get("", "retired")?,
    })
}

/// Returns burned numbers to the pool (see migration `m20261128_000004_reclaim_numbers` for
/// the rule and why it is safe). `upto` bounds the numbers looked at: pass a position seen a
/// while ago, so that only transactions long gone are involved and the fast path applies.
/// `Ok(None)`: a numbering transaction held the lock past 50 ms; try again later.
pub async fn reclaim(db: &impl TransactionTrait, upto: i64) -> Result<Option<i64>, DbErr> {
    // Its own transaction: the exclusive lock must be released as soon as it is done.
    let txn = db.begin().await?;
    let row = txn
        .query_one(stmt(
            "SELECT founding_reclaim($1)::bigint AS reclaimed",
            vec![upto.into()],
        ))
        .await?;
    txn.commit().await?;
    match row {
        Some(row) => row.try_get("", "reclaimed"),
        None => Ok(None),
    }
}

/// Why `founding set-capacity` refused.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("capacity must be between 1 and {max}, got {0}", max = i32::MAX)]
    OutOfRange(i64),
    #[error("capacity {requested} is below the sequence position {position}: numbers up to {position} are already handed out")]
    BelowPosition { requested: i64, position: i64 },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Changes the bound (the sequence's MAXVALUE). Refuses to go below the position.
///
/// The position is read first for a clear refusal; if it moves past the new bound between the
/// read and the ALTER, PostgreSQL itself refuses the ALTER (SQLSTATE 22023), which is mapped to
/// the same refusal. ALTER SEQUENCE blocks concurrent nextval() until commit.
pub async fn set_capacity(
    db: &DatabaseConnection,
    capacity: i64,
) -> Result<FoundingStats, CapacityError> {
    if !(1..=i64::from(i32::MAX)).contains(&capacity) {
        return Err(CapacityError::OutOfRange(capacity));
    }
    let before = founding_stats(db).await?;
    if capacity < before.position {
        return Err(CapacityError::BelowPosition {
            requested: capacity,
            position: before.position,
        });
    }
    let txn = db.begin().await?;
    // `capacity` is a checked integer, so formatting it into DDL (which takes no parameters)
    // is safe.
    let alter = format!("ALTER SEQUENCE founding_member_number_seq MAXVALUE {capacity}");
    if let Err(e) = txn.execute_unprepared(&alter).await {
        if crate::error::is_bound_below_position(&e) {
            let now = founding_stats(db).await?;
            return Err(CapacityError::BelowPosition {
                requested: capacity,
                position: now.position,
            });
        }
        return Err(e.into());
    }
    let after = founding_stats(&txn).await?;
    txn.commit().await?;
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_arithmetic() {
        let s = FoundingStats {
            capacity: 100,
            position: 10,
            assigned: 6,
            pooled: 1,
            retired: 1,
        };
        assert_eq!((s.remaining(), s.burned()), (91, 2));
        let odd = FoundingStats {
            capacity: 5,
            position: 6,
            assigned: 7,
            pooled: 0,
            retired: 0,
        };
        assert_eq!((odd.remaining(), odd.burned()), (0, 0), "never negative");
    }
}
