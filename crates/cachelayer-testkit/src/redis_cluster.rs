//! `RedisCluster`: a real Redis Cluster on this machine (by default three primaries with one
//! replica each), for tests of cluster clients: slot routing, `MOVED` redirects, and what a
//! client sees while a primary crashes and its replica is promoted.
//!
//! Every node is a [`RedisServer`] of its own, on free ports (client and cluster bus), in
//! its own temporary directory, killed when the cluster is dropped. It must never touch a Redis
//! it did not start (such as a shared one on 6379). A node's start is read from its own
//! readiness log line; only what Redis signals nowhere (the cluster having formed, a failover
//! having finished) is polled, with short sleeps, bounded, and a clear panic when the bound is
//! reached. It must never report a cluster as started or healthy before every slot is served
//! by a running primary that every running node agrees on.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::redis_server::{
    CliTls, RedisServer, RedisServerBuilder, command_calls_in, redis_cli,
    redis_cli_connection_args, run_within, url_userinfo,
};
use crate::tls::TestCertificates;

/// Hash slots in a Redis Cluster.
const SLOTS: u32 = 16384;
/// How long the cluster may take to form after `redis-cli --cluster create`.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `redis-cli --cluster create` may take (it polls once a second itself).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two looks at the cluster's state, which Redis does not signal.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Deadline of one look at one node while polling (a paused node never answers).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a command a test asks for.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisCluster::flush_all`] waits for replicas to apply the flush, in ms.
const FLUSH_WAIT_MS: u64 = 5000;

/// Options for a [`RedisCluster`]: three primaries with one replica each, a 1 s node timeout,
/// no TLS, and the `default` user without a password unless changed.
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    primaries: usize,
    replicas_per_primary: usize,
    node_timeout: Duration,
    acl_user: Option<(String, String)>,
    require_auth: bool,
    tls: bool,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas_per_primary: 1,
            node_timeout: Duration::from_millis(1000),
            acl_user: None,
            require_auth: false,
            tls: false,
        }
    }
}

impl RedisClusterBuilder {
    /// How many primaries share the slots (at least 3, as `redis-cli --cluster create`
    /// requires).
    pub fn primaries(mut self, primaries: usize) -> Self {
        self.primaries = primaries;
        self
    }

    /// How many replicas each primary has (0 for none: a crashed primary then takes its
    /// slots down with it).
    pub fn replicas_per_primary(mut self, replicas: usize) -> Self {
        self.replicas_per_primary = replicas;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it is considered
    /// failing (and its replica promoted). Failover takes roughly two to three times this.
    pub fn node_timeout(mut self, node_timeout: Duration) -> Self {
        self.node_timeout = node_timeout;
        self
    }

    /// Add an ACL user with full access on every node. Replicas authenticate to their
    /// primaries as this user (`masteruser`/`masterauth`), and so do all the kit's own
    /// commands ([`RedisCluster::cli_on`] and the rest) and [`RedisCluster::url`].
    pub fn acl_user(mut self, name: &str, password: &str) -> Self {
        self.acl_user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Turn the `default` user off on every node, so clients must authenticate as the
    /// [`acl_user`](Self::acl_user) ([`start`](Self::start) panics without one).
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// TLS everywhere: every node listens on TLS only (`--port 0`), with certificates from
    /// one generated CA ([`RedisCluster::certificates`]), and the cluster bus and replication
    /// use TLS too.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Start every node, create the cluster with `redis-cli --cluster create`, and wait until
    /// every node reports `cluster_state:ok`, knows every other node, agrees with the others
    /// on which primary serves which slot, and every replica has finished its initial sync.
    ///
    /// # Panics
    /// With fewer than 3 primaries, with [`require_auth`](Self::require_auth) but no ACL
    /// user, if a node cannot start, if `redis-cli --cluster create` fails, or if the cluster
    /// has not formed within 30 s (the message says what was still missing).
    pub fn start(self) -> RedisCluster {
        assert!(
            self.primaries >= 3,
            "a Redis Cluster needs at least 3 primaries, not {}",
            self.primaries
        );
        assert!(
            !self.require_auth || self.acl_user.is_some(),
            "require_auth() needs an acl_user(): nobody could log in"
        );
        let dir = tempfile::Builder::new()
            .prefix("cachelayer-redis-cluster-")
            .tempdir()
            .expect("create a temp dir for the cluster's certificates");
        let certificates = self.tls.then(|| TestCertificates::generate(dir.path()));
        let count = self.primaries * (1 + self.replicas_per_primary);
        let nodes = (0..count)
            .map(|_| {
                let server = self.node_builder(certificates.as_ref()).start();
                Node {
                    port: server.client_port(),
                    server,
                    state: NodeState::Running,
                }
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            certificates,
            auth: self.acl_user.clone(),
            _dir: dir,
        };
        cluster.create(self.replicas_per_primary);
        let shape = Shape {
            primaries: self.primaries,
            replicas_per_primary: self.replicas_per_primary,
        };
        let started = Instant::now();
        let mut problem = String::new();
        while started.elapsed() < FORM_TIMEOUT {
            match cluster.check(Some(shape)) {
                Ok(()) => return cluster,
                Err(err) => problem = err,
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!("the Redis Cluster did not form within {FORM_TIMEOUT:?}: {problem}");
    }

    /// The options of one node.
    fn node_builder(&self, certificates: Option<&TestCertificates>) -> RedisServerBuilder {
        // No delay before a diskless full sync (the default waits 5 s for more replicas).
        // Shards that are up keep serving while another has no primary (a cache's setting:
        // by default every node refuses every command until the failover is over).
        let mut builder = RedisServer::builder()
            .cluster(self.node_timeout)
            .arg("repl-diskless-sync-delay", "0")
            .arg("cluster-require-full-coverage", "no");
        if let Some((name, password)) = &self.acl_user {
            builder = builder
                .acl_user(name, password)
                .arg("masteruser", name)
                .arg("masterauth", password);
        }
        if self.require_auth {
            builder = builder.require_auth();
        }
        if let Some(certificates) = certificates {
            builder = builder
                .tls_with(certificates.clone())
                .tls_only()
                .arg("tls-cluster", "yes")
                .arg("tls-replication", "yes");
        }
        builder
    }
}

/// What a freshly created cluster must look like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    primaries: usize,
    replicas_per_primary: usize,
}

/// Whether a node's process runs and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Running,
    Paused,
    Killed,
}

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    server: RedisServer,
    /// The port clients reach it on (the TLS port with TLS).
    port: u16,
    state: NodeState,
}

/// A Redis Cluster of `redis-server` processes owned by a test; every node is killed and
/// every directory removed on drop.
///
/// ```no_run
/// use std::time::Duration;
/// use cachelayer_testkit::RedisCluster;
///
/// let mut cluster = RedisCluster::start();
/// assert_eq!(cluster.cli_cluster(["SET", "k", "v"]), "OK");
/// let primary = cluster.primary_port_for("k");
/// cluster.kill_node(primary);
/// cluster.wait_healthy(Duration::from_secs(30));
/// assert_ne!(cluster.primary_port_for("k"), primary);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    // Dropped in this order: the nodes (killed), then the directory of the certificates.
    nodes: Vec<Node>,
    certificates: Option<TestCertificates>,
    auth: Option<(String, String)>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Options for a cluster.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// Start the default cluster: three primaries with one replica each.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with the current primaries as seeds
    /// (in slot order); `rediss+cluster://localhost:P1,...` with TLS; with an ACL user,
    /// `redis+cluster://user:password@...` (percent-encoded).
    pub fn url(&self) -> String {
        let (scheme, host) = if self.certificates.is_some() {
            ("rediss+cluster", "localhost")
        } else {
            ("redis+cluster", "127.0.0.1")
        };
        let userinfo = self
            .auth
            .as_ref()
            .map(|(user, password)| url_userinfo(user, password))
            .unwrap_or_default();
        let seeds: Vec<String> = self
            .primary_ports()
            .iter()
            .map(|port| format!("{host}:{port}"))
            .collect();
        format!("{scheme}://{userinfo}{}", seeds.join(","))
    }

    /// The CA and certificates every node uses, with [`tls`](RedisClusterBuilder::tls).
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.certificates.as_ref()
    }

    /// The client addresses of every node, running or not, in the order they were started.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .map(|node| SocketAddr::from((Ipv4Addr::LOCALHOST, node.port)))
            .collect()
    }

    /// The ports of the current primaries, in slot order: the nodes that a running node's
    /// `CLUSTER NODES` shows as primaries serving slots and not failing. Read live, since a
    /// failover changes them.
    ///
    /// # Panics
    /// If no running node answers.
    pub fn primary_ports(&self) -> Vec<u16> {
        let view = self.live_view();
        let mut primaries: Vec<&NodeEntry> = view
            .iter()
            .filter(|entry| entry.primary && !entry.failing && !entry.slots.is_empty())
            .collect();
        primaries.sort_by_key(|entry| entry.slots.iter().map(|range| range.0).min());
        primaries.iter().map(|entry| entry.port).collect()
    }

    /// The ports of the current replicas not failing, as a running node's `CLUSTER NODES`
    /// shows them.
    ///
    /// # Panics
    /// If no running node answers.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.live_view()
            .iter()
            .filter(|entry| entry.replica && !entry.failing)
            .map(|entry| entry.port)
            .collect()
    }

    /// The port of the primary that serves `key`'s slot (`CLUSTER KEYSLOT`) in a running
    /// node's current slot table. Right after a primary was killed, that may still be the
    /// killed one: [`wait_healthy`](Self::wait_healthy) first.
    ///
    /// # Panics
    /// If no running node answers or the slot has no primary.
    pub fn primary_port_for(&self, key: &str) -> u16 {
        let port = self.any_live_port();
        let reply = self.cli_on(port, ["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = reply
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT answered {reply:?}"));
        self.live_view()
            .iter()
            .find(|entry| {
                entry.primary
                    && entry
                        .slots
                        .iter()
                        .any(|&(first, last)| (first..=last).contains(&slot))
            })
            .map(|entry| entry.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot} (key {key:?})"))
    }

    /// Run `redis-cli` against the node on `port` (with the cluster's TLS settings and ACL
    /// user) and return its trimmed output. A Redis error reply is returned as text (such as
    /// `MOVED 12182 127.0.0.1:40001`), not a panic.
    ///
    /// # Panics
    /// If `port` is not a node of this cluster, or `redis-cli` fails (the node is down) or
    /// does not finish within 10 s (the node is paused).
    pub fn cli_on<S: AsRef<OsStr>>(&self, port: u16, args: impl IntoIterator<Item = S>) -> String {
        self.node(port);
        let mut command = self.cli_command(port);
        command.args(args);
        run_within(command, None, CLI_TIMEOUT)
            .unwrap_or_else(|err| panic!("redis-cli against node {port} failed: {err}"))
    }

    /// Run `redis-cli -c` (following `MOVED` and `ASK` redirects) against a running node and
    /// return its trimmed output.
    ///
    /// # Panics
    /// If no node is running, or `redis-cli` fails or does not finish within 10 s.
    pub fn cli_cluster<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> String {
        let port = self.any_live_port();
        let mut command = self.cli_command(port);
        command.arg("-c").args(args);
        run_within(command, None, CLI_TIMEOUT)
            .unwrap_or_else(|err| panic!("redis-cli -c against node {port} failed: {err}"))
    }

    /// `FLUSHALL` on every running primary, then `WAIT` on the same connection until each of
    /// its in-sync replicas has applied it, so every node is empty when this returns. (A
    /// replica still in its initial sync gets the flush with the sync.)
    ///
    /// # Panics
    /// If a primary does not answer, or a replica does not acknowledge the flush in 5 s.
    pub fn flush_all(&self) {
        for port in self.primary_ports() {
            if self.state(port) != NodeState::Running {
                continue;
            }
            let online = self
                .cli_on(port, ["INFO", "replication"])
                .lines()
                .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                .count();
            let script = format!("FLUSHALL\nWAIT {online} {FLUSH_WAIT_MS}\n");
            let reply = run_within(self.cli_command(port), Some(&script), CLI_TIMEOUT)
                .unwrap_or_else(|err| panic!("FLUSHALL on node {port} failed: {err}"));
            let mut lines = reply.lines().map(str::trim);
            assert_eq!(lines.next(), Some("OK"), "FLUSHALL on node {port}: {reply}");
            let acknowledged: usize = lines
                .next()
                .and_then(|count| count.parse().ok())
                .unwrap_or_else(|| panic!("WAIT on node {port} answered {reply:?}"));
            assert!(
                acknowledged >= online,
                "only {acknowledged} of {online} replicas of node {port} applied FLUSHALL"
            );
        }
    }

    /// Kill the node on `port` with SIGKILL, as a crash would. Its port is not reserved
    /// meanwhile; [`restart_node`](Self::restart_node) binds it again.
    ///
    /// # Panics
    /// If `port` is not a node of this cluster.
    pub fn kill_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.server.stop();
        node.state = NodeState::Killed;
    }

    /// Start a killed (or paused: it is killed first) node again on the same ports, in the
    /// same directory: it keeps its `nodes.conf`, so it rejoins the cluster with its identity
    /// (a former primary whose slots were taken over comes back as a replica), but empty and
    /// resyncing. [`wait_healthy`](Self::wait_healthy) waits for it.
    ///
    /// # Panics
    /// If `port` is not a node of this cluster or the node cannot start.
    pub fn restart_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.server.restart();
        node.state = NodeState::Running;
    }

    /// Freeze the node on `port` (SIGSTOP): its connections stay open and nothing is
    /// answered. Kept for longer than the node timeout, a paused primary is failed over.
    ///
    /// # Panics
    /// If `port` is not a running node of this cluster.
    pub fn pause_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        assert_eq!(node.state, NodeState::Running, "node {port} is not running");
        node.server.pause();
        node.state = NodeState::Paused;
    }

    /// Thaw a [`pause_node`](Self::pause_node)d node (SIGCONT).
    ///
    /// # Panics
    /// If `port` is not a paused node of this cluster.
    pub fn resume_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        assert_eq!(node.state, NodeState::Paused, "node {port} is not paused");
        node.server.resume();
        node.state = NodeState::Running;
    }

    /// Wait until the running (not killed, not paused) nodes are healthy: every one reports
    /// `cluster_state:ok`, they agree on which primary serves each slot and on every running
    /// node's role (primary, or replica of which primary), none sees a running node as
    /// failing, every slot is served by a running primary, and every running replica's link
    /// to its primary is up. Returns
    /// how long it waited: after a primary is killed, how long its replica took to be
    /// promoted and recognised.
    ///
    /// # Panics
    /// If that is not so within `timeout` (the message says what was still wrong).
    pub fn wait_healthy(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            match self.check(None) {
                Ok(()) => return started.elapsed(),
                Err(problem) if started.elapsed() >= timeout => {
                    panic!("the Redis Cluster was not healthy within {timeout:?}: {problem}")
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// How many times the node on `port` has executed `command` since it started or the
    /// last [`reset_stats`](Self::reset_stats), from `INFO commandstats`.
    pub fn command_calls(&self, port: u16, command: &str) -> u64 {
        command_calls_in(&self.cli_on(port, ["INFO", "commandstats"]), command)
    }

    /// Reset `INFO commandstats` on the node on `port`.
    pub fn reset_stats(&self, port: u16) {
        assert_eq!(self.cli_on(port, ["CONFIG", "RESETSTAT"]), "OK");
    }

    /// `redis-cli --cluster create` over every node.
    fn create(&self, replicas_per_primary: usize) {
        let mut command = Command::new("redis-cli");
        redis_cli_connection_args(&mut command, self.tls(), self.auth());
        command.args(["--cluster", "create"]);
        command.args(
            self.nodes
                .iter()
                .map(|node| format!("127.0.0.1:{}", node.port)),
        );
        command
            .arg("--cluster-replicas")
            .arg(replicas_per_primary.to_string())
            .arg("--cluster-yes");
        let output = run_within(command, None, CREATE_TIMEOUT)
            .unwrap_or_else(|err| panic!("redis-cli --cluster create failed: {err}"));
        assert!(
            output.contains("All 16384 slots covered"),
            "redis-cli --cluster create did not cover every slot:\n{output}"
        );
    }

    /// Whether the cluster is healthy (see [`wait_healthy`](Self::wait_healthy)); with a
    /// `shape`, also whether it is complete as created: every node known to every node and
    /// none failing, `primaries` primaries with `replicas_per_primary` replicas each.
    fn check(&self, shape: Option<Shape>) -> Result<(), String> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|node| node.state == NodeState::Running)
            .map(|node| node.port)
            .collect();
        if live.is_empty() {
            return Err("no node is running".to_owned());
        }
        let mut agreed: Option<(u16, Topology)> = None;
        for &port in &live {
            let info = self.probe(port, &["CLUSTER", "INFO"])?;
            let state = info
                .lines()
                .map(str::trim)
                .find(|line| line.starts_with("cluster_state:"))
                .unwrap_or(info.as_str());
            if state != "cluster_state:ok" {
                return Err(format!("node {port} reports {state:?}"));
            }
            let view = parse_cluster_nodes(&self.probe(port, &["CLUSTER", "NODES"])?)
                .map_err(|err| format!("node {port}: {err}"))?;
            let topology = Topology {
                slots: slot_map(&view).map_err(|err| format!("node {port} sees {err}"))?,
                roles: roles_of(&view, &live).map_err(|err| format!("node {port} sees {err}"))?,
            };
            if let Some(&(_, _, owner)) =
                topology.slots.iter().find(|range| !live.contains(&range.2))
            {
                return Err(format!(
                    "node {port} sees slots served by node {owner}, which is not running"
                ));
            }
            match &agreed {
                Some((first, first_topology)) if *first_topology != topology => {
                    return Err(format!(
                        "nodes {first} and {port} disagree: {first_topology:?} against \
                         {topology:?}"
                    ));
                }
                Some(_) => {}
                None => agreed = Some((port, topology)),
            }
            if let Some(shape) = shape {
                check_shape(&view, self.nodes.len(), shape)
                    .map_err(|err| format!("node {port} sees {err}"))?;
            }
            let myself = view
                .iter()
                .find(|entry| entry.myself)
                .ok_or_else(|| format!("node {port} does not list itself"))?;
            if myself.replica {
                let replication = self.probe(port, &["INFO", "replication"])?;
                if !replication
                    .lines()
                    .any(|line| line.trim() == "master_link_status:up")
                {
                    return Err(format!(
                        "replica {port} has not finished syncing with its primary"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    fn live_view(&self) -> Vec<NodeEntry> {
        let mut problem = "no node is running".to_owned();
        for node in &self.nodes {
            if node.state != NodeState::Running {
                continue;
            }
            match self
                .probe(node.port, &["CLUSTER", "NODES"])
                .and_then(|text| parse_cluster_nodes(&text))
            {
                Ok(view) => return view,
                Err(err) => problem = format!("node {}: {err}", node.port),
            }
        }
        panic!("no running node of the Redis Cluster answered CLUSTER NODES: {problem}");
    }

    /// The port of a running node.
    fn any_live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|node| node.state == NodeState::Running)
            .map(|node| node.port)
            .expect("no node of the Redis Cluster is running")
    }

    /// One short look at one node: a command with a short deadline.
    fn probe(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut command = self.cli_command(port);
        command.args(args);
        run_within(command, None, PROBE_TIMEOUT).map_err(|err| format!("node {port}: {err}"))
    }

    fn cli_command(&self, port: u16) -> Command {
        redis_cli(port, self.tls(), self.auth())
    }

    fn tls(&self) -> Option<CliTls<'_>> {
        self.certificates.as_ref().map(|certs| CliTls {
            ca_cert_file: &certs.ca_cert_file,
            client_cert: None,
        })
    }

    fn auth(&self) -> Option<(&str, &str)> {
        self.auth
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    fn state(&self, port: u16) -> NodeState {
        self.node(port).state
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this Redis Cluster is on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this Redis Cluster is on port {port}"))
    }
}

/// A contiguous run of slots and the port of the primary serving it.
type SlotRange = (u32, u32, u16);

/// What one node believes about the cluster, which all running nodes must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Topology {
    /// Who serves which slots.
    slots: Vec<SlotRange>,
    /// Each running node's port, with the port of its primary if it is a replica.
    roles: Vec<(u16, Option<u16>)>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeEntry {
    id: String,
    port: u16,
    myself: bool,
    primary: bool,
    replica: bool,
    /// Flagged `fail` or `fail?`.
    failing: bool,
    /// Flagged `handshake` or `noaddr`: not (yet) a full member.
    joining: bool,
    primary_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

/// Parse `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot>...`.
fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeEntry>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bad = || format!("unexpected CLUSTER NODES line {line:?}");
            if fields.len() < 8 {
                return Err(bad());
            }
            let address = fields[1].split(['@', ',']).next().unwrap_or_default();
            let port = address
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .ok_or_else(bad)?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let mut slots = Vec::new();
            // Importing and migrating slots are listed as `[slot-<-id]` / `[slot->-id]`.
            for field in fields[8..].iter().filter(|field| !field.starts_with('[')) {
                let (first, last) = field.split_once('-').unwrap_or((field, field));
                let first = first.parse().map_err(|_| bad())?;
                let last = last.parse().map_err(|_| bad())?;
                slots.push((first, last));
            }
            Ok(NodeEntry {
                id: fields[0].to_owned(),
                port,
                myself: flags.contains(&"myself"),
                primary: flags.contains(&"master"),
                replica: flags.contains(&"slave"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                joining: flags.contains(&"handshake") || flags.contains(&"noaddr"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The slot table of one node's view, as merged runs in slot order, if every slot is served
/// exactly once by a primary not flagged failing.
fn slot_map(view: &[NodeEntry]) -> Result<Vec<SlotRange>, String> {
    let mut ranges: Vec<SlotRange> = Vec::new();
    for entry in view.iter().filter(|entry| entry.primary) {
        for &(first, last) in &entry.slots {
            if entry.failing {
                return Err(format!(
                    "slots {first}-{last} served by node {}, which is failing",
                    entry.port
                ));
            }
            ranges.push((u32::from(first), u32::from(last), entry.port));
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<SlotRange> = Vec::new();
    let mut next = 0;
    for (first, last, port) in ranges {
        if first != next {
            return Err(format!("slot {next} not served exactly once"));
        }
        match merged.last_mut() {
            Some(previous) if previous.2 == port => previous.1 = last,
            _ => merged.push((first, last, port)),
        }
        next = last + 1;
    }
    if next != SLOTS {
        return Err(format!("slot {next} not served"));
    }
    Ok(merged)
}

/// The role of each node on the `live` ports in one node's view: its port, and its primary's
/// port if it is a replica. Fails if one of them is missing, failing or still joining.
fn roles_of(view: &[NodeEntry], live: &[u16]) -> Result<Vec<(u16, Option<u16>)>, String> {
    live.iter()
        .map(|&port| {
            let entry = view
                .iter()
                .find(|entry| entry.port == port)
                .ok_or_else(|| format!("no node {port}"))?;
            if entry.failing || entry.joining {
                return Err(format!("node {port} failing or still joining"));
            }
            let primary = match (&entry.primary_id, entry.replica) {
                (Some(id), true) => Some(
                    view.iter()
                        .find(|primary| &primary.id == id)
                        .map(|primary| primary.port)
                        .ok_or_else(|| format!("node {port} replicating an unknown node"))?,
                ),
                _ => None,
            };
            Ok((port, primary))
        })
        .collect()
}

/// Whether one node's view shows the cluster as created: every node a full member, none
/// failing, `primaries` primaries serving slots and `replicas_per_primary` replicas of each.
fn check_shape(view: &[NodeEntry], nodes: usize, shape: Shape) -> Result<(), String> {
    if view.len() != nodes {
        return Err(format!("{} nodes, not {nodes}", view.len()));
    }
    if let Some(entry) = view.iter().find(|entry| entry.failing || entry.joining) {
        return Err(format!("node {} failing or still joining", entry.port));
    }
    let primaries: Vec<&NodeEntry> = view
        .iter()
        .filter(|entry| entry.primary && !entry.slots.is_empty())
        .collect();
    if primaries.len() != shape.primaries {
        return Err(format!(
            "{} primaries serving slots, not {}",
            primaries.len(),
            shape.primaries
        ));
    }
    for primary in primaries {
        let replicas = view
            .iter()
            .filter(|entry| entry.replica && entry.primary_id.as_deref() == Some(&primary.id))
            .count();
        if replicas != shape.replicas_per_primary {
            return Err(format!(
                "{replicas} replicas of primary {}, not {}",
                primary.port, shape.replicas_per_primary
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

    fn accepts(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// Every port a node listens on: client and cluster bus.
    fn listening_ports(cluster: &RedisCluster) -> Vec<u16> {
        cluster
            .nodes
            .iter()
            .flat_map(|node| [Some(node.port), node.server.cluster_port()])
            .flatten()
            .collect()
    }

    /// The cluster forms, routes keys, fails a killed primary over to its replica, takes the
    /// old primary back as a replica, flushes everywhere, and leaves nothing listening.
    #[test]
    fn starts_routes_fails_over_and_is_gone_after_drop() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start();
        eprintln!("cluster started in {:?}", started.elapsed());
        assert_eq!(cluster.nodes().len(), 6);
        assert!(cluster.nodes().iter().all(|node| node.port() != 6379));
        let primaries = cluster.primary_ports();
        assert_eq!(primaries.len(), 3);
        assert_eq!(cluster.replica_ports().len(), 3);
        let url = cluster.url();
        let seeds: Vec<String> = primaries
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        assert_eq!(url, format!("redis+cluster://{}", seeds.join(",")));

        assert_eq!(cluster.cli_cluster(["SET", "greeting", "hello"]), "OK");
        assert_eq!(cluster.cli_cluster(["GET", "greeting"]), "hello");

        // The owner answers the key itself; every other primary redirects to it.
        let owner = cluster.primary_port_for("greeting");
        let slot = cluster.cli_on(owner, ["CLUSTER", "KEYSLOT", "greeting"]);
        cluster.reset_stats(owner);
        assert_eq!(cluster.cli_on(owner, ["GET", "greeting"]), "hello");
        assert_eq!(cluster.command_calls(owner, "get"), 1);
        for &other in primaries.iter().filter(|&&port| port != owner) {
            assert_eq!(
                cluster.cli_on(other, ["GET", "greeting"]),
                format!("MOVED {slot} 127.0.0.1:{owner}")
            );
        }

        cluster.kill_node(owner);
        let waited = cluster.wait_healthy(HEALTHY_TIMEOUT);
        eprintln!("failover took {waited:?}");
        let promoted = cluster.primary_port_for("greeting");
        assert_ne!(promoted, owner);
        assert!(!cluster.primary_ports().contains(&owner));
        assert_eq!(cluster.cli_cluster(["SET", "greeting", "again"]), "OK");
        assert_eq!(cluster.cli_on(promoted, ["GET", "greeting"]), "again");

        cluster.restart_node(owner);
        let waited = cluster.wait_healthy(HEALTHY_TIMEOUT);
        eprintln!("rejoin took {waited:?}");
        assert!(cluster.replica_ports().contains(&owner));
        assert_eq!(cluster.primary_port_for("greeting"), promoted);

        cluster.flush_all();
        for node in cluster.nodes() {
            assert_eq!(cluster.cli_on(node.port(), ["DBSIZE"]), "0");
        }

        let ports = listening_ports(&cluster);
        assert_eq!(ports.len(), 12);
        drop(cluster);
        for port in ports {
            assert!(!accepts(port), "port {port} still accepts after drop");
        }
    }

    /// A paused replica is not waited for; once resumed, the cluster is healthy again.
    #[test]
    fn pause_and_resume_a_replica() {
        let mut cluster = RedisCluster::builder().primaries(3).start();
        let replica = cluster.replica_ports()[0];
        cluster.pause_node(replica);
        assert_eq!(cluster.cli_cluster(["SET", "k", "v"]), "OK");
        cluster.wait_healthy(HEALTHY_TIMEOUT);
        cluster.resume_node(replica);
        cluster.wait_healthy(HEALTHY_TIMEOUT);
        assert_eq!(cluster.cli_on(replica, ["PING"]), "PONG");
    }

    /// With the default user off, nodes only let the ACL user in; the kit's own commands and
    /// the replicas' sync authenticate as that user.
    #[test]
    fn acl_cluster_requires_auth() {
        let cluster = RedisCluster::builder()
            .acl_user("cache", "s3cret")
            .require_auth()
            .start();
        let port = cluster.nodes()[0].port();
        assert_eq!(cluster.cli_on(port, ["ACL", "WHOAMI"]), "cache");
        let anonymous = redis_cli(port, None, None)
            .arg("PING")
            .output()
            .expect("run redis-cli");
        let reply = String::from_utf8_lossy(&anonymous.stdout);
        assert!(reply.contains("NOAUTH"), "{reply}");
        assert!(
            cluster
                .url()
                .starts_with("redis+cluster://cache:s3cret@127.0.0.1:")
        );
        assert_eq!(cluster.cli_cluster(["SET", "k", "v"]), "OK");
        assert_eq!(cluster.cli_cluster(["GET", "k"]), "v");
    }

    /// With TLS, nodes listen on TLS only and talk to each other over TLS.
    #[test]
    fn tls_cluster_speaks_tls_only() {
        let started = Instant::now();
        let cluster = RedisCluster::builder().tls().start();
        eprintln!("TLS cluster started in {:?}", started.elapsed());
        assert!(cluster.url().starts_with("rediss+cluster://localhost:"));
        let certificates = cluster.certificates().expect("certificates");
        assert!(certificates.ca_cert_file.exists());
        assert_eq!(cluster.cli_cluster(["SET", "k", "v"]), "OK");
        assert_eq!(cluster.cli_cluster(["GET", "k"]), "v");
        let port = cluster.nodes()[0].port();
        let mut plain = redis_cli(port, None, None);
        plain.arg("PING");
        let reply = run_within(plain, None, Duration::from_secs(5));
        assert!(reply.map_or(true, |reply| reply != "PONG"));
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
            07c3 127.0.0.1:30004@31004,host slave e7d1 0 1426238317239 4 connected\n\
            67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n\
            e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]\n\
            292f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 connected 10923 10924-16383\n";
        let view = parse_cluster_nodes(text).expect("parse");
        assert_eq!(view.len(), 4);
        assert!(view[0].replica && view[0].primary_id.as_deref() == Some("e7d1"));
        assert_eq!(view[0].port, 30004);
        assert!(view[2].myself && view[2].slots == vec![(0, 5460)]);
        assert!(view[3].failing);
        assert!(slot_map(&view).is_err());
        let mut healthy = view.clone();
        healthy[3].failing = false;
        assert_eq!(
            slot_map(&healthy).expect("covered"),
            vec![
                (0, 5460, 30001),
                (5461, 10922, 30002),
                (10923, 16383, 30003)
            ]
        );
        healthy.remove(1);
        assert!(slot_map(&healthy).is_err());
    }
}
