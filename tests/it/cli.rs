//! The command line as a user meets it: help, bad flags, unreachable servers.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::BIN;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String, Duration) {
    let start = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["migrate", "--help"],
        &["run", "--help"],
        &["publish", "--help"],
        &["status", "--help"],
        &["founding", "set-capacity", "--help"],
        &["founding", "list", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "replay", "--help"],
        &["dlq", "purge", "--help"],
        &["schema", "--help"],
    ] {
        let (ok, stdout, _, _) = run(sub, &[]);
        assert!(ok && stdout.contains("Usage"), "{sub:?}");
    }
    let (_, stdout, _, _) = run(&["run", "--help"], &[]);
    for setting in [
        "PREFETCH",
        "METRICS_ADDR",
        "MAX_DELIVERIES",
        "DATABASE_URL",
        "AMQP_URL",
        "SIGNUP_QUEUE_TYPE",
        "FOUNDING_CAPACITY",
    ] {
        assert!(stdout.contains(setting), "run --help names {setting}");
    }
    assert!(
        stdout.contains("default: 1500"),
        "run --help shows the prefetch default"
    );
}

#[test]
fn schema_prints_the_files_of_docs_schemas() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas");
    let file = |name: &str| std::fs::read_to_string(docs.join(name)).unwrap();
    for (args, name) in [
        (&["schema"][..], "tenant.signup.requested.json"),
        (&["schema", "request"], "tenant.signup.requested.json"),
        (&["schema", "completed"], "tenant.signup.completed.json"),
        (&["schema", "rejected"], "tenant.signup.rejected.json"),
    ] {
        // No server is needed: unreachable URLs change nothing.
        let (ok, stdout, stderr, _) = run(
            args,
            &[
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("AMQP_URL", "amqp://nobody:secret@127.0.0.1:1/%2f"),
            ],
        );
        assert!(ok, "{args:?}: {stderr}");
        assert_eq!(stdout, file(name), "{args:?} prints {name} byte for byte");
    }
    let (_, help, _, _) = run(&["schema", "--help"], &[]);
    for word in [
        "request",
        "completed",
        "rejected",
        "Without an argument",
        "2020-12",
    ] {
        assert!(help.contains(word), "schema --help says {word:?}:\n{help}");
    }
    let (ok, _, stderr, _) = run(&["schema", "outcome"], &[]);
    assert!(!ok && stderr.contains("outcome"), "{stderr}");
}

#[test]
fn a_bad_flag_is_named_and_fails() {
    for args in [
        &["run", "--prefetchh", "3"][..],
        &["publish", "--duplicates", "7"],
        &["status", "--jsn"],
        &["founding", "set-capacity", "lots"],
        &["founding", "list", "--json", "--csv"],
        &["dlq", "list", "--jsn"],
        &["dlq", "list", "--limit", "some"],
        &["dlq", "replay", "--reasons", "x"],
        &["dlq", "purge", "--yes", "--reason"],
    ] {
        let (ok, _, stderr, _) = run(args, &[]);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let (_, _, stderr, _) = run(&["run", "--prefetchh", "3"], &[]);
    assert!(stderr.contains("--prefetchh"));
}

#[test]
fn one_shot_commands_fail_fast_on_unreachable_servers() {
    let no_pg = ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere");
    let no_mq = ("AMQP_URL", "amqp://guest:secret@127.0.0.1:1/%2f");
    let mut cases: Vec<(&[&str], (&str, &str), &str)> = vec![
        (&["migrate"], no_pg, "PostgreSQL at 127.0.0.1:1"),
        (&["status"], no_pg, "PostgreSQL at 127.0.0.1:1"),
        (
            &["founding", "set-capacity", "10"],
            no_pg,
            "PostgreSQL at 127.0.0.1:1",
        ),
        (&["founding", "list"], no_pg, "PostgreSQL at 127.0.0.1:1"),
        (
            &["publish", "--count", "1"],
            no_mq,
            "RabbitMQ at amqp://guest:***@127.0.0.1:1",
        ),
        (
            &["dlq", "replay"],
            no_mq,
            "RabbitMQ at amqp://guest:***@127.0.0.1:1",
        ),
        (
            &["dlq", "list"],
            no_mq,
            "RabbitMQ at amqp://guest:***@127.0.0.1:1",
        ),
        (
            &["dlq", "purge", "--yes", "--reason", "invalid"],
            no_mq,
            "RabbitMQ at amqp://guest:***@127.0.0.1:1",
        ),
    ];
    let no_mq_list = (
        "AMQP_URL",
        "amqp://guest:secret@127.0.0.1:1/%2f,amqps://guest:secret@127.0.0.1:2/%2f",
    );
    cases.push((
        &["dlq", "list"],
        no_mq_list,
        "RabbitMQ at any of its 2 addresses: ",
    ));
    for (args, env, server) in cases {
        let (ok, _, stderr, took) = run(args, &[env, ("RUST_LOG", "off")]);
        assert!(!ok, "{args:?}");
        assert!(took < Duration::from_secs(30), "{args:?} took {took:?}");
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line, got {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(server),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "the password never shows");
    }
}
