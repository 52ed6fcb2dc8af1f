//! TLS pieces shared by the two drivers: the trust roots added to every `amqps://` connection,
//! and plain words for the certificate failures both rustls-based drivers report.
//!
//! The drivers' own messages are rustls's `Debug` names ("invalid peer certificate:
//! UnknownIssuer"), which tell an operator neither what is wrong nor what to change.

use std::sync::OnceLock;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;

/// What an operator should read for a certificate failure, given the driver's error text; `None`
/// when the text is not about certificates. Matched on text because neither driver exposes the
/// rustls error as a type (lapin wraps it in `io::Error`, sqlx in a boxed error).
pub fn explain(raw: &str) -> Option<&'static str> {
    // rustls's names (`CertificateError` variants) and their Display forms, both seen in the
    // wild depending on the rustls version.
    const PROBLEMS: [(&[&str], &str); 6] = [
        (
            &["UnknownIssuer", "unknown issuer"],
            "the server's certificate is not trusted (unknown issuer): give its CA with \
             cacertfile=/path/ca.pem in AMQP_URL, sslrootcert= in DATABASE_URL, or SSL_CERT_FILE",
        ),
        (
            &["NotValidForName", "not valid for name"],
            "the server's certificate does not name the host in the URL (wrong name): connect by \
             a name the certificate lists",
        ),
        (
            &["Expired", "expired"],
            "the server's certificate has expired",
        ),
        (
            &["NotValidYet", "not valid yet"],
            "the server's certificate is not valid yet (check the clocks)",
        ),
        (
            &[
                "CertificateRequired",
                "certificate required",
                "HandshakeFailure",
            ],
            "the server refused the TLS handshake: it may require a client certificate \
             (certfile= and keyfile= in AMQP_URL, sslcert= and sslkey= in DATABASE_URL)",
        ),
        (
            &[
                "UnknownCA",
                "unknown ca",
                "BadCertificate",
                "bad certificate",
            ],
            "the server does not trust our client certificate",
        ),
    ];
    PROBLEMS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| raw.contains(n)))
        .map(|(_, words)| *words)
}

/// The driver's error text with the plain words in front when it is a certificate failure, so
/// that the one error line says what to do and still carries the detail.
pub fn describe(raw: String) -> String {
    match explain(&raw) {
        Some(words) => format!("{words} ({raw})"),
        None => raw,
    }
}

/// The system's trust store (or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), as PEM, read once
/// per process. lapin takes extra roots only as one PEM string, on top of the Mozilla roots
/// compiled in; adding the system store here makes a private CA that an operator installed
/// (update-ca-certificates, a mounted bundle) work without `cacertfile`. A missing or unreadable
/// store is no error: the compiled-in roots and `cacertfile` still apply.
pub fn system_roots_pem() -> &'static str {
    static ROOTS: OnceLock<String> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "while reading the system trust store");
        }
        found.certs.iter().map(pem_certificate).collect()
    })
}

fn pem_certificate(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn certificate_failures_get_plain_words() {
        assert!(explain("invalid peer certificate: UnknownIssuer")
            .unwrap()
            .contains("unknown issuer"));
        assert!(
            explain("invalid peer certificate: NotValidForNameContext { .. }")
                .unwrap()
                .contains("wrong name")
        );
        assert!(explain("invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0")
            .unwrap()
            .contains("expired"));
        assert_eq!(explain("Connection refused (os error 111)"), None);
        let line = describe("invalid peer certificate: UnknownIssuer".into());
        assert!(line.starts_with("the server's certificate is not trusted"));
        assert!(line.ends_with("(invalid peer certificate: UnknownIssuer)"));
    }

    #[test]
    fn pem_round_trips() {
        let der = CertificateDer::from((0u8..=200).collect::<Vec<_>>());
        let pem = pem_certificate(&der);
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, vec![der]);
    }
}
