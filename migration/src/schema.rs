//! The names of the schema objects the migrations create, for everyone outside this crate.
//!
//! The worker classifies errors by constraint name, reads the sequence by name and calls the
//! numbering functions by name: it takes every one of those names from here, so that a
//! migration that renames an object changes one file. The migrations themselves keep their SQL
//! literal (a migration is history and must not change when a constant does); the test
//! `schema_names_exist_after_migrating` checks that each name below exists once migrated.

/// The tenants table (contract section 5).
pub const TENANTS: &str = "tenants";
/// The bounded sequence the numbering trigger draws from (`MAXVALUE` = capacity).
pub const FOUNDING_SEQUENCE: &str = "founding_member_number_seq";
/// The partial unique index on `tenants.founding_member_number`.
pub const FOUNDING_NUMBER_INDEX: &str = "tenants_founding_member_number_key";
/// The unique constraint on `tenants.event_id`.
pub const EVENT_ID_KEY: &str = "tenants_event_id_key";
/// The unique constraint on `tenants.slug`.
pub const SLUG_KEY: &str = "tenants_slug_key";
/// Reclaimed numbers waiting for a tenant (migration 4).
pub const POOL: &str = "founding_number_pool";
/// Numbers whose tenant was deleted, never handed out again (migration 4).
pub const RETIRED: &str = "founding_number_retired";
/// The reclaimer's bookkeeping, one row (migration 4).
pub const RECLAIM_STATE: &str = "founding_reclaim_state";
/// `signup_lock_keys(uuid[], text[])`: takes the batch's natural-key locks (migration 3).
pub const LOCK_KEYS_FUNCTION: &str = "signup_lock_keys";
/// `signup_lock_and_read(uuid[], text[])`: the same locks, then the stored rows sharing a key
/// with the batch (migration 7).
pub const LOCK_AND_READ_FUNCTION: &str = "signup_lock_and_read";
/// `signup_store_distinct(uuid[], text[], text[], text[], text[], boolean[], timestamptz[],
/// boolean[])`: a batch without copies inside it, locked, looked up and inserted in one call
/// (migration 8).
pub const STORE_DISTINCT_FUNCTION: &str = "signup_store_distinct";
/// `founding_reclaim(bigint)`: returns burned numbers to the pool (migration 4).
pub const RECLAIM_FUNCTION: &str = "founding_reclaim";
/// `founding_assigned()`: the count of numbered tenants, from the partial index (migration 6).
pub const ASSIGNED_FUNCTION: &str = "founding_assigned";

/// What `run --no-migrate` needs and nothing more: read and insert tenants, draw numbers,
/// take the signup locks, and reclaim. No DDL, no ownership, no UPDATE or DELETE on tenants.
/// The numbering and retiring triggers run with the inserting role's rights, hence the pool
/// and retired grants.
///
/// `role` must already be quoted as an SQL identifier (see [`quote_ident`]).
pub fn runtime_grants(role: &str) -> Vec<String> {
    vec![
        format!("GRANT SELECT, INSERT ON {TENANTS} TO {role}"),
        format!("GRANT USAGE, SELECT ON SEQUENCE {FOUNDING_SEQUENCE} TO {role}"),
        format!("GRANT EXECUTE ON FUNCTION {LOCK_KEYS_FUNCTION}(uuid[], text[]) TO {role}"),
        format!("GRANT EXECUTE ON FUNCTION {LOCK_AND_READ_FUNCTION}(uuid[], text[]) TO {role}"),
        format!(
            "GRANT EXECUTE ON FUNCTION {STORE_DISTINCT_FUNCTION}(uuid[], text[], text[], text[], \
             text[], boolean[], timestamptz[], boolean[]) TO {role}"
        ),
        format!("GRANT EXECUTE ON FUNCTION {RECLAIM_FUNCTION}(bigint) TO {role}"),
        format!("GRANT EXECUTE ON FUNCTION {ASSIGNED_FUNCTION}() TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {POOL} TO {role}"),
        format!("GRANT SELECT, INSERT ON {RETIRED} TO {role}"),
        format!("GRANT SELECT, UPDATE ON {RECLAIM_STATE} TO {role}"),
    ]
}

/// Quotes an SQL identifier (doubling embedded double quotes), for names that cannot be bound
/// as parameters: roles in GRANT, databases in CREATE DATABASE.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(quote_ident("signup_runtime"), "\"signup_runtime\"");
        assert_eq!(
            quote_ident("a\"; DROP TABLE tenants; --"),
            "\"a\"\"; DROP TABLE tenants; --\""
        );
    }

    #[test]
    fn runtime_grants_never_give_ddl_update_or_delete_on_tenants() {
        for grant in runtime_grants("\"r\"") {
            assert!(!grant.contains("ALL"), "{grant}");
            assert!(!grant.contains("CREATE"), "{grant}");
            if grant.contains(&format!(" ON {TENANTS} ")) {
                assert!(
                    !grant.contains("UPDATE") && !grant.contains("DELETE"),
                    "{grant}"
                );
            }
        }
    }
}
