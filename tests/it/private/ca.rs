//! A throw-away certificate authority made with the `openssl` command-line tool.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{find_program, run, PrivateDir};

/// A certificate and its private key, PEM files (the key PKCS#8, which rustls, Erlang and
/// PostgreSQL all read).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA in its own temp dir: `ca.pem` (its certificate) and the certificates it issues.
/// Everything is RSA 2048 (fast enough, ~50 ms a key, and read by every TLS stack involved).
pub struct Ca {
    dir: PrivateDir,
    /// The CA certificate, to give clients as their root (`sslrootcert`, `cacertfile`).
    pub cert: PathBuf,
    key: PathBuf,
}

/// `openssl ca` rather than `openssl x509 -req`: only `ca` can set a validity period in the
/// past (for the expired certificate). `unique_subject = no`: several certificates for the
/// same name; `commonName = supplied` keeps the request's subject.
const CA_CONFIG: &str = "\
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = issued
rand_serial = yes
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
";

impl Ca {
    pub fn available() -> bool {
        find_program("openssl", &[]).is_some()
    }

    pub fn new() -> Self {
        let dir = PrivateDir::new("ca");
        std::fs::write(dir.join("ca.cnf"), CA_CONFIG).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::create_dir(dir.join("issued")).unwrap();
        let key = dir.join("ca.key");
        let cert = dir.join("ca.pem");
        gen_key(&key);
        run(openssl(&dir)
            .args(["req", "-x509", "-new", "-days", "2", "-key"])
            .arg(&key)
            // A name of its own: a client given another test CA then reports an unknown
            // issuer, not a bad signature from a same-named one.
            .args(["-subj", &format!("/CN=signup-worker test CA {}", dir.id())])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-out")
            .arg(&cert));
        Self { dir, cert, key }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `name` (its CN and first DNS SAN) valid for `localhost` and
    /// `127.0.0.1`, plus `extra_sans` (`DNS:x` or `IP:x` entries).
    pub fn issue_server(&self, name: &str, extra_sans: &[&str]) -> CertPair {
        let mut sans = vec![format!("DNS:{name}")];
        for san in ["DNS:localhost", "IP:127.0.0.1"].iter().chain(extra_sans) {
            if !sans.iter().any(|s| s == san) {
                sans.push((*san).to_owned());
            }
        }
        self.issue(name, name, &server_ext(&sans.join(",")), Validity::Current)
    }

    /// A server certificate that expired in 2020 (otherwise like [`Ca::issue_server`]).
    pub fn issue_expired_server(&self, name: &str) -> CertPair {
        self.issue(
            &format!("{name}-expired"),
            name,
            &server_ext(&format!("DNS:{name},DNS:localhost,IP:127.0.0.1")),
            Validity::Expired,
        )
    }

    /// A valid server certificate for `wrong.example` only: a client that connects to
    /// `localhost` or `127.0.0.1` must reject it for its name.
    pub fn issue_wrong_name_server(&self) -> CertPair {
        self.issue(
            "wrong.example",
            "wrong.example",
            &server_ext("DNS:wrong.example"),
            Validity::Current,
        )
    }

    /// A client certificate with common name `cn` (PostgreSQL maps it to the role name).
    pub fn issue_client(&self, cn: &str) -> CertPair {
        let ext = "basicConstraints=CA:FALSE\n\
                   keyUsage=critical,digitalSignature,keyEncipherment\n\
                   extendedKeyUsage=clientAuth\n";
        self.issue(&format!("client-{cn}"), cn, ext, Validity::Current)
    }

    /// Issues `<file>.pem` and `<file>.key` for subject CN = `cn` with extensions `ext`.
    fn issue(&self, file: &str, cn: &str, ext: &str, validity: Validity) -> CertPair {
        let key = self.dir.join(&format!("{file}.key"));
        let cert = self.dir.join(&format!("{file}.pem"));
        let csr = self.dir.join(&format!("{file}.csr"));
        let ext_file = self.dir.join(&format!("{file}.ext"));
        std::fs::write(&ext_file, ext).unwrap();
        gen_key(&key);
        run(openssl(&self.dir)
            .args(["req", "-new", "-key"])
            .arg(&key)
            .args(["-subj", &format!("/CN={cn}"), "-out"])
            .arg(&csr));
        let mut cmd = openssl(&self.dir);
        cmd.args(["ca", "-batch", "-notext", "-config", "ca.cnf", "-cert"])
            .arg(&self.cert)
            .arg("-keyfile")
            .arg(&self.key)
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert)
            .arg("-extfile")
            .arg(&ext_file);
        match validity {
            Validity::Current => cmd.args(["-days", "2"]),
            Validity::Expired => cmd.args([
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
            ]),
        };
        run(&mut cmd);
        CertPair { cert, key }
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy)]
enum Validity {
    Current,
    Expired,
}

fn server_ext(sans: &str) -> String {
    format!(
        "subjectAltName={sans}\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n"
    )
}

fn openssl(dir: &PrivateDir) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir.path());
    cmd
}

/// `genpkey` writes PKCS#8 (`BEGIN PRIVATE KEY`), unlike the legacy `genrsa`.
fn gen_key(path: &Path) {
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path));
}
