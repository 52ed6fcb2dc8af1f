//! The `tenants` table. Both natural keys (`event_id`, `slug`) are unique constraints with
//! fixed names: the worker classifies unique violations by constraint name, never by text.
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
CREATE TABLE tenants (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id               uuid        NOT NULL,
    slug                   text        NOT NULL,
    business_name          text        NOT NULL,
    owner_email            text        NOT NULL,
    tier                   text        NOT NULL,
    is_demo                boolean     NOT NULL DEFAULT false,
    founding_member_number integer,
    occurred_at            timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_event_id_key UNIQUE (event_id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_tier_check CHECK (tier IN ('starter', 'growth', 'enterprise')),
    CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{1,61})[a-z0-9]$'),
    -- Demo tenants are never numbered, whatever the code above the database does.
    CONSTRAINT tenants_demo_unnumbered_check CHECK (NOT is_demo OR founding_member_number IS NULL),
    CONSTRAINT tenants_founding_member_number_check CHECK (founding_member_number >= 1)
);
COMMENT ON TABLE tenants IS 'One row per tenant-signup event that created a tenant (signup-worker).';
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS tenants")
            .await?;
        Ok(())
    }
}
