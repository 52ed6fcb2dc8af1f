//! Smoke tests of the private-server harness (`private`): TLS PostgreSQL and RabbitMQ, and a
//! 3-node RabbitMQ cluster. Each prints `TIMING` lines: the suite's CI budget is tight.

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use signup_worker::amqp;

use crate::helpers::BIN;
use crate::private::{
    poll_until, skip_unless, Ca, PgOpts, PgTls, PrivatePostgres, PrivateRabbit,
    PrivateRabbitCluster, RabbitOpts, RabbitTls, START_DEADLINE,
};

/// `signup-worker migrate` against `url`.
fn migrate(url: &str) -> Output {
    Command::new(BIN)
        .args(["migrate", "--founding-capacity", "10"])
        .env("DATABASE_URL", url)
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run signup-worker migrate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pg_tls(ca: &Ca, client_cert: bool) -> PgOpts {
    PgOpts {
        tls: Some(PgTls {
            server: ca.issue_server("localhost", &[]),
            ca: ca.cert.clone(),
            client_cert,
        }),
    }
}

/// `openssl verify` of a server certificate for the name `localhost`: the error, if any.
fn verify_localhost(ca: &Ca, cert: &std::path::Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["verify", "-verify_hostname", "localhost", "-CAfile"])
        .arg(&ca.cert)
        .arg(cert)
        .output()
        .unwrap();
    (!out.status.success())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out))
}

#[test]
fn private_ca_issues_good_expired_and_misnamed_certificates() {
    if !skip_unless(Ca::available(), "openssl") {
        return;
    }
    let t = Instant::now();
    let ca = Ca::new();
    assert_eq!(
        verify_localhost(&ca, &ca.issue_server("localhost", &[]).cert),
        None
    );
    let expired = verify_localhost(&ca, &ca.issue_expired_server("localhost").cert);
    assert!(
        expired.as_deref().unwrap_or_default().contains("expired"),
        "{expired:?}"
    );
    let misnamed = verify_localhost(&ca, &ca.issue_wrong_name_server().cert);
    assert!(
        misnamed
            .as_deref()
            .unwrap_or_default()
            .contains("hostname mismatch"),
        "{misnamed:?}"
    );
    let key = std::fs::read_to_string(ca.issue_client("signup").key).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    eprintln!("TIMING CA and 4 certificates in {:?}", t.elapsed());
}

#[test]
fn private_postgres_tls_verify_full() {
    if !skip_unless(
        PrivatePostgres::available() && Ca::available(),
        "initdb/pg_ctl as root, or openssl,",
    ) {
        return;
    }
    let ca = Ca::new();
    let t = Instant::now();
    let pg = PrivatePostgres::start(pg_tls(&ca, false));
    eprintln!(
        "TIMING private PostgreSQL (TLS) started in {:?}",
        t.elapsed()
    );

    let out = migrate(&pg.app_url("signup_tls"));
    assert!(out.status.success(), "verify-full: {}", stderr(&out));
    // (Over TLS necessarily: pg_hba has only hostssl lines, see below.)

    // A CA that did not sign the server's certificate.
    let other = Ca::new();
    let wrong_ca = pg.url(
        PrivatePostgres::USER,
        Some(PrivatePostgres::PASSWORD),
        "signup_tls",
        &format!("sslmode=verify-full&sslrootcert={}", other.cert.display()),
    );
    let out = migrate(&wrong_ca);
    eprintln!("wrong CA: {}", stderr(&out));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach PostgreSQL"),
        "{}",
        stderr(&out)
    );

    // pg_hba has only hostssl lines.
    let plain = pg.url(
        PrivatePostgres::USER,
        Some(PrivatePostgres::PASSWORD),
        "signup_tls",
        "sslmode=disable",
    );
    let out = migrate(&plain);
    eprintln!("sslmode=disable: {}", stderr(&out));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pg_hba.conf"), "{}", stderr(&out));
}

#[test]
fn private_postgres_client_certificates() {
    if !skip_unless(
        PrivatePostgres::available() && Ca::available(),
        "initdb/pg_ctl as root, or openssl,",
    ) {
        return;
    }
    let ca = Ca::new();
    let pg = PrivatePostgres::start(pg_tls(&ca, true));
    let with_cert = |cert: &crate::private::CertPair| {
        format!(
            "{}&sslcert={}&sslkey={}",
            pg.tls_query(),
            cert.cert.display(),
            cert.key.display()
        )
    };
    let user = PrivatePostgres::USER;
    let password = Some(PrivatePostgres::PASSWORD);

    let own = with_cert(&ca.issue_client(user));
    let out = migrate(&pg.url(user, password, "signup_cc", &own));
    assert!(out.status.success(), "client cert: {}", stderr(&out));

    let out = migrate(&pg.app_url("signup_cc"));
    eprintln!("no client cert: {}", stderr(&out));
    assert!(!out.status.success());

    // verify-full: the certificate's CN must be the role's name.
    let someone_else = with_cert(&ca.issue_client("mallory"));
    let out = migrate(&pg.url(user, password, "signup_cc", &someone_else));
    eprintln!("CN of another role: {}", stderr(&out));
    assert!(!out.status.success());
}

/// `openssl s_client` to a TLS port; (success, stdout + stderr).
fn s_client(port: u16, ca: &Ca, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(&ca.cert)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn private_rabbit_tls_listener() {
    if !skip_unless(
        PrivateRabbit::available() && Ca::available(),
        "rabbitmq-server or openssl",
    ) {
        return;
    }
    let ca = Ca::new();
    let t = Instant::now();
    let node = PrivateRabbit::start(RabbitOpts {
        tls: Some(RabbitTls {
            server: ca.issue_server("localhost", &[]),
            ca: ca.cert.clone(),
            verify_peer: true,
        }),
        tls_only: false,
    });
    eprintln!(
        "TIMING private RabbitMQ node (TLS) started in {:?}",
        t.elapsed()
    );

    let client = ca.issue_client("signup");
    let (cert, key) = (client.cert.to_str().unwrap(), client.key.to_str().unwrap());
    let (ok, text) = s_client(node.amqps_port(), &ca, &["-cert", cert, "-key", key]);
    assert!(ok && text.contains("Verification: OK"), "{text}");

    // fail_if_no_peer_cert (TLS 1.2: the server's refusal ends the handshake itself).
    let (ok, text) = s_client(node.amqps_port(), &ca, &["-tls1_2"]);
    assert!(!ok, "a client without a certificate was accepted: {text}");

    // The plain listener, and the node is ours: the shared broker's name is not in the list.
    let conn = amqp::connect(
        &amqp::Endpoints::parse(&node.amqp_url()).unwrap(),
        "private smoke",
    )
    .await
    .expect("plain AMQP to the private node");
    let _ = conn.close(200, "".into()).await;
    assert_eq!(node.running_nodes(), vec![node.node_name().to_owned()]);
}

#[tokio::test]
async fn private_rabbit_cluster_quorum_queue() {
    if !skip_unless(PrivateRabbit::available(), "rabbitmq-server") {
        return;
    }
    let t = Instant::now();
    let mut cluster = PrivateRabbitCluster::start(3);
    eprintln!("TIMING 3-node RabbitMQ cluster formed in {:?}", t.elapsed());
    let mut names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.node_name().to_owned())
        .collect();
    names.sort();
    assert_eq!(cluster.node(0).running_nodes(), names);

    let queue = "private.smoke.quorum";
    let conn = amqp::connect(
        &amqp::Endpoints::parse(&cluster.node(0).amqp_url()).unwrap(),
        "private smoke",
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(3));
    ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    let (_, members) = cluster.node(0).quorum_queue(queue).unwrap();
    assert_eq!(members, names, "members on all 3 nodes");

    // Failover: kill the leader's node, another becomes leader, the node comes back.
    let leader = cluster.quorum_leader(queue).unwrap();
    let t = Instant::now();
    cluster.node_mut(leader).kill();
    let new_leader = poll_until("a new leader", START_DEADLINE, || {
        cluster.quorum_leader(queue).filter(|&l| l != leader)
    });
    eprintln!(
        "TIMING leader moved from node {leader} to node {new_leader} in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    cluster.node_mut(leader).start_again();
    poll_until("3 running nodes again", START_DEADLINE, || {
        (cluster.node(new_leader).running_nodes().len() == 3).then_some(())
    });
    eprintln!(
        "TIMING killed node back in the cluster in {:?}",
        t.elapsed()
    );
}
