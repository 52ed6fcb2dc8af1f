//! `signup-worker run` replicas as child processes: started with their output in a log file,
//! awaited until `/readyz` says ready, read through `/metrics`, and stopped with SIGTERM.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::ui::note;

/// How long a replica may take to finish and ack what it holds after SIGTERM before it gets
/// SIGKILL; it normally needs well under a second.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Between two looks at a condition that the tasks wait for.
pub const POLL: Duration = Duration::from_millis(200);
/// A replica's HTTP listener answers at once or not at all.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Worker {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

/// The replicas of a task, numbered from 1 in what it prints.
#[derive(Default)]
pub struct Workers {
    list: Vec<Worker>,
}

impl Workers {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().map(|w| w.pid).collect()
    }

    /// Starts `cmd` (a `run` command) with `--metrics-addr 127.0.0.1:<port>`, its output in `log`.
    pub fn start(&mut self, mut cmd: Command, port: u16, log: PathBuf) -> anyhow::Result<u32> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: Ctrl-C in the terminal reaches only this task, which
            // then stops every replica the one way, SIGTERM, and reports how each exited.
            .process_group(0)
            // Only if this task itself panics: no replica outlives it.
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting a worker")?;
        let pid = child.id().context("a worker exited at once")?;
        self.list.push(Worker {
            child,
            pid,
            port,
            log,
        });
        Ok(pid)
    }

    /// Waits until every replica's `/readyz` answers 200 (connected to PostgreSQL and
    /// RabbitMQ, and consuming); fails when one exits first or `timeout` passes.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        mut on_ready: impl FnMut(usize, &Worker),
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.list.len() {
            loop {
                if let Some((200, _)) = http_get(self.list[i].port, "/readyz").await {
                    break;
                }
                self.check_running()?;
                if Instant::now() >= deadline {
                    bail!(
                        "worker {} (127.0.0.1:{}) not ready after {}s",
                        i + 1,
                        self.list[i].port,
                        timeout.as_secs()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
            on_ready(i + 1, &self.list[i]);
        }
        Ok(())
    }

    /// Fails if a replica has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (i, w) in self.list.iter_mut().enumerate() {
            if let Some(status) = w.child.try_wait()? {
                bail!("worker {} (pid {}) exited: {status}", i + 1, w.pid);
            }
        }
        Ok(())
    }

    /// Each replica's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Vec<f64> {
        self.list
            .iter()
            .map(|w| {
                proc_value(&format!("/proc/{}/status", w.pid), "VmHWM")
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                    .map_or(0.0, |kib| kib / 1024.0)
            })
            .collect()
    }

    /// The `/metrics` text of every replica that answers.
    pub async fn metrics(&self) -> Vec<String> {
        let mut texts = Vec::new();
        for w in &self.list {
            if let Some((200, body)) = http_get(w.port, "/metrics").await {
                texts.push(body);
            }
        }
        texts
    }

    /// SIGTERM to every replica, then up to [`STOP_GRACE`] to finish, ack what it holds and
    /// exit; SIGKILL for any still running. Reports each exit.
    pub async fn stop(&mut self) {
        for w in &self.list {
            // `id()` is None once the child has been reaped: its pid may belong to another
            // process by now.
            if let Some(pid) = w.child.id() {
                signal(pid, libc::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for (i, w) in self.list.iter_mut().enumerate() {
            let n = i + 1;
            let pid = w.pid;
            let status = match tokio::time::timeout_at(deadline, w.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    note(&format!(
                        "worker {n} (pid {pid}) still running after {}s: sending SIGKILL",
                        STOP_GRACE.as_secs()
                    ));
                    let _ = w.child.start_kill();
                    w.child.wait().await
                }
            };
            match status {
                Ok(s) if s.success() => note(&format!(
                    "worker {n} (pid {pid}) exited with code 0 (clean shutdown)"
                )),
                Ok(s) => note(&format!("worker {n} (pid {pid}) {}", describe_exit(s))),
                Err(e) => note(&format!("worker {n} (pid {pid}): cannot wait for it: {e}")),
            }
        }
        self.list.clear();
    }

    /// The end of each replica's log, to explain a failure.
    pub fn print_log_tails(&self) {
        for w in &self.list {
            let text = std::fs::read_to_string(&w.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("\n--- last lines of {} ---", w.log.display());
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended: {status}"),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) touches no memory of ours; `pid` is a child not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The value of the first `key: value` line of a `/proc` file, such as `VmHWM` in
/// `/proc/<pid>/status` or `model name` in `/proc/cpuinfo`.
pub fn proc_value(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub async fn listening(port: u16) -> bool {
    let connect = TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(HTTP_TIMEOUT, connect).await, Ok(Ok(_)))
}

/// A GET over HTTP/1.0, which a replica's listener answers and then closes (no chunking, no
/// keep-alive, so no HTTP client is needed): the status code and the body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange).await.ok()?
}

/// Sums the counter `name` over the replicas' `/metrics` texts, per value of `label`: the
/// `expected` values first (0 when absent), then any other value in order of appearance.
pub fn sum_by_label(
    texts: &[String],
    name: &str,
    label: &str,
    expected: &[&str],
) -> Vec<(String, u64)> {
    let mut sums: Vec<(String, u64)> = expected.iter().map(|k| (k.to_string(), 0)).collect();
    let key = format!("{label}=\"");
    for line in texts.iter().flat_map(|t| t.lines()) {
        let Some(labels) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some(value) = labels.split_once(&key).and_then(|(_, v)| v.split_once('"')) else {
            continue;
        };
        // Counters print as integers or as floats such as `12` or `1.2e3`.
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        match sums.iter_mut().find(|(k, _)| k == value.0) {
            Some((_, sum)) => *sum += n as u64,
            None => sums.push((value.0.to_owned(), n as u64)),
        }
    }
    sums
}
