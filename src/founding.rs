//! The founding-member programme's figures (contract section 5), shared by the store, the
//! metrics and `status` without tying them to each other, and the operations on the
//! programme itself: reading it, reclaiming burned numbers, changing the bound.

use chrono::{DateTime, Utc};
use entity::prelude::{FoundingNumberPool, FoundingNumberRetired, Tenants};
use entity::{founding_number_pool, founding_number_retired, tenants};
use migration::schema::{ASSIGNED_FUNCTION, FOUNDING_SEQUENCE, POOL, RECLAIM_FUNCTION, RETIRED};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, IsolationLevel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

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

/// One row of [`stats_sql`]: `position` is NULL when the role may not read the sequence.
#[derive(Debug, FromQueryResult)]
struct StatsRow {
    capacity: i64,
    position: Option<i64>,
    assigned: i64,
    pooled: i64,
    retired: i64,
}

// Raw SQL because it reads the pg_sequences catalog, and in one statement so that the five
// figures come from one snapshot.
//
// pg_sequences.last_value is NULL until the first nextval(), and also whenever the role lacks
// USAGE and SELECT on the sequence: the privilege check tells the two apart, so that a revoked
// grant is an error and not a position of 0 (which made `burned` negative). The count reads
// only the partial unique index, which holds at most `capacity` entries (`founding_assigned()`
// makes sure of it whatever the statistics; see migration 6).
fn stats_sql() -> String {
    format!(
        "SELECT s.max_value::bigint AS capacity, \
            CASE WHEN has_sequence_privilege(format('%I.%I', s.schemaname, s.sequencename), 'USAGE,SELECT') \
                 THEN coalesce(s.last_value, 0) END::bigint AS position, \
            {ASSIGNED_FUNCTION}()::bigint AS assigned, \
            (SELECT count(*) FROM {POOL})::bigint AS pooled, \
            (SELECT count(*) FROM {RETIRED})::bigint AS retired \
         FROM pg_sequences s \
         WHERE s.schemaname = current_schema() AND s.sequencename = $1"
    )
}

pub async fn founding_stats(db: &impl ConnectionTrait) -> Result<FoundingStats, DbErr> {
    let row = StatsRow::find_by_statement(stmt(&stats_sql(), vec![FOUNDING_SEQUENCE.into()]))
        .one(db)
        .await?
        .ok_or_else(|| {
            DbErr::Custom(format!(
                "{FOUNDING_SEQUENCE} does not exist: run `signup-worker migrate`"
            ))
        })?;
    let position = row.position.ok_or_else(|| {
        DbErr::Custom(format!(
            "permission denied for sequence {FOUNDING_SEQUENCE}: the role needs USAGE and \
             SELECT on it"
        ))
    })?;
    Ok(FoundingStats {
        capacity: row.capacity,
        position,
        assigned: row.assigned,
        pooled: row.pooled,
        retired: row.retired,
    })
}

/// Returns burned numbers to the pool (see migration `m20261128_000004_reclaim_numbers` for
/// the rule and why it is safe). `upto` bounds the numbers looked at: pass a position seen a
/// while ago, so that only transactions long gone are involved and the fast path applies.
/// `Ok(None)`: a numbering transaction held the lock past 50 ms; try again later.
pub async fn reclaim(db: &impl TransactionTrait, upto: i64) -> Result<Option<i64>, DbErr> {
    // Its own transaction: the exclusive lock must be released as soon as it is done.
    let txn = db.begin().await?;
    let sql = format!("SELECT {RECLAIM_FUNCTION}($1)::bigint AS reclaimed");
    let row = txn.query_one(stmt(&sql, vec![upto.into()])).await?;
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
    let alter = format!("ALTER SEQUENCE {FOUNDING_SEQUENCE} MAXVALUE {capacity}");
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

/// One numbered tenant, as `founding list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromQueryResult)]
pub struct NumberedTenant {
    pub number: i32,
    pub slug: String,
    pub business_name: String,
    pub created_at: DateTime<Utc>,
}

/// `founding list`: the numbered tenants in number order, and the numbers no tenant holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundingList {
    pub tenants: Vec<NumberedTenant>,
    /// Reclaimed, waiting for a tenant, lowest first.
    pub pooled: Vec<i32>,
    /// Held by a tenant that was deleted; never handed out again.
    pub retired: Vec<i32>,
}

/// Reads the list in one read-only REPEATABLE READ transaction, so that the three parts agree
/// (a number moving from the pool to a tenant meanwhile is never shown twice or not at all).
pub async fn list(db: &impl TransactionTrait) -> Result<FoundingList, DbErr> {
    let txn = db
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await?;
    use tenants::Column;
    let tenants = Tenants::find()
        .select_only()
        .column_as(Column::FoundingMemberNumber, "number")
        .columns([Column::Slug, Column::BusinessName, Column::CreatedAt])
        .filter(Column::FoundingMemberNumber.is_not_null())
        .order_by_asc(Column::FoundingMemberNumber)
        .into_model::<NumberedTenant>()
        .all(&txn)
        .await?;
    let pooled = FoundingNumberPool::find()
        .order_by_asc(founding_number_pool::Column::Number)
        .all(&txn)
        .await?;
    let retired = FoundingNumberRetired::find()
        .order_by_asc(founding_number_retired::Column::Number)
        .all(&txn)
        .await?;
    txn.commit().await?;
    Ok(FoundingList {
        tenants,
        pooled: pooled.into_iter().map(|p| p.number).collect(),
        retired: retired.into_iter().map(|r| r.number).collect(),
    })
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
