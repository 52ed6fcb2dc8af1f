//! `AMQP_URL` (contract section 2): one broker URI or a comma-separated list of them (a
//! cluster), each `amqp://` or `amqps://` with the RabbitMQ URI query parameters `cacertfile`,
//! `certfile` and `keyfile`. Parsed and checked before any I/O; [`connect`] tries the
//! addresses in an order shuffled once per process, so that replicas spread over the nodes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rand::seq::SliceRandom as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::secrets::{self, UrlError};

/// Per-address bound on one connection attempt (TCP, TLS and the AMQP handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one [`connect`] over the whole list, so that a one-shot command facing a list of
/// dead addresses still fails within the contract's 30 s.
const LIST_DEADLINE: Duration = Duration::from_secs(25);

/// One broker address.
#[derive(Debug)]
pub struct Endpoint {
    uri: AMQPUri,
    /// For logs and errors: the URI with its password masked (the file paths stay: they are
    /// what an operator needs to see when a certificate is wrong).
    pub shown: String,
    tls: TlsFiles,
}

/// The TLS query parameters of one URI. The files are read at every connection attempt, so a
/// rotated certificate is picked up on reconnect; [`Endpoints::parse`] reads them once up front
/// so that a wrong path is a start-up error, not a retry loop.
#[derive(Debug, Default)]
struct TlsFiles {
    cacertfile: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
}

/// The parsed `AMQP_URL`: at least one address, in this process's order.
#[derive(Debug, Clone)]
pub struct Endpoints {
    list: Arc<[Endpoint]>,
    /// Where the next [`connect`] starts: after a connection is lost, the next attempt begins
    /// with another node, not with the one that just failed.
    next: Arc<AtomicUsize>,
}

impl Endpoints {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let mut list = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(Endpoint::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(secrets::refuse("AMQP_URL", text, "names no broker"));
        }
        list.shuffle(&mut rand::rng());
        Ok(Self {
            list: list.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The addresses from where the next attempt starts, each once.
    fn in_turn(&self) -> impl Iterator<Item = (usize, &Endpoint)> {
        let start = self.next.load(Ordering::Relaxed);
        (0..self.list.len()).map(move |i| {
            let at = (start + i) % self.list.len();
            (at, &self.list[at])
        })
    }
}

impl Endpoint {
    fn parse(text: &str) -> Result<Self, UrlError> {
        const VAR: &str = "AMQP_URL";
        let uri = secrets::check_amqp_url(text)?;
        let url = url::Url::parse(text).map_err(|e| secrets::refuse(VAR, text, e.to_string()))?;
        let mut tls = TlsFiles::default();
        for (key, value) in url.query_pairs() {
            let path = || Some(PathBuf::from(value.as_ref()));
            match key.as_ref() {
                "cacertfile" => tls.cacertfile = path(),
                "certfile" => tls.certfile = path(),
                "keyfile" => tls.keyfile = path(),
                "verify" if value == "verify_none" => {
                    return Err(secrets::refuse(
                        VAR,
                        text,
                        "verify=verify_none is not supported: give the server's CA with \
                         cacertfile=/path/ca.pem instead of turning verification off",
                    ))
                }
                "server_name_indication" => {
                    return Err(secrets::refuse(
                        VAR,
                        text,
                        "server_name_indication is not supported by this client: put the \
                         name the server's certificate carries in the URI's host",
                    ))
                }
                _ => {}
            }
        }
        let uses_tls = tls.cacertfile.is_some() || tls.certfile.is_some() || tls.keyfile.is_some();
        if uses_tls && uri.scheme != AMQPScheme::AMQPS {
            return Err(secrets::refuse(
                VAR,
                text,
                "cacertfile, certfile and keyfile need amqps:// (this URI is plain amqp://)",
            ));
        }
        if tls.certfile.is_some() != tls.keyfile.is_some() {
            return Err(secrets::refuse(
                VAR,
                text,
                "certfile and keyfile go together (a client certificate and its key)",
            ));
        }
        let endpoint = Self {
            uri,
            shown: secrets::mask(text),
            tls,
        };
        endpoint
            .tls_config()
            .map_err(|problem| secrets::refuse(VAR, text, problem))?;
        Ok(endpoint)
    }

    /// The TLS settings for one attempt: the system's roots and `cacertfile` on top of the
    /// compiled-in ones, and the client certificate if any.
    fn tls_config(&self) -> Result<OwnedTLSConfig, String> {
        if self.uri.scheme != AMQPScheme::AMQPS {
            return Ok(OwnedTLSConfig::default());
        }
        let mut chain = crate::tls::system_roots_pem().to_owned();
        if let Some(path) = &self.tls.cacertfile {
            let pem = read_pem(path, "cacertfile")?;
            let certs = CertificateDer::pem_slice_iter(&pem).count();
            if certs == 0 {
                return Err(format!(
                    "cacertfile {} holds no PEM certificate",
                    path.display()
                ));
            }
            chain.push_str(&String::from_utf8_lossy(&pem));
        }
        let identity = match (&self.tls.certfile, &self.tls.keyfile) {
            (Some(cert), Some(key)) => {
                let pem = read_pem(cert, "certfile")?;
                if CertificateDer::pem_slice_iter(&pem).count() == 0 {
                    return Err(format!(
                        "certfile {} holds no PEM certificate",
                        cert.display()
                    ));
                }
                let key_pem = read_pem(key, "keyfile")?;
                // Checked here because the TLS layer's own error ("No private key") names no
                // file. Never printed: the key is a secret.
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                    format!(
                        "keyfile {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                        key.display()
                    )
                })?;
                Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
            }
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain: (!chain.is_empty()).then_some(chain),
        })
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Could not connect to any address.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach RabbitMQ at {server}: {reason}")]
pub struct Unreachable {
    pub server: String,
    pub reason: String,
}

/// Connects to the first address that answers, starting where the last attempt left off.
/// Each address has [`CONNECT_TIMEOUT`]; the whole list [`LIST_DEADLINE`].
pub async fn connect(endpoints: &Endpoints, name: &str) -> Result<Connection, Unreachable> {
    let deadline = tokio::time::Instant::now() + LIST_DEADLINE;
    let mut failures = Vec::new();
    for (at, endpoint) in endpoints.in_turn() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            failures.push(Unreachable {
                server: endpoint.shown.clone(),
                reason: "not tried (out of time)".into(),
            });
            continue;
        }
        match connect_one(endpoint, name, left.min(CONNECT_TIMEOUT)).await {
            Ok(conn) => {
                // A later reconnect starts with the next node: if this one goes away, the
                // replica moves on at once instead of waiting on it first.
                endpoints.next.store(at + 1, Ordering::Relaxed);
                if endpoints.len() > 1 {
                    tracing::info!(broker = %endpoint.shown, "connected to RabbitMQ");
                }
                return Ok(conn);
            }
            Err(failure) => {
                if endpoints.len() > 1 {
                    tracing::warn!(broker = %failure.server, reason = %failure.reason, "RabbitMQ address failed; trying the next");
                }
                failures.push(failure);
            }
        }
    }
    endpoints.next.fetch_add(1, Ordering::Relaxed);
    Err(match failures.len() {
        1 => failures.remove(0),
        n => Unreachable {
            server: format!("any of its {n} addresses"),
            reason: failures
                .iter()
                .map(|f| format!("{}: {}", f.server, f.reason))
                .collect::<Vec<_>>()
                .join("; "),
        },
    })
}

async fn connect_one(
    endpoint: &Endpoint,
    name: &str,
    timeout: Duration,
) -> Result<Connection, Unreachable> {
    let fail = |reason: String| Unreachable {
        server: endpoint.shown.clone(),
        reason,
    };
    let tls = endpoint.tls_config().map_err(fail)?;
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(e.to_string()))?;
    let attempt = Connection::connect_uri_with_config(endpoint.uri.clone(), props, tls, runtime);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(fail(endpoint.explain(e.to_string()))),
        Err(_) => Err(fail(format!("no answer within {}s", timeout.as_secs()))),
    }
}

impl Endpoint {
    /// The connection error in plain words. A TLS 1.3 server that requires a client
    /// certificate rejects a client without one only after the client thinks the handshake is
    /// done: its alert ("certificate required") and a TCP reset race, and whichever the client
    /// reads first is its error. So a reset or early close on an `amqps://` address without
    /// `certfile` gets the same hint as the alert (seen in the TLS test: one run in a few).
    fn explain(&self, raw: String) -> String {
        let cut_off = [
            "Connection reset by peer",
            "UnexpectedEof",
            "unexpected end of file",
        ]
        .iter()
        .any(|n| raw.contains(n));
        if cut_off
            && self.uri.scheme == AMQPScheme::AMQPS
            && self.tls.certfile.is_none()
            && crate::tls::explain(&raw).is_none()
        {
            return format!(
                "the server closed the connection during the TLS handshake: it may require a \
                 client certificate (certfile= and keyfile= in AMQP_URL) ({raw})"
            );
        }
        crate::tls::describe(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_trimmed_and_checked_per_address() {
        let e =
            Endpoints::parse("amqp://u:pw@a:5672/%2f, amqp://u:pw@b:5673/%2f ,amqp://u:pw@c/%2f,")
                .unwrap();
        assert_eq!(e.len(), 3);
        let mut hosts: Vec<_> = e
            .list
            .iter()
            .map(|x| x.uri.authority.host.clone())
            .collect();
        hosts.sort();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert!(e.list.iter().all(|x| !x.shown.contains("pw")));
        let err = Endpoints::parse("amqp://u:pw@a/%2f,http://u:pw@b").unwrap_err();
        assert!(err.to_string().contains("amqp:// or amqps://"), "{err}");
        assert!(!err.to_string().contains(":pw@"), "{err}");
        assert!(Endpoints::parse(" , ").is_err());
    }

    #[test]
    fn tls_parameters_are_checked_before_any_io() {
        for (url, says) in [
            ("amqp://h/%2f?cacertfile=/x.pem", "need amqps://"),
            ("amqps://h/%2f?certfile=/c.pem", "go together"),
            (
                "amqps://h/%2f?cacertfile=/nonexistent/ca.pem",
                "cannot read cacertfile /nonexistent/ca.pem",
            ),
            ("amqps://h/%2f?verify=verify_none", "not supported"),
            ("amqps://h/%2f?server_name_indication=x", "not supported"),
        ] {
            let err = Endpoints::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let not_pem = std::env::temp_dir().join(format!("sw-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let err = Endpoints::parse(&format!("amqps://h/%2f?cacertfile={}", not_pem.display()))
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn the_next_attempt_starts_after_the_last_address_used() {
        let e = Endpoints::parse("amqp://a/%2f,amqp://b/%2f,amqp://c/%2f").unwrap();
        let first: Vec<_> = e.in_turn().map(|(i, _)| i).collect();
        assert_eq!(first, [0, 1, 2]);
        e.next.store(2, Ordering::Relaxed);
        let then: Vec<_> = e.in_turn().map(|(i, _)| i).collect();
        assert_eq!(then, [2, 0, 1]);
    }

    #[test]
    fn a_reset_during_a_tls_handshake_without_a_client_certificate_names_it() {
        let reset = "IO error: Connection reset by peer (os error 104)".to_owned();
        let tls = Endpoints::parse("amqps://u:pw@h/%2f").unwrap();
        let words = tls.list[0].explain(reset.clone());
        assert!(
            words.contains("may require a client certificate"),
            "{words}"
        );
        assert!(words.ends_with("(IO error: Connection reset by peer (os error 104))"));
        // Over plain AMQP a reset is only a reset.
        let plain = Endpoints::parse("amqp://u:pw@h/%2f").unwrap();
        assert_eq!(plain.list[0].explain(reset.clone()), reset);
        // A certificate alert keeps its own words.
        let alert = "IO error: received fatal alert: CertificateRequired".to_owned();
        assert!(tls.list[0]
            .explain(alert)
            .starts_with("the server refused the TLS handshake"));
    }
}
