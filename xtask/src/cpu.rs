//! CPU time over a measuring window, from `/proc`: the worker replicas, the PostgreSQL server's
//! processes, the broker, this task itself, and the whole machine.
//!
//! Each figure is `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks of
//! `sysconf(_SC_CLK_TCK)`) read when the window opens and again when it closes. Processes are
//! keyed by pid and start time, so a pid reused meanwhile is not mistaken for the one it
//! replaced; a process that started inside the window counts from zero.
//!
//! A process that exits inside the window is gone from `/proc` when it closes. For PostgreSQL
//! and the broker, `cutime + cstime` (fields 16 and 17: the CPU of the children a process has
//! reaped) are counted as well: the postmaster reaps every backend as it exits, so a backend
//! that ends inside the window (pgbench's, which end with it) still counts, through its parent.
//! The one error left: a backend that started before the window and ends inside it counts with
//! its whole life (another session's, on a shared server). The narrower figure of the measured
//! database's backends has no parent to fall back on: it counts the backends alive when the
//! window closes, which is all of them for the replicas (they keep their connections).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::fs::MetadataExt as _;
use std::time::Instant;

/// Processes by (pid, start time in ticks since boot): CPU ticks so far.
type Snapshot = HashMap<(u32, u64), Sample>;

#[derive(Clone, Copy)]
struct Sample {
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: the children it reaped.
    children: u64,
    /// A PostgreSQL backend serving the measured database (its title names the database).
    on_db: bool,
}

/// Which processes are whose: the server users and the measured database.
pub struct Sampler {
    postgres_uid: Option<u32>,
    rabbitmq_uid: Option<u32>,
    /// The measured database, as the backends' process titles name it.
    database: String,
    tick_ms: f64,
}

/// The CPU spent between [`Sampler::open`] and [`Window::close`], in milliseconds.
pub struct Usage {
    pub secs: f64,
    /// The worker replicas given when the window opened and closed.
    pub worker_ms: f64,
    /// Every process of user `postgres` named `postgres` (postmaster, auxiliary processes and
    /// every backend, whatever its database, those that exited included through the
    /// postmaster) but this task's own polling connection; `None` when no such process was
    /// found (a server on another machine).
    pub pg_ms: Option<f64>,
    /// Only the backends whose process title names the measured database and that are still
    /// there when the window closes (this task's polling connection excluded): what other
    /// databases' work does not reach.
    pub pg_db_ms: Option<f64>,
    /// `beam.smp` of user `rabbitmq` (with its reaped children).
    pub broker_ms: Option<f64>,
    /// This task (the load generator in the fixed-rate run, the poller otherwise).
    pub xtask_ms: f64,
    /// Share of all CPUs' time that was not idle or waiting for I/O, from `/proc/stat`.
    pub machine_busy_pct: f64,
}

pub struct Window {
    started: Instant,
    machine: (u64, u64),
    pg: Snapshot,
    broker: Snapshot,
    workers: Snapshot,
    xtask: u64,
}

impl Sampler {
    pub fn new(database: &str) -> Self {
        // SAFETY: sysconf reads a constant of the system.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            postgres_uid: uid_of("postgres"),
            rabbitmq_uid: uid_of("rabbitmq"),
            database: database.to_owned(),
            tick_ms: 1000.0 / ticks_per_s.max(1) as f64,
        }
    }

    /// Opens a window; `workers` are the replicas already running (none when they start inside
    /// the window).
    pub fn open(&self, workers: &[u32]) -> Window {
        Window {
            started: Instant::now(),
            machine: machine_ticks(),
            pg: self.postgres(&HashSet::new()),
            broker: self.broker(),
            workers: pids(workers),
            xtask: process_ticks(std::process::id()).map_or(0, |(t, _)| t),
        }
    }

    fn postgres(&self, excluded: &HashSet<u32>) -> Snapshot {
        let Some(uid) = self.postgres_uid else {
            return Snapshot::new();
        };
        processes(uid, "postgres", excluded, |cmdline| {
            // `postgres: 15/main: user database host(port) activity`
            cmdline
                .split(|c: char| c.is_whitespace() || c == '\0')
                .any(|word| word == self.database)
        })
    }

    fn broker(&self) -> Snapshot {
        let Some(uid) = self.rabbitmq_uid else {
            return Snapshot::new();
        };
        processes(uid, "beam.smp", &HashSet::new(), |_| false)
    }
}

impl Window {
    /// Closes the window: `workers` are the replicas to count (read now, before they stop),
    /// `excluded` the backends of this task's own polling connection.
    pub fn close(self, sampler: &Sampler, workers: &[u32], excluded: &HashSet<u32>) -> Usage {
        let secs = self.started.elapsed().as_secs_f64();
        let (busy, total) = machine_ticks();
        // Every process still running, with the children it reaped (exited backends).
        let pg = sampler.postgres(excluded);
        let broker = sampler.broker();
        let mut pg_db = pg.clone();
        pg_db.retain(|_, s| s.on_db);
        let ms = |ticks: u64| ticks as f64 * sampler.tick_ms;
        let found = |snap: &Snapshot, ticks: u64| (!snap.is_empty()).then(|| ms(ticks));
        let xtask = process_ticks(std::process::id()).map_or(0, |(t, _)| t);
        let (d_busy, d_total) = (
            busy.saturating_sub(self.machine.0),
            total.saturating_sub(self.machine.1),
        );
        Usage {
            secs,
            worker_ms: ms(delta(&self.workers, &pids(workers), false)),
            pg_ms: found(&pg, delta(&self.pg, &pg, true)),
            pg_db_ms: found(&pg, delta(&self.pg, &pg_db, false)),
            broker_ms: found(&broker, delta(&self.broker, &broker, true)),
            xtask_ms: ms(xtask.saturating_sub(self.xtask)),
            machine_busy_pct: if d_total > 0 {
                100.0 * d_busy as f64 / d_total as f64
            } else {
                0.0
            },
        }
    }
}

/// Ticks spent inside the window by the processes of `end`, with those of the children they
/// reaped if `children`.
fn delta(start: &Snapshot, end: &Snapshot, children: bool) -> u64 {
    let total = |s: &Sample| s.ticks + if children { s.children } else { 0 };
    end.iter()
        .map(|(key, s)| total(s).saturating_sub(start.get(key).map_or(0, total)))
        .sum()
}

fn pids(list: &[u32]) -> Snapshot {
    list.iter()
        .filter_map(|&pid| {
            let (ticks, started) = process_ticks(pid)?;
            Some((
                (pid, started),
                Sample {
                    ticks,
                    children: 0,
                    on_db: false,
                },
            ))
        })
        .collect()
}

/// Every process of `uid` whose command name is `comm`, but the `excluded` pids.
fn processes(
    uid: u32,
    comm: &str,
    excluded: &HashSet<u32>,
    on_db: impl Fn(&str) -> bool,
) -> Snapshot {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Snapshot::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if excluded.contains(&pid) || entry.metadata().ok()?.uid() != uid {
                return None;
            }
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if name.trim_end() != comm {
                return None;
            }
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = stat(pid)?;
            Some((
                (pid, stat.started),
                Sample {
                    ticks: stat.ticks,
                    children: stat.children,
                    on_db: on_db(&cmdline),
                },
            ))
        })
        .collect()
}

struct Stat {
    ticks: u64,
    children: u64,
    started: u64,
}

/// From `/proc/<pid>/stat`: utime + stime, cutime + cstime and the start time, in clock ticks.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    // Field 3 (state) is then at index 0, utime (14) at 11, stime at 12, cutime at 13, cstime
    // at 14, starttime (22) at 19.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ticks: field(11)? + field(12)?,
        children: field(13)? + field(14)?,
        started: field(19)?,
    })
}

/// `utime + stime` of a process (all its threads) and its start time, both in clock ticks.
pub fn process_ticks(pid: u32) -> Option<(u64, u64)> {
    stat(pid).map(|s| (s.ticks, s.started))
}

/// All CPUs' (busy, total) ticks since boot from the `cpu` line of `/proc/stat`: busy is
/// user + nice + system + irq + softirq + steal (guest time is inside user), total adds idle
/// and iowait.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, busy + at(3) + at(4))
}

/// The uid of a local user, if there is one.
fn uid_of(user: &str) -> Option<u32> {
    let name = CString::new(user).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns null or a pointer to a static
    // record, read at once; nothing else in this process calls the getpw* functions.
    unsafe {
        let record = libc::getpwnam(name.as_ptr());
        (!record.is_null()).then(|| (*record).pw_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        let pid = std::process::id();
        let burn = Instant::now();
        while burn.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(pid.wrapping_mul(7));
        }
        let (ticks, started) = process_ticks(pid).expect("our own /proc/<pid>/stat");
        assert!(ticks > 0 && started > 0);
        let (busy, total) = machine_ticks();
        assert!(busy > 0 && busy <= total);
        let own = pids(&[pid]);
        assert_eq!(delta(&own, &own, false), 0);
        assert_eq!(
            delta(&Snapshot::new(), &own, false),
            own.values().next().unwrap().ticks
        );
    }
}
