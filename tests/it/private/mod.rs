//! Private servers for the tests that must stop, reconfigure (TLS) or cluster a server: a
//! throw-away CA ([`Ca`]), a PostgreSQL instance ([`PrivatePostgres`]) and RabbitMQ nodes
//! ([`PrivateRabbit`], [`PrivateRabbitCluster`]). Each owns a temp dir, its own ports and
//! processes, and never touches the shared services (PostgreSQL on 5432, RabbitMQ on 5672);
//! `Drop` kills the processes and removes the dir, also while a test panics.
//!
//! The API is blocking (processes and polling with a deadline); from an async test, call it
//! before the test's own connections exist, or through `tokio::task::spawn_blocking`.

mod ca;
mod postgres;
mod rabbit;

pub use ca::{Ca, CertPair};
pub use postgres::{PgOpts, PgTls, PrivatePostgres};
pub use rabbit::{PrivateRabbit, PrivateRabbitCluster, RabbitOpts, RabbitTls};

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// Startup budget of one private server (generous: CI has 2 cores and runs tests in parallel).
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// Prints a SKIP line and returns false when `ok` is false; for `if !skip_unless(..) { return }`.
pub fn skip_unless(ok: bool, what: &str) -> bool {
    if !ok {
        eprintln!("SKIP: {what} not available on this machine");
    }
    ok
}

/// The first of `candidates` that exists, else `name` found on `PATH`.
fn find_program(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

fn is_root() -> bool {
    output_text(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// A temp dir `sw-test-<kind>-<id>` removed (recursively) on drop.
pub struct PrivateDir(PathBuf, String);

impl PrivateDir {
    pub fn new(kind: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let path = std::env::temp_dir().join(format!("sw-test-{kind}-{id}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self(path, id)
    }

    /// The random part of the name, unique per dir.
    pub fn id(&self) -> &str {
        &self.1
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free on 127.0.0.1 now, never handed out before by this process. Chosen below the
/// kernel's ephemeral range (32768+), so that no outgoing connection takes it meanwhile: a node
/// stopped and started again gets the same port back. Other processes (other test binaries)
/// could race for it; the random choice makes that unlikely, and a server that fails to bind
/// fails its start with its log.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut taken = TAKEN.lock().unwrap();
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
}

/// Polls `cond` every 100 ms until it yields a value, panicking after `deadline` with `what`.
pub fn poll_until<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command to completion; its stdout, or a message with its stderr.
pub fn output_text(cmd: &mut Command) -> Result<String, String> {
    let out: Output = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`output_text`] that panics on failure.
pub fn run(cmd: &mut Command) -> String {
    output_text(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// The last lines of a log file, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
