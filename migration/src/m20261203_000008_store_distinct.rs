//! `signup_store_distinct(...)`: a whole batch stored in one statement, when no two of its
//! events share an event id or a slug.
//!
//! A batch used to cost four round trips: `BEGIN`, `signup_lock_and_read`, the `INSERT`,
//! `COMMIT`. At 1,000 signups/s a batch holds three or four events, and each round trip wakes
//! the worker and the backend: the three this call saves were about a sixth of both processes'
//! CPU per signup at that rate (docs/BENCHMARKS.md).
//!
//! When the batch's event ids are all different and so are its slugs, no event's fate depends
//! on another's: each is a duplicate of a stored tenant (same event id), refused (its slug is
//! stored), or new. So one call does it all, and run as a single statement outside any
//! `BEGIN` it is its own transaction:
//! - the locks and the lookup, by `signup_lock_and_read` (migration 7): the same keys in the
//!   same order, and a fresh READ COMMITTED snapshot once they are held;
//! - one INSERT of the events whose event id and slug are not stored, in array order (the
//!   trigger numbers them in delivery order). It is a new statement, so it sees what the lookup
//!   saw: the locks keep every other writer of these keys out until this transaction ends;
//! - returns the stored rows (`inserted` false), then the new ones (`inserted` true).
//!
//! The worker decides again from the stored rows with the same rules (`store::plan`) and
//! checks that they name exactly the rows this call inserted. Batches with copies inside them
//! (two events with one event id or one slug) still take the transaction of four statements,
//! where the worker decides between the lookup and the INSERT. Values are bound with their
//! columns' types, as before, so a value PostgreSQL cannot hold fails before any number is
//! drawn.
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
CREATE FUNCTION signup_store_distinct(
    event_ids uuid[], slugs text[], business_names text[], owner_emails text[], tiers text[],
    demos boolean[], occurred timestamptz[], occurred_known boolean[])
RETURNS TABLE (inserted boolean, id bigint, event_id uuid, slug text, is_demo boolean,
               founding_member_number integer)
LANGUAGE plpgsql
AS $$
DECLARE
    stored record;
    stored_ids uuid[] := '{}';
    stored_slugs text[] := '{}';
BEGIN
    FOR stored IN SELECT * FROM signup_lock_and_read(event_ids, slugs) LOOP
        stored_ids := stored_ids || stored.event_id;
        stored_slugs := stored_slugs || stored.slug;
        RETURN QUERY SELECT false, stored.id, stored.event_id, stored.slug, stored.is_demo,
                            stored.founding_member_number;
    END LOOP;
    -- unnest yields the rows in array order and the filter keeps it: delivery order.
    RETURN QUERY
        INSERT INTO tenants AS t
               (event_id, slug, business_name, owner_email, tier, is_demo, occurred_at)
        SELECT u.event_id, u.slug, u.business_name, u.owner_email, u.tier, u.is_demo,
               CASE WHEN u.occurred_known THEN u.occurred_at END
          FROM unnest(event_ids, slugs, business_names, owner_emails, tiers, demos,
                      occurred, occurred_known)
               AS u(event_id, slug, business_name, owner_email, tier, is_demo, occurred_at,
                    occurred_known)
         WHERE u.event_id <> ALL (stored_ids) AND u.slug <> ALL (stored_slugs)
        RETURNING true, t.id, t.event_id, t.slug, t.is_demo, t.founding_member_number;
END
$$;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS signup_store_distinct(uuid[], text[], text[], text[], \
                 text[], boolean[], timestamptz[], boolean[]);",
            )
            .await?;
        Ok(())
    }
}
