//! A private PostgreSQL instance: `initdb` + `pg_ctl` as user `postgres` in a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{find_program, free_port, is_root, log_tail, output_text, run, CertPair, PrivateDir};

/// TLS for the private server.
#[derive(Debug, Clone)]
pub struct PgTls {
    pub server: CertPair,
    /// The CA of client certificates, and the root that [`PrivatePostgres::tls_query`] puts
    /// in `sslrootcert` (a copy in the instance's dir), so the server's certificate should
    /// come from it too.
    pub ca: PathBuf,
    /// Every connection must also present a client certificate from `ca` whose CN is the
    /// role name (`clientcert=verify-full` on every pg_hba line).
    pub client_cert: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PgOpts {
    /// `None`: plain `host` lines. `Some`: `ssl = on` and only `hostssl` lines, so a
    /// connection without TLS is refused by pg_hba.
    pub tls: Option<PgTls>,
}

pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    root_cert: Option<PathBuf>,
    running: bool,
    // Last: dropped after `Drop::drop` has stopped the server.
    dir: PrivateDir,
}

impl PrivatePostgres {
    /// The non-superuser role the tests connect as (SCRAM password), owner of [`Self::DB`];
    /// it may create databases, as `signup-worker migrate` does.
    pub const USER: &'static str = "signup";
    pub const PASSWORD: &'static str = "signup-test-secret";
    pub const DB: &'static str = "signup";

    /// The newest `/usr/lib/postgresql/<version>/bin`.
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, bin)| bin)
    }

    /// initdb and pg_ctl found, and we can become `postgres` (runuser needs root).
    pub fn available() -> bool {
        Self::bin_dir().is_some()
            && is_root()
            && find_program("runuser", &[]).is_some()
            && output_text(Command::new("id").args(["-u", "postgres"])).is_ok()
    }

    pub fn start(opts: PgOpts) -> Self {
        let bin = Self::bin_dir().expect("PostgreSQL binaries under /usr/lib/postgresql/*/bin");
        let dir = PrivateDir::new("pg");
        // The server refuses to run as root, so it runs as `postgres`, which must own its data
        // dir (mode 0700), its socket dir and its key. The temp dir itself stays root's (0755,
        // so `postgres` can traverse it).
        let data = dir.join("data");
        let socket_dir = dir.join("run");
        let log = socket_dir.join("postgres.log");
        for d in [&data, &socket_dir] {
            std::fs::create_dir(d).unwrap();
            chown_postgres(d);
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        run(as_postgres(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C.UTF-8"]));

        let port = free_port();
        let mut conf = format!(
            "\n# sw-test private instance\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            socket_dir.display()
        );
        // TCP lines: TLS-only (`hostssl`) when TLS is on; superuser `postgres` trusted, the
        // test role by SCRAM password. Unix socket (in our private dir): trusted, for setup.
        let (host, clientcert, root_cert) = match &opts.tls {
            None => ("host", "", None),
            Some(tls) => {
                let tls_dir = dir.join("tls");
                std::fs::create_dir(&tls_dir).unwrap();
                let cert = tls_dir.join("server.pem");
                let key = tls_dir.join("server.key");
                let ca = tls_dir.join("ca.pem");
                std::fs::copy(&tls.server.cert, &cert).unwrap();
                std::fs::copy(&tls.server.key, &key).unwrap();
                std::fs::copy(&tls.ca, &ca).unwrap();
                // PostgreSQL refuses a key readable by others: 0600 and owned by the server's
                // user (a copy, so the CA's files stay as they are).
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
                chown_postgres(&key);
                conf += &format!(
                    "ssl = on\n\
                     ssl_cert_file = '{}'\n\
                     ssl_key_file = '{}'\n\
                     ssl_ca_file = '{}'\n",
                    cert.display(),
                    key.display(),
                    ca.display()
                );
                let clientcert = if tls.client_cert {
                    " clientcert=verify-full"
                } else {
                    ""
                };
                ("hostssl", clientcert, Some(ca))
            }
        };
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 {host} all postgres 127.0.0.1/32 trust{clientcert}\n\
                 {host} all all 127.0.0.1/32 scram-sha-256{clientcert}\n"
            ),
        )
        .unwrap();

        let mut pg = Self {
            bin,
            data,
            socket_dir,
            log,
            port,
            root_cert,
            running: false,
            dir,
        };
        pg.start_again();
        pg.psql(&format!(
            "CREATE ROLE {} LOGIN CREATEDB PASSWORD '{}'",
            Self::USER,
            Self::PASSWORD
        ));
        pg.psql(&format!(
            "CREATE DATABASE {} OWNER {}",
            Self::DB,
            Self::USER
        ));
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://user[:password]@localhost:PORT/db[?query]`, `query` as given (see
    /// [`Self::tls_query`]). `localhost` because the certificates name it; it resolves to
    /// 127.0.0.1 only here.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str, query: &str) -> String {
        let mut url = url::Url::parse(&format!("postgres://localhost:{}/", self.port)).unwrap();
        url.set_username(user).unwrap();
        url.set_password(password).unwrap();
        url.set_path(db);
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        url.into()
    }

    /// `sslmode=verify-full&sslrootcert=<the CA>` when TLS is on, else empty.
    pub fn tls_query(&self) -> String {
        match &self.root_cert {
            Some(ca) => format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            None => String::new(),
        }
    }

    /// The copy of the CA certificate the server uses (TLS only).
    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// [`Self::url`] for the test role, database `db`, and [`Self::tls_query`].
    pub fn app_url(&self, db: &str) -> String {
        self.url(Self::USER, Some(Self::PASSWORD), db, &self.tls_query())
    }

    /// Runs SQL as superuser over the private unix socket; psql's output (unaligned, tuples
    /// only). Panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`Self::psql`] in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        run(Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    }

    /// Stops the server (fast shutdown: sessions are terminated), keeping its data.
    pub fn stop(&mut self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
        self.running = false;
    }

    /// Starts the server (again) on the same data and port; `pg_ctl -w` waits until it
    /// accepts connections (deadline 120 s).
    pub fn start_again(&mut self) {
        // Before the attempt: a start that times out may leave a postmaster for Drop to stop.
        self.running = true;
        let started = output_text(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "120", "start"]),
        );
        if let Err(e) = started {
            panic!(
                "private PostgreSQL did not start: {e}\n{}",
                log_tail(&self.log)
            );
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        run(as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(args));
    }
}

impl Drop for PrivatePostgres {
    /// Immediate shutdown (no checkpoint: the data is thrown away); if pg_ctl fails, the
    /// postmaster named in `postmaster.pid` is killed. The dir is removed after.
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let stopped = output_text(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "immediate", "-w", "-t", "30"]),
        );
        if stopped.is_err() {
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
            if let Some(pid) = pid.lines().next().filter(|p| p.parse::<u32>().is_ok()) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

/// A PostgreSQL program run as user `postgres` (runuser: no password, no PAM session).
fn as_postgres(bin: &Path, program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
    // The test's cwd may not be readable by `postgres`.
    cmd.current_dir("/");
    cmd
}

fn chown_postgres(path: &Path) {
    run(Command::new("chown").arg("postgres:postgres").arg(path));
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
