//! TLS with a private CA (issue 10, contract section 2): a private PostgreSQL with `ssl = on`
//! and only `hostssl` lines, a private RabbitMQ node with only a TLS listener that verifies
//! peers, both with certificates from a throw-away CA. Every command works through the URL
//! parameters alone; every certificate problem is one plain error line naming the server.

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{wait_for, Worker, BIN};
use crate::private::{
    free_port, poll_until, skip_unless, Ca, CertPair, PgOpts, PgTls, PrivatePostgres,
    PrivateRabbit, RabbitOpts, RabbitTls,
};

const DB: &str = "signup_worker";

fn available() -> bool {
    skip_unless(
        Ca::available() && PrivatePostgres::available() && PrivateRabbit::available(),
        "openssl, initdb/pg_ctl as postgres, or rabbitmq-server",
    )
}

/// The binary with both URLs and queue names of its own.
fn command(db_url: &str, amqp_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DATABASE_URL", db_url)
        .env("AMQP_URL", amqp_url)
        .env("SIGNUP_QUEUE", "tls.signups")
        .env("SIGNUP_EXCHANGE", "tls.events")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    cmd
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-shot command that must fail with one error line holding every piece of `says`, and
/// never the password.
fn fails_with(mut cmd: Command, args: &[&str], says: &[&str]) -> String {
    let start = Instant::now();
    let out = cmd.args(args).env("RUST_LOG", "off").output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{args:?} too slow"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one error line, got {stderr}");
    for s in says {
        assert!(lines[0].contains(s), "{args:?}: {s:?} missing in {stderr}");
    }
    assert!(!stderr.contains(PrivatePostgres::PASSWORD) && !stderr.contains("guest:guest"));
    eprintln!("{args:?}: {stderr}");
    stderr
}

fn amqps_query(ca: &std::path::Path, client: Option<&CertPair>) -> String {
    let mut q = format!("cacertfile={}", ca.display());
    if let Some(c) = client {
        q += &format!("&certfile={}&keyfile={}", c.cert.display(), c.key.display());
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_over_verify_full_and_amqps_with_client_certificates() {
    if !available() {
        return;
    }
    let (ca, other_ca, pg, rabbit, client) = tokio::task::spawn_blocking(|| {
        let ca = Ca::new();
        let other_ca = Ca::new();
        let client = ca.issue_client("signup-worker");
        let pg = PrivatePostgres::start(PgOpts {
            tls: Some(PgTls {
                server: ca.issue_server("localhost", &[]),
                ca: ca.cert.clone(),
                client_cert: false,
            }),
        });
        let rabbit = PrivateRabbit::start(RabbitOpts {
            tls: Some(RabbitTls {
                server: ca.issue_server("localhost", &[]),
                ca: ca.cert.clone(),
                verify_peer: true,
            }),
            tls_only: true,
        });
        (ca, other_ca, pg, rabbit, client)
    })
    .await
    .unwrap();
    let db_url = pg.app_url(DB);
    let amqp_url = rabbit.amqps_url(&amqps_query(&ca.cert, Some(&client)));
    let pg_server = format!("PostgreSQL at localhost:{}", pg.port());
    let mq_server = format!(
        "RabbitMQ at amqps://guest:***@localhost:{}",
        rabbit.amqps_port()
    );

    // The whole life of the service over TLS only.
    ok(
        command(&db_url, &amqp_url)
            .args(["migrate", "--founding-capacity", "20"])
            .output()
            .unwrap(),
        "migrate",
    );
    ok(
        command(&db_url, &amqp_url)
            .args([
                "publish",
                "--count",
                "40",
                "--demo",
                "0.25",
                "--no-progress",
            ])
            .output()
            .unwrap(),
        "publish",
    );
    let mut run = command(&db_url, &amqp_url);
    run.args(["run", "--metrics-addr", "127.0.0.1:0"]);
    let mut worker = Worker::spawn_command(run);
    worker.wait_ready().await;
    let count = || {
        pg.psql_in(DB, "SELECT count(*) FROM tenants")
            .trim()
            .to_owned()
    };
    wait_for("40 tenants stored over TLS", || async { count() == "40" }).await;
    let status: serde_json::Value = serde_json::from_str(&ok(
        command(&db_url, &amqp_url)
            .args(["status", "--json"])
            .output()
            .unwrap(),
        "status",
    ))
    .unwrap();
    assert_eq!(status["queues"]["main"]["consumers"], 1, "{status}");
    ok(
        command(&db_url, &amqp_url)
            .args(["dlq", "list"])
            .output()
            .unwrap(),
        "dlq list",
    );
    worker.sigterm();
    assert!(worker.wait_exit().await.success());

    // The CA given to the client is not the one that signed the server: one line each,
    // naming the server and what to do.
    let wrong_pg = pg.url(
        PrivatePostgres::USER,
        Some(PrivatePostgres::PASSWORD),
        DB,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other_ca.cert.display()
        ),
    );
    fails_with(
        command(&wrong_pg, &amqp_url),
        &["founding", "list"],
        &[&pg_server, "unknown issuer", "sslrootcert="],
    );
    let wrong_mq = rabbit.amqps_url(&amqps_query(&other_ca.cert, Some(&client)));
    fails_with(
        command(&db_url, &wrong_mq),
        &["dlq", "list"],
        &[&mq_server, "unknown issuer", "cacertfile="],
    );
    // Neither the system store nor the compiled-in roots know a private CA.
    let no_ca = rabbit.amqps_url("");
    fails_with(
        command(&db_url, &no_ca),
        &["dlq", "list"],
        &[&mq_server, "unknown issuer"],
    );
    // SSL_CERT_FILE is the other way to trust it (the broker still wants our certificate).
    let cert_only = rabbit.amqps_url(&format!(
        "certfile={}&keyfile={}",
        client.cert.display(),
        client.key.display()
    ));
    ok(
        command(&db_url, &cert_only)
            .env("SSL_CERT_FILE", &ca.cert)
            .args(["dlq", "list"])
            .output()
            .unwrap(),
        "dlq list with SSL_CERT_FILE",
    );
    // The broker verifies peers: without a client certificate it ends the handshake.
    let no_client = rabbit.amqps_url(&amqps_query(&ca.cert, None));
    fails_with(
        command(&db_url, &no_client),
        &["dlq", "list"],
        &[&mq_server, "client certificate"],
    );
    // `run` does not exit on a certificate problem: it says why per attempt and stays unready
    // (a certificate may be fixed under it), then stops cleanly.
    let mut run = command(&db_url, &wrong_mq);
    run.args(["run", "--metrics-addr", "127.0.0.1:0"]);
    let mut worker = Worker::spawn_command(run);
    wait_for("run warns about the certificate", || async {
        worker.logs().iter().any(|l| l.contains("unknown issuer"))
    })
    .await;
    assert!(!worker.is_ready().await);
    worker.sigterm();
    assert!(worker.wait_exit().await.success());
    assert!(worker
        .logs()
        .iter()
        .all(|l| !l.contains("guest:guest") && !l.contains(PrivatePostgres::PASSWORD)));
    drop((pg, rabbit));
}

/// `openssl s_server` presenting a certificate: enough for a TLS handshake, which is where
/// certificate problems show (it speaks no AMQP).
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(cert: &CertPair) -> Self {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        poll_until("s_server listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn expired_and_misnamed_certificates_are_one_plain_line() {
    if !available() {
        return;
    }
    let ca = Ca::new();
    let cases = [
        (ca.issue_expired_server("localhost"), "has expired"),
        (ca.issue_wrong_name_server(), "does not name the host"),
    ];
    for (cert, says) in cases {
        let server = TlsServer::start(&cert);
        let url = format!(
            "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
            server.port,
            ca.cert.display()
        );
        fails_with(
            command("postgres://unused@localhost/unused", &url),
            &["dlq", "list"],
            &[&format!("localhost:{}", server.port), says],
        );
    }
    // PostgreSQL with an expired certificate, through the driver's own TLS.
    let pg = PrivatePostgres::start(PgOpts {
        tls: Some(PgTls {
            server: ca.issue_expired_server("localhost"),
            ca: ca.cert.clone(),
            client_cert: false,
        }),
    });
    fails_with(
        command(&pg.app_url(DB), "amqp://unused@localhost/%2f"),
        &["migrate"],
        &[
            &format!("PostgreSQL at localhost:{}", pg.port()),
            "has expired",
        ],
    );
}

#[test]
fn certificate_files_are_checked_before_any_connection() {
    let dir = std::env::temp_dir().join(format!("sw-tls-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("ca.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    // Nothing listens on port 1: had the command tried to connect, the error would say so.
    let cases = [
        (
            format!(
                "amqps://guest:guest@127.0.0.1:1/%2f?cacertfile={}/missing.pem",
                dir.display()
            ),
            "cannot read cacertfile",
        ),
        (
            format!(
                "amqps://guest:guest@127.0.0.1:1/%2f?cacertfile={}",
                not_pem.display()
            ),
            "holds no PEM certificate",
        ),
        (
            format!(
                "amqp://guest:guest@127.0.0.1:1/%2f?cacertfile={}",
                not_pem.display()
            ),
            "need amqps://",
        ),
        (
            format!(
                "amqps://guest:guest@127.0.0.1:1/%2f?certfile={}",
                not_pem.display()
            ),
            "go together",
        ),
    ];
    for (url, says) in &cases {
        fails_with(
            command("postgres://unused@localhost/unused", url),
            &["dlq", "list"],
            &["invalid AMQP_URL", says],
        );
    }
    // `run` refuses them at start, before binding or retrying anything.
    let out = command("postgres://postgres@127.0.0.1:1/x", &cases[0].0)
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read cacertfile"));
    std::fs::remove_dir_all(&dir).unwrap();
}
