//! No founding number is ever lost: the whole numbering rule, read top to bottom.
//!
//! 1. **The sequence** (`founding_member_number_seq`, migration 2) is the source of new numbers:
//!    `MAXVALUE` = capacity, `NO CYCLE`, `CACHE 1`. Its *position* is the highest number it has
//!    handed out. Sequences are not transactional: a number drawn by a transaction that then
//!    dies (a killed process, a cut connection, a statement failing after the draw) is gone
//!    from the sequence for good. Such a number is *burned*.
//! 2. **The pool** (`founding_number_pool`) holds burned numbers once they are reclaimed. The
//!    numbering trigger takes the lowest pooled number first and draws from the sequence only
//!    when the pool is empty. Taking from the pool is a DELETE, so a transaction that takes a
//!    pooled number and rolls back puts it back: it never burns. `SKIP LOCKED` lets concurrent
//!    transactions take different pooled numbers without waiting on each other.
//! 3. **Retired numbers** (`founding_number_retired`): a number a committed tenant held is never
//!    handed out again. Deleting the tenant (or clearing or changing its number, or truncating
//!    the table) retires the number instead of leaving a gap the reclaimer would take.
//! 4. **The reclaimer** (`founding_reclaim(upto)`), called by every `run` replica every few
//!    seconds, turns burned numbers into pooled ones. The hard part is telling a burned number
//!    from one that a live transaction drew and has not committed yet; reclaiming the latter
//!    would hand it out twice. The rule:
//!
//!    - Every numbering transaction holds the *numbering lock* in shared mode from before its
//!      first draw to its end (the trigger takes it; a transaction-level advisory lock).
//!    - The reclaimer remembers `checked_upto`: every number at or below it is held, pooled,
//!      retired or, if taken from the pool by a running transaction, about to be held or back
//!      in the pool. It looks only at (`checked_upto`, `upto`], where `upto` is at most the
//!      position read before taking any lock, so every number in that range was drawn by a
//!      transaction that held the numbering lock at that moment.
//!    - Fast path: if every number in the range is held or retired, nothing is burned; it moves
//!      `checked_upto` and takes no lock at all. That is the normal case, because the worker
//!      passes as `upto` the position it saw on its *previous* tick, whose transactions have
//!      long committed.
//!    - Otherwise it takes the numbering lock in exclusive mode, waiting at most 50 ms
//!      (`lock_timeout`). Getting it means that every transaction that held it shared, i.e.
//!      every transaction that could still commit a number of the range, has ended. The
//!      numbers of the range that are then neither held nor retired were drawn by transactions
//!      that died: they go to the pool. Failing to get it within 50 ms means a numbering
//!      transaction is still running (a slow batch, a lock wait, a test holding one open); the
//!      reclaimer returns NULL and tries again on the next tick.
//!
//!    Why a lock and not "wait until every transaction running at time T has ended": a
//!    transaction can hold a drawn number without an xid of its own (`nextval()` writes WAL,
//!    and so takes an xid, once every 32 values), and another database's or an unrelated
//!    session's long transaction must not hold reclaiming up. The lock is held only by
//!    numbering transactions, and advisory locks are per database. Its costs: while the
//!    reclaimer waits, new numbering transactions queue behind it, so numbering pauses for at
//!    most the 50 ms timeout plus the few milliseconds of the reclaim itself (bounded by
//!    reclaiming at most 50,000 numbers per call); and a stuck client that holds the lock (a
//!    SIGSTOPped worker, a half-open connection) blocks reclaiming until PostgreSQL ends its
//!    session, which the worker bounds with `idle_in_transaction_session_timeout` on its own
//!    sessions.
//!    Many replicas reclaiming at once: the exclusive lock serialises them, and each re-reads
//!    `checked_upto` under it, so each number is reclaimed once (the pool's primary key
//!    guards it as well).
//!
//! The figures (contract section 5): *assigned* = numbered tenants, *pooled* = rows of the
//! pool, *retired* = rows of `founding_number_retired`, *burned* = position − assigned − pooled
//! − retired, *remaining* = capacity − position + pooled. The one exception to "numbers follow
//! the order of arrival": a reclaimed number goes to a signup later than the one that first
//! drew it.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The numbering lock: the two-key form of PostgreSQL's advisory locks, a key space apart from
/// the one-key locks `signup_lock_keys` and `migrate` take, so no hash can collide with it.
/// The first key spells "fmn#" in ASCII.
pub const NUMBERING_LOCK: (i32, i32) = (0x666d_6e23, 1);

/// The numbering trigger of this migration: the pool first, then the sequence. Migration 5
/// replaces it and restores it on the way down. `__K1__`/`__K2__` stand for the numbering
/// lock (see [`with_lock_keys`]).
pub(crate) const POOL_AWARE_NUMBERING: &str = r#"
CREATE OR REPLACE FUNCTION assign_founding_member_number() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pooled integer;
BEGIN
    -- The application never chooses a number: whatever it sent is replaced here.
    NEW.founding_member_number := NULL;
    IF NEW.is_demo THEN
        RETURN NEW;
    END IF;
    -- Until the pool is found empty, every row takes the numbering lock and looks in the
    -- pool; after that, the rest of the transaction goes straight to the sequence. That is
    -- safe: the lock is held to the end of the transaction, and while it is held the
    -- reclaimer cannot add to the pool (a number another transaction put back by rolling
    -- back waits for the next transaction). It keeps a 100-row batch's numbering cost at one
    -- lock and one pool lookup, not a hundred. The flag is a transaction-local setting, so
    -- it vanishes at commit or rollback, and with a rolled-back subtransaction.
    IF current_setting('signup_worker.numbering_from', true) IS DISTINCT FROM 'sequence' THEN
        -- Held to the end of the transaction: the reclaimer waits for it (see the overview).
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
        -- 2200H: the programme is full. The tenant is still created, without a number.
        NEW.founding_member_number := NULL;
    END;
    RETURN NEW;
END
$$;
"#;

/// Puts the numbering lock's keys into SQL that names them `__K1__` and `__K2__`.
pub(crate) fn with_lock_keys(sql: &str) -> String {
    let (k1, k2) = NUMBERING_LOCK;
    sql.replace("__K1__", &k1.to_string())
        .replace("__K2__", &k2.to_string())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = r#"
CREATE TABLE founding_number_pool (
    number integer PRIMARY KEY CHECK (number >= 1)
);
COMMENT ON TABLE founding_number_pool IS 'Reclaimed founding numbers, handed out again lowest first (signup-worker).';

CREATE TABLE founding_number_retired (
    number     integer PRIMARY KEY CHECK (number >= 1),
    retired_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE founding_number_retired IS 'Founding numbers whose tenant was deleted: never handed out again (signup-worker).';

CREATE TABLE founding_reclaim_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Every number at or below it is held, pooled, retired, or taken from the pool by a
    -- running transaction.
    checked_upto    bigint  NOT NULL DEFAULT 0,
    -- Numbers ever returned to the pool, for operators and tests.
    reclaimed_total bigint  NOT NULL DEFAULT 0
);
INSERT INTO founding_reclaim_state DEFAULT VALUES;

__POOL_AWARE_NUMBERING__
CREATE FUNCTION retire_founding_member_number() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO founding_number_retired (number)
        SELECT founding_member_number FROM tenants WHERE founding_member_number IS NOT NULL
        ON CONFLICT DO NOTHING;
    ELSIF OLD.founding_member_number IS NOT NULL
          AND (TG_OP = 'DELETE' OR NEW.founding_member_number IS DISTINCT FROM OLD.founding_member_number) THEN
        INSERT INTO founding_number_retired (number) VALUES (OLD.founding_member_number)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_retire_founding_member_number
    AFTER DELETE OR UPDATE OF founding_member_number ON tenants
    FOR EACH ROW EXECUTE FUNCTION retire_founding_member_number();
CREATE TRIGGER tenants_retire_founding_member_numbers_on_truncate
    BEFORE TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION retire_founding_member_number();

-- Returns how many numbers it moved to the pool, or NULL when a numbering transaction kept
-- the lock for 50 ms (try again later). Run it in a transaction of its own.
CREATE FUNCTION founding_reclaim(upto bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    seq_position bigint;
    checked bigint;
    covered bigint;
    reclaimed integer := 0;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO seq_position
      FROM founding_member_number_seq;
    SELECT checked_upto INTO checked FROM founding_reclaim_state;
    -- Bounded work per call keeps the exclusive lock short on a large programme.
    upto := least(upto, seq_position, checked + 50000);
    IF upto <= checked THEN
        RETURN 0;
    END IF;
    SELECT (SELECT count(*) FROM tenants
             WHERE founding_member_number > checked AND founding_member_number <= upto)
         + (SELECT count(*) FROM founding_number_retired WHERE number > checked AND number <= upto)
      INTO covered;
    IF covered < upto - checked THEN
        PERFORM set_config('lock_timeout', '50ms', true);
        BEGIN
            PERFORM pg_advisory_xact_lock(__K1__, __K2__);
        EXCEPTION WHEN lock_not_available THEN
            RETURN NULL;
        END;
        -- Another replica may have reclaimed this range while we waited.
        SELECT checked_upto INTO checked FROM founding_reclaim_state FOR UPDATE;
        IF upto <= checked THEN
            RETURN 0;
        END IF;
        INSERT INTO founding_number_pool (number)
        SELECT n FROM generate_series(checked + 1, upto) AS n
         WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.founding_member_number = n)
           AND NOT EXISTS (SELECT 1 FROM founding_number_retired r WHERE r.number = n)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS reclaimed = ROW_COUNT;
    END IF;
    UPDATE founding_reclaim_state
       SET checked_upto = greatest(checked_upto, upto), reclaimed_total = reclaimed_total + reclaimed;
    RETURN reclaimed;
END
$$;
"#
        .replace("__POOL_AWARE_NUMBERING__", POOL_AWARE_NUMBERING);
        manager
            .get_connection()
            .execute_unprepared(&with_lock_keys(&sql))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(crate::m20261124_000002_founding_numbers::SEQUENCE_ONLY_NUMBERING)
            .await?;
        db.execute_unprepared(
            r#"
DROP FUNCTION IF EXISTS founding_reclaim(bigint);
DROP TRIGGER IF EXISTS tenants_retire_founding_member_numbers_on_truncate ON tenants;
DROP TRIGGER IF EXISTS tenants_retire_founding_member_number ON tenants;
DROP FUNCTION IF EXISTS retire_founding_member_number();
DROP TABLE IF EXISTS founding_reclaim_state;
DROP TABLE IF EXISTS founding_number_retired;
DROP TABLE IF EXISTS founding_number_pool;
"#,
        )
        .await?;
        Ok(())
    }
}
