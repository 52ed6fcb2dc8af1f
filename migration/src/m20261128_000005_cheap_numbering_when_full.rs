//! Numbering stays cheap once the programme is full.
//!
//! Past the bound, every non-demo signup still reached `nextval()`, which raised 2200H inside
//! the trigger's EXCEPTION block: an error raised and caught, and a subtransaction rolled back,
//! per row. After the first N signups that is the path of every signup for the life of the
//! programme, and it doubled PostgreSQL's cost per row (about 23 µs against 12 µs for a demo
//! row in a 2,000-row INSERT).
//!
//! Now the first row of a transaction that finds the sequence exhausted says so in the
//! transaction-local flag `signup_worker.numbering_from` (value `exhausted`), and the rest of
//! the transaction's rows skip the sequence. Why that is safe is the same argument as for the
//! `sequence` value of migration 4: the flag is set only after the pool was found empty, and
//! the transaction holds the numbering lock until it ends, so the reclaimer cannot refill the
//! pool meanwhile (a number put back by another transaction's rollback waits for the next
//! transaction). The one new case: `founding set-capacity` raising the bound while such a
//! transaction runs; its remaining rows stay unnumbered, as if they had committed a moment
//! before the change, and the next transaction numbers again.
use sea_orm_migration::prelude::*;

use crate::m20261128_000004_reclaim_numbers::{with_lock_keys, POOL_AWARE_NUMBERING};

#[derive(DeriveMigrationName)]
pub struct Migration;

const NUMBERING_WHEN_FULL: &str = r#"
CREATE OR REPLACE FUNCTION assign_founding_member_number() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pooled integer;
    numbering_from text;
BEGIN
    -- The application never chooses a number: whatever it sent is replaced here.
    NEW.founding_member_number := NULL;
    IF NEW.is_demo THEN
        RETURN NEW;
    END IF;
    numbering_from := current_setting('signup_worker.numbering_from', true);
    -- This transaction already found the pool empty and the sequence at its bound.
    IF numbering_from = 'exhausted' THEN
        RETURN NEW;
    END IF;
    -- Until the pool is found empty, every row takes the numbering lock and looks in the
    -- pool (see migration 4).
    IF numbering_from IS DISTINCT FROM 'sequence' THEN
        -- Held to the end of the transaction: the reclaimer waits for it.
        PERFORM pg_advisory_xact_lock_shared(__K1__, __K2__);
        DELETE FROM founding_number_pool
         WHERE number = (SELECT p.number FROM founding_number_pool p
                          ORDER BY p.number LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING number INTO pooled;
        IF pooled IS NOT NULL THEN
            NEW.founding_member_number := pooled;
            RETURN NEW;
        END IF;
        PERFORM set_config('signup_worker.numbering_from', 'sequence', true);
    END IF;
    BEGIN
        NEW.founding_member_number := nextval('founding_member_number_seq');
    EXCEPTION WHEN sequence_generator_limit_exceeded THEN
        -- 2200H: the programme is full. The tenant is still created, without a number, and
        -- the rest of this transaction skips the sequence. The handler runs after its
        -- subtransaction is rolled back, so the setting holds for the transaction.
        NEW.founding_member_number := NULL;
        PERFORM set_config('signup_worker.numbering_from', 'exhausted', true);
    END;
    RETURN NEW;
END
$$;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&with_lock_keys(NUMBERING_WHEN_FULL))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&with_lock_keys(POOL_AWARE_NUMBERING))
            .await?;
        Ok(())
    }
}
