//! Storing a batch of signups in one transaction, exactly once, without burning numbers.
//!
//! The numbering trigger calls `nextval()` for every row that reaches INSERT, and a sequence
//! never gives a number back. So no duplicate and no slug conflict may reach INSERT, even
//! when its twin is in flight in another replica. One transaction per batch:
//!
//! 1. `signup_lock_and_read` (migration 7), one call: advisory locks on every event id and slug
//!    of the batch, in one global order (no deadlock between batches), then the stored rows
//!    for those keys. Whoever held a key before us has committed or rolled back by the time
//!    we get it, and the lookup is a new statement with a fresh READ COMMITTED snapshot, so it
//!    sees their rows.
//! 2. [`plan`] (a pure function) decides each event in delivery order, as if they had come
//!    one by one: duplicate of a stored or earlier event, slug taken, or new.
//! 3. One multi-row INSERT of the new events only; the trigger numbers them in that order.
//!
//! A duplicate therefore costs one lookup, never a number, and never fails its batch-mates.
//!
//! Most batches have no copies inside them (no two events share an event id or a slug): then
//! an event's fate depends on the stored rows only, and `signup_store_distinct` (migration 8)
//! does the three steps in one statement, which is its own transaction: one round trip instead
//! of four (`BEGIN`, lookup, INSERT, `COMMIT`). The worker still runs [`plan`] on the stored
//! rows it returns and requires the rows inserted to be exactly the events the plan inserts.
//! [`path`] chooses, before any I/O.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use migration::schema::{LOCK_AND_READ_FUNCTION, STORE_DISTINCT_FUNCTION, TENANTS};
use sea_orm::sqlx::{self, postgres::PgArguments, postgres::PgRow, Postgres, Row as _};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, Value};
use uuid::Uuid;

use crate::domain::{OccurredAt, SignupRequest};

/// A tenant as stored, with what an outcome event needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTenant {
    pub id: i64,
    pub event_id: Uuid,
    pub slug: String,
    pub is_demo: bool,
    pub founding_member_number: Option<i32>,
}

/// How one event of a batch was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A new tenant. `exhausted`: not a demo, yet no number was left for it.
    Created {
        tenant: StoredTenant,
        exhausted: bool,
    },
    /// The event id was already stored (or came earlier in the batch). `slug_differs`: the
    /// copy names another slug than the stored tenant (a conflict of kind `event_id`).
    Duplicate {
        tenant: StoredTenant,
        slug_differs: bool,
    },
    /// Another event owns the slug.
    SlugTaken,
}

/// The decision for one event before the insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Insert,
    /// Same event id as `existing[i]`.
    DuplicateOfStored(usize),
    /// Same event id as the earlier batch event `j`, which is inserted by this batch.
    DuplicateOfBatch(usize),
    SlugTaken,
}

/// Decides every event of a batch, in order, against the stored rows that share a key with
/// it. Pure: the unit tests below check the rules without a database.
pub fn plan<R: Borrow<SignupRequest>>(requests: &[R], existing: &[StoredTenant]) -> Vec<Step> {
    enum Owner {
        Stored(usize),
        Batch(usize),
    }
    let mut by_event: HashMap<Uuid, Owner> = HashMap::new();
    let mut slugs: HashSet<&str> = HashSet::new();
    for (i, t) in existing.iter().enumerate() {
        by_event.insert(t.event_id, Owner::Stored(i));
        slugs.insert(t.slug.as_str());
    }
    let mut steps = Vec::with_capacity(requests.len());
    for (j, req) in requests.iter().map(Borrow::borrow).enumerate() {
        let step = match by_event.get(&req.event_id) {
            Some(Owner::Stored(i)) => Step::DuplicateOfStored(*i),
            Some(Owner::Batch(k)) => Step::DuplicateOfBatch(*k),
            None if slugs.contains(req.slug.as_str()) => Step::SlugTaken,
            None => {
                by_event.insert(req.event_id, Owner::Batch(j));
                slugs.insert(req.slug.as_str());
                Step::Insert
            }
        };
        steps.push(step);
    }
    steps
}

/// How a batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// No two events share an event id or a slug: one call, its own transaction.
    Distinct,
    /// Copies inside the batch: `BEGIN`, lookup, [`plan`], INSERT, `COMMIT`.
    Transaction,
}

/// Chooses the [`Path`] of a batch from its keys alone.
pub fn path<R: Borrow<SignupRequest>>(requests: &[R]) -> Path {
    let mut event_ids = HashSet::with_capacity(requests.len());
    let mut slugs = HashSet::with_capacity(requests.len());
    let distinct = requests
        .iter()
        .map(Borrow::borrow)
        .all(|r| event_ids.insert(r.event_id) && slugs.insert(r.slug.as_str()));
    if distinct {
        Path::Distinct
    } else {
        Path::Transaction
    }
}

pub(crate) fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The batch's signup locks and its stored twins, in one call (see migration 7): a function,
/// so raw SQL. The statements are built from the schema's names once, not per batch.
static LOCK_AND_READ_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, event_id, slug, is_demo, founding_member_number \
         FROM {LOCK_AND_READ_FUNCTION}($1::uuid[], $2::text[])"
    )
});

/// The whole of a distinct batch in one call (see migration 8); its parameters are the
/// INSERT's, bound by [`bind_rows`].
static STORE_DISTINCT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT inserted, id, event_id, slug, is_demo, founding_member_number \
         FROM {STORE_DISTINCT_FUNCTION}($1::uuid[], $2::text[], $3::text[], $4::text[], \
              $5::text[], $6::bool[], $7::timestamptz[], $8::bool[])"
    )
});

// Raw SQL because the batch goes in as arrays that `unnest` turns into rows, one statement
// whatever the batch size. `unnest` yields the rows in array order, which is delivery order:
// the trigger numbers the batch's tenants in the order their events arrived.
//
// Every value is bound with its column's own type (no text casts in the statement), so a value
// PostgreSQL cannot hold fails when the parameters are bound, before the trigger has drawn a
// number for any row. `occurred_at` travels as a timestamptz[] plus a "known" mask because the
// driver cannot bind NULL elements in a timestamptz[].
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO {TENANTS} \
         (event_id, slug, business_name, owner_email, tier, is_demo, occurred_at) \
         SELECT u.event_id, u.slug, u.business_name, u.owner_email, u.tier, u.is_demo, \
                CASE WHEN u.occurred_known THEN u.occurred_at END \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], \
                     $7::timestamptz[], $8::bool[]) \
              AS u(event_id, slug, business_name, owner_email, tier, is_demo, occurred_at, occurred_known) \
         RETURNING id, event_id, slug, is_demo, founding_member_number"
    )
});

/// Stores a batch in one transaction and says, per request and in order, what happened.
/// On error the caller classifies it with [`crate::error::classify_db`] and retries. Nothing
/// was committed, unless the connection failed after the server had committed: the retry
/// then finds the batch's rows stored and resolves its events as duplicates.
///
/// This hot path talks to the connection pool under sea-orm through sqlx directly: the
/// columns are bound as slices borrowed from the requests (`&[&str]`, `&[Uuid]`), where
/// sea-orm's `Value`s would copy every string of the batch into a boxed value and clone them
/// again when binding (7% of the worker's CPU at saturation, docs/BENCHMARKS.md). Errors come
/// back as the same `DbErr` variants sea-orm gives, so [`crate::error::classify_db`] reads
/// them unchanged.
pub async fn store_batch<R: Borrow<SignupRequest>>(
    db: &DatabaseConnection,
    requests: &[R],
) -> Result<Vec<Resolution>, DbErr> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let requests: Vec<&SignupRequest> = requests.iter().map(Borrow::borrow).collect();
    let pool = db.get_postgres_connection_pool();
    let Stored {
        existing,
        steps,
        inserted,
    } = match path(&requests) {
        Path::Distinct => store_distinct(pool, &requests).await?,
        Path::Transaction => store_in_transaction(pool, &requests).await?,
    };

    let inserted_tenant = |event_id: &Uuid| -> Result<StoredTenant, DbErr> {
        inserted.get(event_id).cloned().ok_or_else(|| {
            DbErr::Custom(format!("INSERT did not return the row of event {event_id}"))
        })
    };
    requests
        .iter()
        .zip(steps)
        .map(|(req, step)| {
            Ok(match step {
                Step::Insert => {
                    let tenant = inserted_tenant(&req.event_id)?;
                    let exhausted = !tenant.is_demo && tenant.founding_member_number.is_none();
                    Resolution::Created { tenant, exhausted }
                }
                Step::DuplicateOfStored(i) => duplicate(req, existing[i].clone()),
                Step::DuplicateOfBatch(_) => duplicate(req, inserted_tenant(&req.event_id)?),
                Step::SlugTaken => Resolution::SlugTaken,
            })
        })
        .collect()
}

/// What a committed batch came to: the stored rows that shared a key with it, the plan
/// decided from them, and the rows inserted, by event id.
struct Stored {
    existing: Vec<StoredTenant>,
    steps: Vec<Step>,
    inserted: HashMap<Uuid, StoredTenant>,
}

/// [`Path::Distinct`]: one statement outside any `BEGIN`, so its own transaction; then the
/// plan, from the stored rows it returned.
async fn store_distinct(pool: &sqlx::PgPool, requests: &[&SignupRequest]) -> Result<Stored, DbErr> {
    let rows = bind_rows(sqlx::query(&STORE_DISTINCT_SQL), requests)
        .fetch_all(pool)
        .await
        .map_err(query_err)?;
    let mut existing = Vec::new();
    let mut inserted = HashMap::with_capacity(rows.len());
    for row in &rows {
        let tenant = StoredTenant::from_row(row)?;
        if row.try_get::<bool, _>("inserted").map_err(query_err)? {
            inserted.insert(tenant.event_id, tenant);
        } else {
            existing.push(tenant);
        }
    }
    let steps = plan(requests, &existing);
    let planned = steps.iter().filter(|s| **s == Step::Insert).count();
    // The function and `plan` apply the same rules to a batch without copies, so this is a
    // bug if it happens; the rows are committed, and the retry that follows the error
    // resolves their events as duplicates of them.
    if planned != inserted.len() {
        return Err(DbErr::Custom(format!(
            "{STORE_DISTINCT_FUNCTION} inserted {} rows where the plan inserts {planned}",
            inserted.len()
        )));
    }
    Ok(Stored {
        existing,
        steps,
        inserted,
    })
}

/// [`Path::Transaction`]: the lookup, [`plan`], then the INSERT of what the plan inserts.
async fn store_in_transaction(
    pool: &sqlx::PgPool,
    requests: &[&SignupRequest],
) -> Result<Stored, DbErr> {
    let event_ids: Vec<Uuid> = requests.iter().map(|r| r.event_id).collect();
    let slugs: Vec<&str> = requests.iter().map(|r| r.slug.as_str()).collect();

    let mut txn = pool.begin().await.map_err(query_err)?;
    let existing: Vec<StoredTenant> = sqlx::query(&LOCK_AND_READ_SQL)
        .bind(&event_ids)
        .bind(&slugs)
        .fetch_all(&mut *txn)
        .await
        .map_err(query_err)?
        .iter()
        .map(StoredTenant::from_row)
        .collect::<Result<_, _>>()?;

    let steps = plan(requests, &existing);
    let new: Vec<&SignupRequest> = requests
        .iter()
        .zip(&steps)
        .filter(|(_, s)| **s == Step::Insert)
        .map(|(r, _)| *r)
        .collect();

    let mut inserted = HashMap::with_capacity(new.len());
    if !new.is_empty() {
        let rows = bind_rows(sqlx::query(&INSERT_SQL), &new)
            .fetch_all(&mut *txn)
            .await
            .map_err(query_err)?;
        for row in &rows {
            let t = StoredTenant::from_row(row)?;
            inserted.insert(t.event_id, t);
        }
    }
    txn.commit().await.map_err(query_err)?;
    Ok(Stored {
        existing,
        steps,
        inserted,
    })
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds the rows' columns as `$1..$8`, in the order [`INSERT_SQL`] and
/// [`STORE_DISTINCT_SQL`] take them, borrowing every string.
fn bind_rows<'q>(query: PgQuery<'q>, rows: &[&'q SignupRequest]) -> PgQuery<'q> {
    let text =
        |f: fn(&SignupRequest) -> &str| -> Vec<&'q str> { rows.iter().map(|r| f(r)).collect() };
    query
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<Uuid>>())
        .bind(text(|r| r.slug.as_str()))
        .bind(text(|r| r.business_name.as_str()))
        .bind(text(|r| r.owner_email.as_str()))
        .bind(text(|r| r.tier.as_str()))
        .bind(rows.iter().map(|r| r.is_demo).collect::<Vec<bool>>())
        .bind(
            rows.iter()
                .map(|r| {
                    r.occurred_at
                        .map_or(DateTime::UNIX_EPOCH, OccurredAt::instant)
                })
                .collect::<Vec<DateTime<Utc>>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.occurred_at.is_some())
                .collect::<Vec<bool>>(),
        )
}

/// As sea-orm reports a failed statement, so that the classification stays in one place.
fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e))
}

impl StoredTenant {
    fn from_row(row: &PgRow) -> Result<Self, DbErr> {
        let get = || -> Result<Self, sqlx::Error> {
            Ok(Self {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                slug: row.try_get("slug")?,
                is_demo: row.try_get("is_demo")?,
                founding_member_number: row.try_get("founding_member_number")?,
            })
        };
        get().map_err(query_err)
    }
}

fn duplicate(req: &SignupRequest, tenant: StoredTenant) -> Resolution {
    let slug_differs = tenant.slug != req.slug.as_str();
    Resolution::Duplicate {
        tenant,
        slug_differs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{signup_body, Tier};

    fn req(event_id: Uuid, slug: &str) -> SignupRequest {
        SignupRequest::parse(&signup_body(
            event_id,
            slug,
            "Name",
            "a@b.example",
            Tier::Starter,
            false,
        ))
        .unwrap()
    }

    fn stored(event_id: Uuid, slug: &str) -> StoredTenant {
        StoredTenant {
            id: 1,
            event_id,
            slug: slug.into(),
            is_demo: false,
            founding_member_number: Some(1),
        }
    }

    #[test]
    fn new_events_are_inserted() {
        let (a, b) = (req(Uuid::new_v4(), "aaa"), req(Uuid::new_v4(), "bbb"));
        assert_eq!(plan(&[&a, &b], &[]), vec![Step::Insert, Step::Insert]);
    }

    #[test]
    fn stored_event_id_is_a_duplicate_whatever_its_slug() {
        let id = Uuid::new_v4();
        let existing = [stored(id, "aaa")];
        assert_eq!(
            plan(&[&req(id, "aaa")], &existing),
            vec![Step::DuplicateOfStored(0)]
        );
        assert_eq!(
            plan(&[&req(id, "zzz")], &existing),
            vec![Step::DuplicateOfStored(0)]
        );
    }

    #[test]
    fn slug_of_another_event_is_taken() {
        let existing = [stored(Uuid::new_v4(), "aaa")];
        assert_eq!(
            plan(&[&req(Uuid::new_v4(), "aaa")], &existing),
            vec![Step::SlugTaken]
        );
    }

    #[test]
    fn copies_inside_one_batch_resolve_as_if_sequential() {
        let id = Uuid::new_v4();
        let first = req(id, "aaa");
        let copy = req(id, "aaa");
        let rival = req(Uuid::new_v4(), "aaa");
        assert_eq!(
            plan(&[&first, &copy, &rival], &[]),
            vec![Step::Insert, Step::DuplicateOfBatch(0), Step::SlugTaken]
        );
    }

    #[test]
    fn only_a_batch_without_copies_inside_takes_the_one_call() {
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let first = req(id, "aaa");
        assert_eq!(path(&[&first]), Path::Distinct);
        assert_eq!(path(&[&first, &req(other, "bbb")]), Path::Distinct);
        assert_eq!(path(&[&first, &req(id, "bbb")]), Path::Transaction);
        assert_eq!(path(&[&first, &req(other, "aaa")]), Path::Transaction);
        assert_eq!(
            path(&[&req(other, "bbb"), &first, &req(id, "aaa")]),
            Path::Transaction
        );
    }

    #[test]
    fn a_copy_of_a_rejected_event_is_judged_on_its_own_slug() {
        let id = Uuid::new_v4();
        let existing = [stored(Uuid::new_v4(), "aaa")];
        let rejected = req(id, "aaa");
        let retry_elsewhere = req(id, "bbb");
        assert_eq!(
            plan(&[&rejected, &retry_elsewhere], &existing),
            vec![Step::SlugTaken, Step::Insert]
        );
    }
}
