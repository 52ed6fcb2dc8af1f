//! Private RabbitMQ nodes: own node name, ports, data, config and Erlang cookie.
//!
//! Isolation from the shared broker (`rabbit@localhost`, user `rabbitmq`): we run the real
//! scripts in `/usr/lib/rabbitmq/bin`, not the Debian wrappers in `/usr/sbin` (those `su` to
//! `rabbitmq` and so would use the shared node's cookie and dirs). Each node gets `HOME` = its
//! temp dir with its own `.erlang.cookie`, and every `rabbitmqctl` we run gets the same `HOME`:
//! our CLI calls can reach only our nodes, and nothing here can reach the shared node (its
//! cookie differs). `RABBITMQ_CONF_ENV_FILE` points at an empty file so that
//! `/etc/rabbitmq/rabbitmq-env.conf` (which names the shared node) is not read. epmd (4369)
//! is shared and that is fine: it only maps node names to distribution ports.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::START_DEADLINE;
use super::{find_program, free_port, log_tail, output_text, poll_until, CertPair, PrivateDir};

const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

#[derive(Debug, Clone)]
pub struct RabbitTls {
    pub server: CertPair,
    pub ca: PathBuf,
    /// Require a client certificate from `ca` (`verify_peer`, `fail_if_no_peer_cert`).
    pub verify_peer: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RabbitOpts {
    /// A TLS listener on its own port.
    pub tls: Option<RabbitTls>,
    /// With `tls`: no plain AMQP listener at all.
    pub tls_only: bool,
}

pub struct PrivateRabbit {
    node: String,
    amqp_port: Option<u16>,
    amqps_port: Option<u16>,
    ca: Option<PathBuf>,
    /// The `rabbitmq-server` script's process; its process group holds the VM.
    child: Option<Child>,
    log: PathBuf,
    // Last: removed after `Drop::drop` has killed the node.
    dir: PrivateDir,
}

fn script(name: &str) -> PathBuf {
    Path::new(SCRIPTS).join(name)
}

impl PrivateRabbit {
    pub fn available() -> bool {
        script("rabbitmq-server").is_file() && find_program("erl", &[]).is_some()
    }

    /// Starts a node and waits until it has booted.
    pub fn start(opts: RabbitOpts) -> Self {
        let mut node = Self::prepare(&opts, &random_cookie(), None);
        node.start_again();
        node
    }

    /// Writes the node's files; does not start it.
    fn prepare(opts: &RabbitOpts, cookie: &str, seed: Option<&str>) -> Self {
        let dir = PrivateDir::new("rabbit");
        let node = format!("sw-test-{}@localhost", dir.id());
        // Erlang refuses a cookie file that others can read.
        let cookie_file = dir.join(".erlang.cookie");
        std::fs::write(&cookie_file, cookie).unwrap();
        std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        // No plugins: no management listener (15672) to collide with the shared node's.
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::create_dir(dir.join("mnesia")).unwrap();
        std::fs::create_dir(dir.join("log")).unwrap();

        let amqp_port = (!(opts.tls.is_some() && opts.tls_only)).then(free_port);
        let mut conf = match amqp_port {
            Some(port) => format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
            None => "listeners.tcp = none\n".to_owned(),
        };
        let amqps_port = opts.tls.as_ref().map(|tls| {
            let port = free_port();
            conf += &format!(
                "listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = {}\n\
                 ssl_options.fail_if_no_peer_cert = {}\n",
                tls.ca.display(),
                tls.server.cert.display(),
                tls.server.key.display(),
                if tls.verify_peer {
                    "verify_peer"
                } else {
                    "verify_none"
                },
                tls.verify_peer,
            );
            port
        });
        if let Some(seed) = seed {
            // Peer discovery: a blank node joins `seed` during its first boot (later boots
            // use the membership in its data).
            conf += &format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {seed}\n"
            );
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        // The distribution port is fixed (not epmd's random pick) so that it too stays clear
        // of the ephemeral range; written down for `start_again`.
        std::fs::write(dir.join("dist_port"), free_port().to_string()).unwrap();
        Self {
            log: dir.join("log").join(format!("{node}.log")),
            node,
            amqp_port,
            amqps_port,
            ca: opts.tls.as_ref().map(|t| t.ca.clone()),
            child: None,
            dir,
        }
    }

    /// Environment shared by the server and our CLI calls (see the module doc).
    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            // Distribution on loopback only, as the shared node's env file does.
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .current_dir(d);
    }

    /// Starts the node (again, on the same data and ports) and waits for its boot to complete.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.node);
        let d = self.dir.path();
        let log_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let console = File::options()
            .create(true)
            .append(true)
            .open(d.join("console.log"))
            .unwrap();
        let mut cmd = Command::new(script("rabbitmq-server"));
        self.env(&mut cmd);
        cmd.env(
            "RABBITMQ_DIST_PORT",
            std::fs::read_to_string(d.join("dist_port")).unwrap(),
        )
        .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", d.join("log"))
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        // The script does not exec the VM: it stays as the VM's parent. A process group
        // of their own lets Drop kill both (and never anything else).
        .process_group(0);
        self.child = Some(cmd.spawn().expect("spawn rabbitmq-server"));
        // "Server startup complete" is logged once the boot steps (listeners included) are
        // done: the condition `rabbitmqctl await_startup` waits for, without the 2 s that each
        // CLI call costs here.
        poll_until(&format!("{} to boot", self.node), START_DEADLINE, || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited during boot ({status}):\n{}\n{}",
                    self.node,
                    log_tail(&self.dir.join("console.log")),
                    log_tail(&self.log)
                );
            }
            let log = std::fs::read(&self.log).unwrap_or_default();
            let new = &log[usize::try_from(log_len).unwrap().min(log.len())..];
            String::from_utf8_lossy(new)
                .contains("Server startup complete")
                .then_some(())
        });
    }

    /// Graceful stop (SIGTERM: the VM stops RabbitMQ cleanly), keeping the data.
    pub fn stop(&mut self) {
        self.signal_and_wait("TERM");
    }

    /// Hard crash (SIGKILL), keeping the data.
    pub fn kill(&mut self) {
        self.signal_and_wait("KILL");
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    fn signal_and_wait(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The group, so that the VM goes along with the script (negative pid = group).
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
            .status();
        poll_until(&format!("{} to exit", self.node), START_DEADLINE, || {
            child.try_wait().unwrap().map(|_| ())
        });
        // The script is gone; wait for the VM too (same group), which writes the node's files.
        poll_until(
            &format!("{}'s VM to exit", self.node),
            START_DEADLINE,
            || {
                let alive = Command::new("kill")
                    .args(["-0", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                (!alive).then_some(())
            },
        );
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plain AMQP port (panics for a TLS-only node).
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
            .expect("this node has no plain AMQP listener")
    }

    pub fn amqps_port(&self) -> u16 {
        self.amqps_port.expect("this node has no TLS listener")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port())
    }

    /// `amqps://guest:guest@localhost:PORT/%2f[?query]` (`localhost`: the name the server
    /// certificates carry).
    pub fn amqps_url(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("amqps://guest:guest@localhost:{}/%2f{q}", self.amqps_port())
    }

    /// The CA given in the TLS options.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// `rabbitmqctl -n <this node> -q <args>` (or another CLI tool of the same dir, e.g.
    /// `rabbitmq-queues`). About 2 s per call here: the CLI boots an Erlang VM.
    pub fn cli(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(script(tool));
        self.env(&mut cmd);
        cmd.args(["-n", &self.node, "-q"]).args(args);
        output_text(&mut cmd)
    }

    /// `rabbitmqctl` on this node; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.cli("rabbitmqctl", args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `rabbitmqctl ... --formatter json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--formatter", "json"]);
        let text = self.ctl(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// The names of the cluster's running nodes, as this node sees them.
    pub fn running_nodes(&self) -> Vec<String> {
        let status = self.ctl_json(&["cluster_status"]);
        let mut nodes: Vec<String> = status["running_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes
    }

    /// (leader, members) of a quorum queue in the default vhost, if it exists.
    pub fn quorum_queue(&self, queue: &str) -> Option<(String, Vec<String>)> {
        let list = self.ctl_json(&["list_queues", "name", "leader", "members"]);
        let q = list.as_array()?.iter().find(|q| q["name"] == queue)?;
        let leader = q["leader"].as_str()?.to_owned();
        let mut members: Vec<String> = q["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        members.sort();
        Some((leader, members))
    }
}

impl Drop for PrivateRabbit {
    /// SIGKILL: the data is thrown away with the dir, no need for a clean stop.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes that share a cookie and form one cluster (node 0 first, the others join it).
pub struct PrivateRabbitCluster {
    nodes: Vec<PrivateRabbit>,
}

impl PrivateRabbitCluster {
    /// Boots node 0, then nodes 1.. in parallel, which join node 0 during their first boot
    /// (peer discovery, `classic_config`). About 4 s faster here than booting all and then
    /// `stop_app`, `join_cluster`, `start_app` (each CLI call costs 2 s), and node 0 must be
    /// up first either way: a blank node that finds no peer boots as a cluster of its own.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1);
        let cookie = random_cookie();
        let mut first = PrivateRabbit::prepare(&RabbitOpts::default(), &cookie, None);
        first.start_again();
        let seed = first.node_name().to_owned();
        let mut nodes = vec![first];
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..n)
                .map(|_| {
                    s.spawn(|| {
                        let mut node =
                            PrivateRabbit::prepare(&RabbitOpts::default(), &cookie, Some(&seed));
                        node.start_again();
                        node
                    })
                })
                .collect();
            for h in handles {
                nodes.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
        });
        let cluster = Self { nodes };
        let mut want: Vec<String> = cluster.nodes.iter().map(|n| n.node.clone()).collect();
        want.sort();
        assert_eq!(cluster.nodes[0].running_nodes(), want, "cluster formed");
        cluster
    }

    pub fn node(&self, i: usize) -> &PrivateRabbit {
        &self.nodes[i]
    }

    /// For `stop`/`kill`/`start_again` of one node. A node that was not the last to stop
    /// rejoins the cluster on its own when started again.
    pub fn node_mut(&mut self, i: usize) -> &mut PrivateRabbit {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[PrivateRabbit] {
        &self.nodes
    }

    /// The index of the node with this Erlang node name.
    pub fn index_of(&self, node_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node == node_name)
    }

    /// The plain AMQP URLs of all nodes, node 0 first.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRabbit::amqp_url).collect()
    }

    /// The index of the node that leads quorum queue `queue`, asked through any running node.
    pub fn quorum_leader(&mut self, queue: &str) -> Option<usize> {
        let i = (0..self.nodes.len()).find(|&i| self.nodes[i].is_running())?;
        let (leader, _) = self.nodes[i].quorum_queue(queue)?;
        self.index_of(&leader)
    }
}

fn random_cookie() -> String {
    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
}
