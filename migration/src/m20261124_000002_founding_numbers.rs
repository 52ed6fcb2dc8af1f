//! Founding-member numbering: a bounded sequence, the BEFORE INSERT trigger that draws from
//! it, and the partial unique index that guards the numbers.
//!
//! Two properties of PostgreSQL shape this file:
//! - `nextval()` past `MAXVALUE` raises SQLSTATE 2200H. The trigger catches it so that a signup
//!   after the bound still creates its tenant, unnumbered.
//! - Sequences are not transactional, and a BEFORE INSERT trigger fires before any unique check.
//!   The trigger therefore must only ever see rows that will be inserted; the worker guarantees
//!   that (see `m20261124_000003_signup_locks` and `src/store.rs`).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The numbering function as this migration creates it: the sequence alone. Migration 4
/// replaces it with the pool-aware one, and restores this one when it is rolled back.
pub(crate) const SEQUENCE_ONLY_NUMBERING: &str = r#"
CREATE OR REPLACE FUNCTION assign_founding_member_number() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The application never chooses a number: whatever it sent is replaced here.
    NEW.founding_member_number := NULL;
    IF NEW.is_demo THEN
        RETURN NEW;
    END IF;
    BEGIN
        NEW.founding_member_number := nextval('founding_member_number_seq');
    EXCEPTION WHEN sequence_generator_limit_exceeded THEN
        -- 2200H: the programme is full. The tenant is still created, without a number.
        NEW.founding_member_number := NULL;
    END;
    RETURN NEW;
END
$$;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // CACHE 1 matters: a session-level cache would throw away unused numbers when the
        // session ends, burning them.
        let create_sequence = format!(
            r#"
DO $$
DECLARE
    capacity integer := coalesce(nullif(current_setting('{setting}', true), '')::integer, {default});
BEGIN
    EXECUTE format(
        'CREATE SEQUENCE founding_member_number_seq AS integer '
        'START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE %s NO CYCLE CACHE 1',
        capacity);
END
$$;
"#,
            setting = crate::FOUNDING_CAPACITY_SETTING,
            default = crate::DEFAULT_FOUNDING_CAPACITY,
        );
        let db = manager.get_connection();
        db.execute_unprepared(&create_sequence).await?;
        db.execute_unprepared(SEQUENCE_ONLY_NUMBERING).await?;
        db.execute_unprepared(
            r#"
CREATE TRIGGER tenants_assign_founding_member_number
    BEFORE INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION assign_founding_member_number();

CREATE UNIQUE INDEX tenants_founding_member_number_key
    ON tenants (founding_member_number)
    WHERE founding_member_number IS NOT NULL;
"#,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
DROP INDEX IF EXISTS tenants_founding_member_number_key;
DROP TRIGGER IF EXISTS tenants_assign_founding_member_number ON tenants;
DROP FUNCTION IF EXISTS assign_founding_member_number();
DROP SEQUENCE IF EXISTS founding_member_number_seq;
"#,
            )
            .await?;
        Ok(())
    }
}
