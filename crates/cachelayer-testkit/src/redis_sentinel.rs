//! `RedisSentinel`: a real Redis Sentinel set-up on this machine (one primary, one replica,
//! three sentinels with a quorum of two), for tests of sentinel clients: discovering the
//! primary, and what a client sees while the primary crashes and a sentinel promotes the
//! replica.
//!
//! Data nodes are [`RedisServer`]s; sentinels run `redis-server <dir>/sentinel.conf
//! --sentinel` (no `redis-sentinel` binary needed). Every process has free ports and its own
//! temporary directory, and is killed on drop. It must never touch a Redis it did not start
//! (such as a shared one on 6379). Process starts are read from their own log lines; only what
//! Redis signals nowhere (sentinels having found each other, a failover having finished) is
//! polled, with short sleeps, bounded, with a clear panic when the bound is reached. It must
//! never report the set-up as started before every sentinel knows the replica and the other
//! sentinels and the replica is in sync.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::redis_server::{
    RedisServer, RedisServerBuilder, START_ATTEMPTS, free_port, redis_cli, run_within,
    spawn_until_ready, url_userinfo,
};

/// How many sentinels watch the primary.
const SENTINELS: usize = 3;
/// How many sentinels must agree that the primary is down.
const QUORUM: usize = 2;
/// `sentinel failover-timeout`, in ms.
const FAILOVER_TIMEOUT_MS: u64 = 5000;
/// The log line a sentinel prints once it listens and monitors its primary (sentinels do
/// not print "Ready to accept connections").
const SENTINEL_READY_LINE: &str = "+monitor master";
/// How long the set-up may take to settle once every process runs.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at what Redis does not signal.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Deadline of one look at one process while polling.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a command a test asks for.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for a [`RedisSentinel`]: master name `cachelayer`, a primary declared down after
/// 500 ms without an answer, the `default` user without a password unless changed.
#[derive(Debug, Clone)]
pub struct RedisSentinelBuilder {
    master_name: String,
    down_after: Duration,
    acl_user: Option<(String, String)>,
    require_auth: bool,
}

impl Default for RedisSentinelBuilder {
    fn default() -> Self {
        Self {
            master_name: "cachelayer".to_owned(),
            down_after: Duration::from_millis(500),
            acl_user: None,
            require_auth: false,
        }
    }
}

impl RedisSentinelBuilder {
    /// The name the sentinels monitor the primary under (a single word).
    pub fn master_name(mut self, name: &str) -> Self {
        self.master_name = name.to_owned();
        self
    }

    /// `sentinel down-after-milliseconds`: how long the primary may not answer before a
    /// sentinel considers it down. Failover takes roughly this plus one to two seconds.
    pub fn down_after(mut self, down_after: Duration) -> Self {
        self.down_after = down_after;
        self
    }

    /// Add an ACL user with full access on the data nodes (not the sentinels). The replica
    /// authenticates to the primary as this user (`masteruser`/`masterauth`), the sentinels
    /// too (`sentinel auth-user`/`auth-pass`), and so do [`RedisSentinel::cli_on`] and the
    /// credentials in [`RedisSentinel::url`].
    pub fn acl_user(mut self, name: &str, password: &str) -> Self {
        self.acl_user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Turn the `default` user off on the data nodes, so clients must authenticate as the
    /// [`acl_user`](Self::acl_user) ([`start`](Self::start) panics without one).
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// Start the primary, the replica (`--replicaof`), wait until it is in sync, start the
    /// sentinels, and wait until each knows the replica and the other two sentinels.
    ///
    /// # Panics
    /// With [`require_auth`](Self::require_auth) but no ACL user, a master name that is not
    /// one word, if a process cannot start, or if the set-up has not settled within 30 s (the
    /// message says what was still missing).
    pub fn start(self) -> RedisSentinel {
        assert!(
            !self.require_auth || self.acl_user.is_some(),
            "require_auth() needs an acl_user(): nobody could log in"
        );
        assert!(
            !self.master_name.is_empty()
                && self
                    .master_name
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic() && byte != b'"'),
            "the master name must be one word, not {:?}",
            self.master_name
        );
        let primary = self.data_builder().start();
        let primary_port = primary.port();
        let replica = self
            .data_builder()
            .option("replicaof", &["127.0.0.1", &primary_port.to_string()])
            .start();
        let replica_port = replica.port();
        let mut setup = RedisSentinel {
            sentinels: Vec::new(),
            data: vec![
                DataNode {
                    server: primary,
                    killed: false,
                },
                DataNode {
                    server: replica,
                    killed: false,
                },
            ],
            master_name: self.master_name.clone(),
            auth: self.acl_user.clone(),
        };
        let deadline = Instant::now() + FORM_TIMEOUT;
        setup.settle(deadline, "the replica did not sync", || {
            setup.replica_in_sync(replica_port)
        });
        let conf = self.sentinel_conf(primary_port);
        setup.sentinels = (0..SENTINELS).map(|_| SentinelNode::start(&conf)).collect();
        setup.settle(deadline, "the sentinels did not settle", || {
            setup.sentinels_settled(primary_port, replica_port)
        });
        setup
    }

    /// The options of a data node.
    fn data_builder(&self) -> RedisServerBuilder {
        // No delay before a diskless full sync (the default waits 5 s for more replicas).
        let mut builder = RedisServer::builder().arg("repl-diskless-sync-delay", "0");
        if let Some((name, password)) = &self.acl_user {
            builder = builder
                .acl_user(name, password)
                .arg("masteruser", name)
                .arg("masterauth", password);
        }
        if self.require_auth {
            builder = builder.require_auth();
        }
        builder
    }

    /// The configuration every sentinel starts from (each rewrites its own copy).
    fn sentinel_conf(&self, primary_port: u16) -> String {
        let name = &self.master_name;
        let mut conf = format!(
            "bind 127.0.0.1\n\
             logfile \"\"\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {name} 127.0.0.1 {primary_port} {QUORUM}\n\
             sentinel down-after-milliseconds {name} {}\n\
             sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n",
            self.down_after.as_millis().max(1)
        );
        if let Some((user, password)) = &self.acl_user {
            conf.push_str(&format!(
                "sentinel auth-user {name} {}\nsentinel auth-pass {name} {}\n",
                quote(user),
                quote(password)
            ));
        }
        conf
    }
}

/// A word of a Redis configuration file, quoted.
fn quote(word: &str) -> String {
    format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A primary or replica.
#[derive(Debug)]
struct DataNode {
    server: RedisServer,
    killed: bool,
}

/// A `redis-server --sentinel` process in its own directory; killed on drop.
#[derive(Debug)]
struct SentinelNode {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl SentinelNode {
    /// Write `conf` into a fresh directory and start a sentinel on a free port.
    fn start(conf: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cachelayer-sentinel-")
            .tempdir()
            .expect("create a temp dir for a sentinel");
        let conf = format!("{conf}dir {}\n", quote(&dir.path().to_string_lossy()));
        std::fs::write(dir.path().join("sentinel.conf"), conf).expect("write sentinel.conf");
        let mut sentinel = Self {
            child: None,
            port: 0,
            dir,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            sentinel.port = free_port();
            match sentinel.spawn() {
                Ok(()) => return sentinel,
                Err(err) => last_error = err,
            }
        }
        panic!("redis sentinel did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    fn conf_file(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .arg(self.conf_file())
            .arg("--sentinel")
            .arg("--port")
            .arg(self.port.to_string());
        self.child = Some(spawn_until_ready(command, SENTINEL_READY_LINE)?);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A primary, a replica and three sentinels owned by a test; every process is killed and
/// every directory removed on drop.
///
/// ```no_run
/// use std::time::Duration;
/// use cachelayer_testkit::RedisSentinel;
///
/// let mut sentinel = RedisSentinel::start();
/// let old = sentinel.kill_primary();
/// let (new, _took) = sentinel.wait_for_failover(old, Duration::from_secs(30));
/// assert_eq!(sentinel.primary_port(), new);
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    // Sentinels are dropped (killed) first, so none reacts to the data nodes going away.
    sentinels: Vec<SentinelNode>,
    data: Vec<DataNode>,
    master_name: String,
    auth: Option<(String, String)>,
}

impl RedisSentinel {
    /// Options for a set-up.
    pub fn builder() -> RedisSentinelBuilder {
        RedisSentinelBuilder::default()
    }

    /// Start the default set-up: master name `cachelayer`, down after 500 ms.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/<master name>`; with an ACL
    /// user, `redis+sentinel://user:password@...` (percent-encoded; these credentials are for
    /// the data nodes, the sentinels need none).
    pub fn url(&self) -> String {
        let userinfo = self
            .auth
            .as_ref()
            .map(|(user, password)| url_userinfo(user, password))
            .unwrap_or_default();
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!(
            "redis+sentinel://{userinfo}{}/{}",
            sentinels.join(","),
            self.master_name
        )
    }

    /// The name the sentinels monitor the primary under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The port of the current primary, as a running sentinel reports it
    /// (`SENTINEL get-master-addr-by-name`).
    ///
    /// # Panics
    /// If no running sentinel answers.
    pub fn primary_port(&self) -> u16 {
        let mut problem = "no sentinel is running".to_owned();
        for sentinel in self.running_sentinels() {
            match self.sentinel_primary(sentinel.port) {
                Ok(port) => return port,
                Err(err) => problem = err,
            }
        }
        panic!("no sentinel named the primary: {problem}");
    }

    /// The ports of the data nodes, running or not: the first primary, then its replica.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|node| node.server.port()).collect()
    }

    /// The ports of the sentinels, running or not.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .map(|sentinel| sentinel.port)
            .collect()
    }

    /// Kill the current primary (as the sentinels report it) with SIGKILL, as a crash would,
    /// and return its port.
    ///
    /// # Panics
    /// If no sentinel answers or it names a node not of this set-up.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        self.kill_node(port);
        port
    }

    /// Wait until every running sentinel names the same primary, not `old_port`, and that
    /// node reports `role:master`. Returns its port and how long that took.
    ///
    /// # Panics
    /// If that is not so within `timeout` (the message says what was still wrong).
    pub fn wait_for_failover(&self, old_port: u16, timeout: Duration) -> (u16, Duration) {
        let started = Instant::now();
        loop {
            match self.failed_over(old_port) {
                Ok(port) => return (port, started.elapsed()),
                Err(problem) if started.elapsed() >= timeout => {
                    panic!("no failover from {old_port} within {timeout:?}: {problem}")
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Run `redis-cli` against the data node or sentinel on `port` (authenticated as the ACL
    /// user on a data node) and return its trimmed output. A Redis error reply is returned
    /// as text, not a panic.
    ///
    /// # Panics
    /// If `port` is not a process of this set-up, or `redis-cli` fails (the process is down)
    /// or does not finish within 10 s.
    pub fn cli_on<S: AsRef<OsStr>>(&self, port: u16, args: impl IntoIterator<Item = S>) -> String {
        let mut command = self.cli_command(port);
        command.args(args);
        run_within(command, None, CLI_TIMEOUT)
            .unwrap_or_else(|err| panic!("redis-cli against {port} failed: {err}"))
    }

    /// Kill the data node or sentinel on `port` with SIGKILL, as a crash would.
    ///
    /// # Panics
    /// If `port` is not a process of this set-up.
    pub fn kill_node(&mut self, port: u16) {
        if let Some(node) = self.data.iter_mut().find(|node| node.server.port() == port) {
            node.server.stop();
            node.killed = true;
        } else {
            self.sentinel_mut(port).stop();
        }
    }

    /// Start a killed data node or sentinel again on the same port. A data node comes back
    /// empty, with its start-up role (the first primary as a primary); the sentinels then
    /// reconfigure it as a replica of the current primary, which takes them up to about
    /// ten seconds. A sentinel keeps its rewritten `sentinel.conf`, so it remembers the
    /// current primary and the others.
    ///
    /// # Panics
    /// If `port` is not a process of this set-up or it cannot start.
    pub fn restart_node(&mut self, port: u16) {
        if let Some(node) = self.data.iter_mut().find(|node| node.server.port() == port) {
            node.server.restart();
            node.killed = false;
        } else {
            let sentinel = self.sentinel_mut(port);
            sentinel.stop();
            if let Err(err) = sentinel.spawn() {
                panic!("redis sentinel did not restart on port {port}: {err}");
            }
        }
    }

    /// Poll `check` until it holds, panicking with `what` and its last complaint once
    /// `deadline` has passed.
    fn settle(&self, deadline: Instant, what: &str, check: impl Fn() -> Result<(), String>) {
        loop {
            match check() {
                Ok(()) => return,
                Err(problem) if Instant::now() >= deadline => {
                    panic!("{what} within {FORM_TIMEOUT:?}: {problem}")
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Whether the replica on `port` has finished syncing with its primary.
    fn replica_in_sync(&self, port: u16) -> Result<(), String> {
        let replication = self.probe(port, &["INFO", "replication"])?;
        if replication
            .lines()
            .any(|line| line.trim() == "master_link_status:up")
        {
            Ok(())
        } else {
            Err(format!("replica {port} has not finished syncing"))
        }
    }

    /// Whether every running sentinel names `primary`, knows `replica` and the other
    /// sentinels, and sees none of them down.
    fn sentinels_settled(&self, primary: u16, replica: u16) -> Result<(), String> {
        for sentinel in self.running_sentinels() {
            let port = sentinel.port;
            let named = self.sentinel_primary(port)?;
            if named != primary {
                return Err(format!("sentinel {port} names {named} as the primary"));
            }
            let replicas =
                parse_records(&self.probe(port, &["SENTINEL", "replicas", &self.master_name])?);
            let known = replicas.iter().any(|record| {
                field(record, "port") == Some(&replica.to_string())
                    && field(record, "flags") == Some("slave")
            });
            if !known {
                return Err(format!(
                    "sentinel {port} does not know replica {replica} as up: {replicas:?}"
                ));
            }
            let others =
                parse_records(&self.probe(port, &["SENTINEL", "sentinels", &self.master_name])?);
            let up = others
                .iter()
                .filter(|record| field(record, "flags") == Some("sentinel"))
                .count();
            if up != SENTINELS - 1 {
                return Err(format!(
                    "sentinel {port} knows {up} other sentinels as up, not {}",
                    SENTINELS - 1
                ));
            }
        }
        Ok(())
    }

    /// The primary every running sentinel names, if they all name the same one, not
    /// `old_port`, and it says it is a primary.
    fn failed_over(&self, old_port: u16) -> Result<u16, String> {
        let mut agreed: Option<(u16, u16)> = None;
        for sentinel in self.running_sentinels() {
            let named = self.sentinel_primary(sentinel.port)?;
            if named == old_port {
                return Err(format!("sentinel {} still names {old_port}", sentinel.port));
            }
            match agreed {
                Some((first, first_named)) if first_named != named => {
                    return Err(format!(
                        "sentinel {first} names {first_named}, sentinel {} names {named}",
                        sentinel.port
                    ));
                }
                Some(_) => {}
                None => agreed = Some((sentinel.port, named)),
            }
        }
        let (_, primary) = agreed.ok_or("no sentinel is running")?;
        if !self.data.iter().any(|node| node.server.port() == primary) {
            return Err(format!("the sentinels name {primary}, not a data node"));
        }
        let replication = self.probe(primary, &["INFO", "replication"])?;
        if replication.lines().any(|line| line.trim() == "role:master") {
            Ok(primary)
        } else {
            Err(format!("{primary} does not report role:master yet"))
        }
    }

    /// `SENTINEL get-master-addr-by-name` on the sentinel on `port`.
    fn sentinel_primary(&self, port: u16) -> Result<u16, String> {
        let reply = self.probe(
            port,
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
        )?;
        reply
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| format!("sentinel {port} answered {reply:?}"))
    }

    fn running_sentinels(&self) -> impl Iterator<Item = &SentinelNode> {
        self.sentinels
            .iter()
            .filter(|sentinel| sentinel.child.is_some())
    }

    /// One short look at one process: a command with a short deadline.
    fn probe(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut command = self.cli_command(port);
        command.args(args);
        run_within(command, None, PROBE_TIMEOUT).map_err(|err| format!("{port}: {err}"))
    }

    /// `redis-cli` aimed at the process on `port`, authenticated on a data node.
    fn cli_command(&self, port: u16) -> Command {
        if self.data.iter().any(|node| node.server.port() == port) {
            let auth = self
                .auth
                .as_ref()
                .map(|(user, password)| (user.as_str(), password.as_str()));
            redis_cli(port, None, auth)
        } else if self.sentinels.iter().any(|sentinel| sentinel.port == port) {
            redis_cli(port, None, None)
        } else {
            panic!("no process of this sentinel set-up is on port {port}")
        }
    }

    fn sentinel_mut(&mut self, port: u16) -> &mut SentinelNode {
        self.sentinels
            .iter_mut()
            .find(|sentinel| sentinel.port == port)
            .unwrap_or_else(|| panic!("no process of this sentinel set-up is on port {port}"))
    }
}

/// A record of `SENTINEL replicas` or `SENTINEL sentinels`: field names and values.
type Record = Vec<(String, String)>;

/// Parse the flat output `redis-cli` prints for an array of field/value arrays: one line per
/// element, every record starting with its `name` field.
fn parse_records(text: &str) -> Vec<Record> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut records: Vec<Record> = Vec::new();
    for pair in lines.chunks(2) {
        let [name, value] = pair else { break };
        if *name == "name" || records.is_empty() {
            records.push(Vec::new());
        }
        if let Some(record) = records.last_mut() {
            record.push(((*name).to_owned(), (*value).to_owned()));
        }
    }
    records
}

/// The value of `name` in `record`.
fn field<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    const FAILOVER_WAIT: Duration = Duration::from_secs(30);

    fn accepts(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// The set-up starts, names its primary, fails over to the replica when the primary is
    /// killed, takes the old primary back, and leaves nothing listening after drop.
    #[test]
    fn starts_fails_over_and_is_gone_after_drop() {
        let started = Instant::now();
        let mut setup = RedisSentinel::start();
        eprintln!("sentinel set-up started in {:?}", started.elapsed());
        let data = setup.data_ports();
        let sentinels = setup.sentinel_ports();
        assert_eq!(data.len(), 2);
        assert_eq!(sentinels.len(), 3);
        assert!(data.iter().chain(&sentinels).all(|&port| port != 6379));
        let seeds: Vec<String> = sentinels
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        assert_eq!(
            setup.url(),
            format!("redis+sentinel://{}/cachelayer", seeds.join(","))
        );
        assert_eq!(setup.master_name(), "cachelayer");
        assert_eq!(setup.primary_port(), data[0]);
        assert_eq!(setup.cli_on(data[0], ["SET", "k", "v"]), "OK");
        assert_eq!(setup.cli_on(sentinels[0], ["PING"]), "PONG");

        assert_eq!(setup.kill_primary(), data[0]);
        let (promoted, took) = setup.wait_for_failover(data[0], FAILOVER_WAIT);
        eprintln!("sentinel failover took {took:?}");
        assert_eq!(promoted, data[1]);
        assert_eq!(setup.primary_port(), data[1]);
        assert_eq!(setup.cli_on(promoted, ["SET", "k", "w"]), "OK");

        setup.restart_node(data[0]);
        assert_eq!(setup.cli_on(data[0], ["PING"]), "PONG");

        drop(setup);
        for port in data.iter().chain(&sentinels) {
            assert!(!accepts(*port), "port {port} still accepts after drop");
        }
    }

    /// With an ACL user and the default user off, the replica and the sentinels log in as
    /// that user (else the set-up would neither settle nor fail over), and so does `cli_on`.
    #[test]
    fn acl_setup_requires_auth_and_fails_over() {
        let mut setup = RedisSentinel::builder()
            .master_name("mymaster")
            .acl_user("cache", "s3cret")
            .require_auth()
            .start();
        let url = setup.url();
        assert!(
            url.starts_with("redis+sentinel://cache:s3cret@127.0.0.1:"),
            "{url}"
        );
        assert!(url.ends_with("/mymaster"), "{url}");
        let primary = setup.primary_port();
        assert_eq!(primary, setup.data_ports()[0]);
        assert_eq!(setup.cli_on(primary, ["ACL", "WHOAMI"]), "cache");
        let anonymous = redis_cli(primary, None, None)
            .arg("PING")
            .output()
            .expect("run redis-cli");
        let reply = String::from_utf8_lossy(&anonymous.stdout);
        assert!(reply.contains("NOAUTH"), "{reply}");

        let old = setup.kill_primary();
        let (promoted, _) = setup.wait_for_failover(old, FAILOVER_WAIT);
        assert_eq!(promoted, setup.data_ports()[1]);
    }

    #[test]
    fn parses_records() {
        let text = "name\n127.0.0.1:1\nip\n127.0.0.1\nport\n1\nrunid\n\nflags\nslave\n\
                    name\n127.0.0.1:2\nport\n2\nflags\nslave,s_down";
        let records = parse_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(field(&records[0], "runid"), Some(""));
        assert_eq!(field(&records[0], "flags"), Some("slave"));
        assert_eq!(field(&records[1], "port"), Some("2"));
        assert_eq!(field(&records[1], "flags"), Some("slave,s_down"));
    }
}
