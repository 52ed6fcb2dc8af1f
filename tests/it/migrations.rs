//! Migrations up, down, up; concurrent `migrate` runs; capacity from the flag.

use entity::prelude::{FoundingNumberPool, FoundingNumberRetired, Tenants};
use entity::tenants;
use migration::schema;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityName, EntityTrait, QueryFilter};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_go_up_down_and_up_again() {
    let env = TestEnv::new(3).await;
    assert_eq!(
        env.founding().await.capacity,
        3,
        "--founding-capacity sets MAXVALUE"
    );
    env.execute("INSERT INTO tenants (event_id, slug, business_name, owner_email, tier) VALUES (gen_random_uuid(), 'before-down', 'B', 'a@b.c', 'starter')").await;

    Migrator::down(&env.db, None).await.unwrap();
    let left = env
        .scalar("SELECT count(*) FROM pg_class WHERE relname IN ('tenants', 'founding_member_number_seq')")
        .await;
    assert_eq!(left, 0, "down removes the table and the sequence");
    let functions = env
        .scalar("SELECT count(*) FROM pg_proc WHERE proname IN ('assign_founding_member_number', 'signup_lock_keys')")
        .await;
    assert_eq!(functions, 0);

    Migrator::up(&env.db, None).await.unwrap();
    // Without the capacity setting, `up` uses the default capacity.
    assert_eq!(env.founding().await.capacity, 100);
    env.execute("INSERT INTO tenants (event_id, slug, business_name, owner_email, tier) VALUES (gen_random_uuid(), 'after-up', 'A', 'a@b.c', 'starter')").await;
    assert_eq!(
        env.scalar("SELECT founding_member_number::bigint FROM tenants WHERE slug = 'after-up'")
            .await,
        1
    );
    // The entity crate decodes the migrated table: every column, every type.
    let row = tenants::Entity::find()
        .filter(tenants::Column::Slug.eq("after-up"))
        .one(&env.db)
        .await
        .unwrap()
        .expect("the row through the entity");
    assert_eq!(row.founding_member_number, Some(1));
    assert_eq!(
        (row.tier.as_str(), row.is_demo, row.occurred_at),
        ("starter", false, None)
    );
    // The trigger overrides any number the application sends, and demo tenants get none.
    env.execute("INSERT INTO tenants (event_id, slug, business_name, owner_email, tier, is_demo, founding_member_number) VALUES (gen_random_uuid(), 'demo-x', 'D', 'a@b.c', 'starter', true, 42)").await;
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM tenants WHERE slug = 'demo-x' AND founding_member_number IS NULL"
        )
        .await,
        1
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_are_safe_and_idempotent() {
    let env = TestEnv::new(7).await;
    // Drop everything, then let four processes migrate at once.
    Migrator::down(&env.db, None).await.unwrap();
    env.db
        .execute_unprepared("DROP TABLE seaql_migrations")
        .await
        .unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            env.command()
                .args(["migrate", "--founding-capacity", "9"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all = Migrator::migrations().len() as i64;
    assert_eq!(
        env.scalar("SELECT count(*) FROM seaql_migrations").await,
        all
    );
    assert_eq!(env.founding().await.capacity, 9);
    // A later run with another capacity does not change it: it applies only at creation.
    env.run_ok(&["migrate", "--founding-capacity", "50"]);
    assert_eq!(env.founding().await.capacity, 9);
    env.cleanup().await;
}

/// Every name `migration::schema` exports (the only place outside the migrations that spells
/// them) names an object the migrations created, and the entities map the same tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_exist_after_migrating() {
    let env = TestEnv::new(5).await;
    let relations = [
        (schema::TENANTS, "r"),
        (schema::FOUNDING_SEQUENCE, "S"),
        (schema::FOUNDING_NUMBER_INDEX, "i"),
        (schema::POOL, "r"),
        (schema::RETIRED, "r"),
        (schema::RECLAIM_STATE, "r"),
    ];
    for (name, kind) in relations {
        let found = env
            .scalar(&format!(
                "SELECT count(*) FROM pg_class WHERE relname = '{name}' AND relkind = '{kind}'"
            ))
            .await;
        assert_eq!(found, 1, "{name} ({kind})");
    }
    for constraint in [schema::EVENT_ID_KEY, schema::SLUG_KEY] {
        let found = env
            .scalar(&format!(
                "SELECT count(*) FROM pg_constraint WHERE conname = '{constraint}' AND contype = 'u'"
            ))
            .await;
        assert_eq!(found, 1, "{constraint}");
    }
    for function in [
        schema::LOCK_KEYS_FUNCTION,
        schema::LOCK_AND_READ_FUNCTION,
        schema::STORE_DISTINCT_FUNCTION,
        schema::RECLAIM_FUNCTION,
        schema::ASSIGNED_FUNCTION,
    ] {
        let found = env
            .scalar(&format!(
                "SELECT count(*) FROM pg_proc WHERE proname = '{function}'"
            ))
            .await;
        assert_eq!(found, 1, "{function}");
    }
    assert_eq!(Tenants.table_name(), schema::TENANTS);
    assert_eq!(FoundingNumberPool.table_name(), schema::POOL);
    assert_eq!(FoundingNumberRetired.table_name(), schema::RETIRED);
    // And the default capacity is the one `migrate` uses when told nothing.
    assert_eq!(migration::DEFAULT_FOUNDING_CAPACITY, 100);
    env.cleanup().await;
}

/// The batch lookup (`signup_lock_and_read`) keeps using the unique indexes when `tenants`
/// grows after its plan was made: PL/pgSQL keeps plans for the session, and a plan made while
/// the table was empty would otherwise scan it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_lookup_never_scans_the_table_whatever_its_size_at_planning() {
    let env = TestEnv::new(5).await;
    // One session throughout, as a worker's connection would be.
    let session = signup_worker::db::DbTarget::parse(&env.db_url)
        .unwrap()
        .connect(1)
        .await
        .unwrap();
    let run = |sql: &'static str| {
        let session = &session;
        async move { session.execute_unprepared(sql).await.unwrap() }
    };
    let seq_scans = || async {
        // Counters reach the shared statistics when the session's transaction ends.
        run("SELECT pg_stat_force_next_flush()").await;
        run("SELECT 1").await;
        env.scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'tenants'")
            .await
    };
    let lookup = "BEGIN; \
        SELECT count(*) FROM signup_lock_and_read(ARRAY[gen_random_uuid()], ARRAY['grown-7']); \
        COMMIT;";
    // Planned on a small table whose statistics say so (more than the 5 executions after
    // which PostgreSQL may switch to a generic plan).
    run(
        "INSERT INTO tenants (event_id, slug, business_name, owner_email, tier, is_demo) \
         SELECT gen_random_uuid(), 'small-' || g, 'B', 'a@b.c', 'starter', true \
         FROM generate_series(1, 3) AS g",
    )
    .await;
    run("ANALYZE tenants").await;
    for _ in 0..8 {
        run(lookup).await;
    }
    let before = seq_scans().await;
    run(
        "INSERT INTO tenants (event_id, slug, business_name, owner_email, tier, is_demo) \
         SELECT gen_random_uuid(), 'grown-' || g, 'B', 'a@b.c', 'starter', true \
         FROM generate_series(1, 20000) AS g",
    )
    .await;
    for _ in 0..8 {
        run(lookup).await;
    }
    assert_eq!(seq_scans().await, before, "the lookup scanned the table");
    // The counter does count: a query no index serves scans it once.
    run("SELECT count(*) FROM tenants WHERE business_name = 'nobody'").await;
    assert_eq!(seq_scans().await, before + 1);
    let _ = session.close().await;
    env.cleanup().await;
}
