//! `signup_lock_and_read(event_ids, slugs)`: a batch's signup locks and its lookup of stored
//! twins in one call, planned once per session.
//!
//! Before, a batch took its locks with `signup_lock_keys` (an SQL-language function, parsed
//! and planned again on every call) and then looked its keys up in a second statement, both
//! planned again on every execution (`plan_cache_mode = force_custom_plan` on the worker's
//! sessions, so that a plan made while `tenants` was small would not keep seq-scanning it as it
//! grew). At 1,000 signups/s in batches of one to three that planning and parsing was about
//! half of PostgreSQL's CPU per signup.
//!
//! Now:
//! - One PL/pgSQL call per batch: the locks (the same keys, in the same order, as
//!   `signup_lock_keys`, which stays for compatibility), then the lookup. PL/pgSQL keeps its
//!   plans for the session, and the lookup is a new statement, so in READ COMMITTED it takes a
//!   new snapshot after the locks are held and sees every twin that committed meanwhile.
//! - The lookup's plan is generic and never a sequential scan (`enable_seqscan = off` on the
//!   function), so it is the unique indexes' plan whatever size `tenants` had when it was made.
//! - `founding_reclaim` keeps planning its range counts per call (it runs every 2 s), now set
//!   on the function itself instead of on the whole session.
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
CREATE FUNCTION signup_lock_and_read(event_ids uuid[], slugs text[])
RETURNS TABLE (id bigint, event_id uuid, slug text, is_demo boolean, founding_member_number integer)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    -- The sorted subquery is not flattened (it has ORDER BY and DISTINCT), so the aggregate
    -- above it takes the locks one by one in key order: no deadlock between batches.
    PERFORM count(pg_advisory_xact_lock(key))
    FROM (
        SELECT DISTINCT key FROM (
            SELECT hashtextextended('event_id:' || e::text, 0) AS key FROM unnest(event_ids) AS e
            UNION ALL
            SELECT hashtextextended('slug:' || s, 0) FROM unnest(slugs) AS s
        ) AS all_keys
        ORDER BY key
    ) AS sorted;
    RETURN QUERY
        SELECT t.id, t.event_id, t.slug, t.is_demo, t.founding_member_number
          FROM tenants t
         WHERE t.event_id = ANY(event_ids) OR t.slug = ANY(slugs);
END
$$;

ALTER FUNCTION founding_reclaim(bigint) SET plan_cache_mode = force_custom_plan;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS signup_lock_and_read(uuid[], text[]);
                 ALTER FUNCTION founding_reclaim(bigint) RESET plan_cache_mode;",
            )
            .await?;
        Ok(())
    }
}
