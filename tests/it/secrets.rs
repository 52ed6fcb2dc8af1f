//! No password in any output at any log level, and mistyped URLs refused up front with the
//! password masked.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use signup_worker::db::DbTarget;

use crate::helpers::*;

/// Every way a password could show: as text, and as the decimal byte list lapin's frame
/// debug output used (`LongString([0, 115, ...])`).
fn leaks(output: &str, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for s in secrets {
        let bytes = s
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for needle in [s.to_string(), bytes] {
            if output.contains(&needle) {
                found.push(needle);
            }
        }
    }
    found
}

fn rabbitmqctl(args: &[&str]) {
    let ok = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_at_trace_level_in_any_command() {
    let env = TestEnv::new(100).await;
    let user = format!("sec_{}", env.id);
    let amqp_pw = format!("amqpPw{}", &env.id[..8]);
    // Trust auth ignores the PostgreSQL password, but it still travels through every parser
    // and error path of the worker.
    let pg_pw = format!("pgPw{}", &env.id[..8]);
    rabbitmqctl(&["add_user", &user, &amqp_pw]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let amqp_url = amqp_url_as(&user, &amqp_pw);
    let admin_user = url::Url::parse(&env.db_url).unwrap().username().to_owned();
    let db_url = pg_url_as(&env.db_name, &admin_user, Some(&pg_pw));
    let secrets = [amqp_pw.as_str(), pg_pw.as_str()];

    let mut all_output = String::new();
    for format in ["text", "json"] {
        for args in [
            &["migrate"][..],
            &["publish", "--count", "5", "--no-progress"],
            &["status"],
            &["status", "--json"],
            &["founding", "set-capacity", "200"],
            &["dlq", "replay"],
        ] {
            let out = env
                .command()
                .env("AMQP_URL", &amqp_url)
                .env("DATABASE_URL", &db_url)
                .env("RUST_LOG", "trace")
                .env("LOG_FORMAT", format)
                .args(args)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{args:?}: {text}");
            assert!(
                text.contains("TRACE") || args[0] != "migrate",
                "trace output is really on: {text}"
            );
            assert_eq!(
                leaks(&text, &secrets),
                Vec::<String>::new(),
                "{args:?} {format}"
            );
            all_output.push_str(&text);
        }
    }
    // A refused password: the error names the server, not the password tried.
    let out = env
        .command()
        .env("AMQP_URL", amqp_url_as(&user, &format!("wrong{amqp_pw}")))
        .env("RUST_LOG", "trace")
        .args(["status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(leaks(&text, &secrets), Vec::<String>::new(), "{text}");

    // The worker itself, at trace level, storing the 10 published events.
    let worker = env.spawn_worker(&[
        ("AMQP_URL", amqp_url.as_str()),
        ("DATABASE_URL", db_url.as_str()),
        ("RUST_LOG", "trace"),
    ]);
    wait_for("10 tenants", || async { env.tenant_count().await == 10 }).await;
    worker.sigterm();
    let mut worker = worker;
    assert!(worker.wait_exit().await.success());
    let logs = worker.logs().join("\n");
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "trace output is really on: {logs}"
    );
    assert_eq!(leaks(&logs, &secrets), Vec::<String>::new());
    drop(worker);
    rabbitmqctl(&["delete_user", &user]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_urls_fail_fast_with_the_password_masked() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let pw = format!("typoPw{id}");
    let amqp_cases = [
        format!("amqp//user:{pw}@127.0.0.1:5672"),
        "amqp:".to_owned(),
        format!("user:{pw}@127.0.0.1:5672"),
        format!("http://user:{pw}@127.0.0.1:5672"),
    ];
    let db_cases = [
        format!("postgres:/user:{pw}@127.0.0.1:5432/typo_{id}"),
        format!("postgres//user:{pw}@127.0.0.1:5432/typo_{id}"),
        format!("postgres://user:{pw}@127.0.0.1:5432"),
        format!("mysql://user:{pw}@127.0.0.1:5432/typo_{id}"),
    ];
    let mut runs: Vec<(&str, String, &[&str])> = Vec::new();
    for url in &amqp_cases {
        for args in [
            &["publish", "--count", "1"][..],
            &["dlq", "replay"],
            &["run"],
        ] {
            runs.push(("AMQP_URL", url.clone(), args));
        }
    }
    for url in &db_cases {
        for args in [
            &["migrate"][..],
            &["founding", "set-capacity", "5"],
            &["run"],
        ] {
            runs.push(("DATABASE_URL", url.clone(), args));
        }
    }
    for (var, url, args) in runs {
        let started = Instant::now();
        let out = Command::new(BIN)
            .env(var, &url)
            .env("RUST_LOG", "trace")
            .args(args)
            .args(if args[0] == "run" {
                &["--metrics-addr", "127.0.0.1:0"][..]
            } else {
                &[]
            })
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={url} {args:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{var}={url} {args:?} took {:?}",
            started.elapsed()
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{var}={url} {args:?}: {stderr}");
        assert!(
            errors[0].starts_with(&format!("error: invalid {var}")),
            "{stderr}"
        );
        assert!(!stderr.contains(&pw), "{var} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let env_db = DbTarget::parse(&pg_url("postgres"))
        .unwrap()
        .connect(1)
        .await
        .unwrap();
    let row = sea_orm::ConnectionTrait::query_one(
        &env_db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT count(*) FROM pg_database WHERE datname LIKE '%{id}%'"),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        row.try_get_by_index::<i64>(0).unwrap(),
        0,
        "no database created"
    );
}
