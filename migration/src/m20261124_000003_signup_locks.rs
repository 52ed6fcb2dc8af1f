//! `signup_lock_keys(event_ids, slugs)`: takes transaction-scoped advisory locks on every
//! event id and slug of a batch, in one global order.
//!
//! Why: a duplicate or a slug conflict must be recognised *before* the insert reaches the
//! numbering trigger, even when its twin sits in another replica's uncommitted transaction.
//! Holding the keys' locks, a transaction sees every committed twin and no uncommitted one
//! can appear, so the insert that follows never meets a unique violation and never burns a
//! number. Taking the locks in sorted order means two batches can wait on each other but
//! never deadlock. Keys are hashed by PostgreSQL itself (stable across worker versions); a hash
//! collision only serialises two unrelated batches, it never merges their rows.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE FUNCTION signup_lock_keys(event_ids uuid[], slugs text[]) RETURNS void
LANGUAGE sql AS $$
    -- The sorted subquery is not flattened (it has ORDER BY and DISTINCT), so the aggregate
    -- above it takes the locks one by one in key order.
    SELECT count(pg_advisory_xact_lock(key))
    FROM (
        SELECT DISTINCT key FROM (
            SELECT hashtextextended('event_id:' || e::text, 0) AS key FROM unnest(event_ids) AS e
            UNION ALL
            SELECT hashtextextended('slug:' || s, 0) FROM unnest(slugs) AS s
        ) AS all_keys
        ORDER BY key
    ) AS sorted;
$$;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP FUNCTION IF EXISTS signup_lock_keys(uuid[], text[])")
            .await?;
        Ok(())
    }
}
