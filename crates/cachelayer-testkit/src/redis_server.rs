//! `RedisServer`: one `redis-server` child process per test, and the helpers the cluster and
//! sentinel set-ups share with it (spawning a Redis process and waiting for its own readiness
//! log line, running `redis-cli` with a deadline).
//!
//! It must never touch a Redis it did not start (such as a shared one on 6379): every port is
//! picked free by the OS, and readiness is read from the server's log, never guessed by sleeping.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use crate::tls::TestCertificates;

/// How long a server may take to log that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a free port before giving up (another process may take the port
/// between our probe and the server's bind).
pub(crate) const START_ATTEMPTS: usize = 5;

/// The log line a `redis-server` (not a sentinel) prints once it accepts connections.
pub(crate) const READY_LINE: &str = "Ready to accept connections";

/// Options for a [`RedisServer`].
#[derive(Debug, Default, Clone)]
pub struct RedisServerBuilder {
    tls: bool,
    tls_only: bool,
    certificates: Option<TestCertificates>,
    client_certs_required: bool,
    acl_users: Vec<(String, String)>,
    require_auth: bool,
    cluster_node_timeout: Option<Duration>,
    extra_args: Vec<String>,
    cpu: Option<usize>,
}

impl RedisServerBuilder {
    /// Also listen for TLS on a second port, with a freshly generated CA and certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Like [`tls`](Self::tls), but with these certificates instead of fresh ones, so that
    /// several servers (say, the nodes of a cluster) trust one CA.
    pub fn tls_with(mut self, certificates: TestCertificates) -> Self {
        self.tls = true;
        self.certificates = Some(certificates);
        self
    }

    /// Implies [`tls`](Self::tls), and listen on TLS only: nothing listens on plain TCP
    /// (`--port 0`), [`RedisServer::port`] is then 0 and [`RedisServer::cli`] speaks TLS.
    pub fn tls_only(mut self) -> Self {
        self.tls = true;
        self.tls_only = true;
        self
    }

    /// With [`tls`](Self::tls): refuse TLS clients without a certificate signed by the CA
    /// (mutual TLS).
    pub fn require_client_certs(mut self) -> Self {
        self.client_certs_required = true;
        self
    }

    /// Add an ACL user with full access and this password.
    pub fn acl_user(mut self, name: &str, password: &str) -> Self {
        self.acl_users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Turn the `default` user off, so every client must authenticate as an
    /// [`acl_user`](Self::acl_user); [`RedisServer::cli`] then authenticates as the first one.
    ///
    /// [`start`](Self::start) panics if no ACL user was added.
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// Run as a Redis Cluster node (`--cluster-enabled yes`, `nodes.conf` in the server's
    /// directory, this node timeout) with its cluster bus on a second free port, picked
    /// explicitly at each start attempt ([`RedisServer::cluster_port`]): the default,
    /// port + 10000, may be taken or above 65535.
    pub fn cluster(mut self, node_timeout: Duration) -> Self {
        self.cluster_node_timeout = Some(node_timeout);
        self
    }

    /// Pass `--name value` to the server.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.extra_args.push(format!("--{name}"));
        self.extra_args.push(value.to_owned());
        self
    }

    /// Pass `--name value1 value2 ...`, for options that take several words (such as
    /// `replicaof HOST PORT`): each word is its own argument, as `redis-server` quotes each.
    pub fn option(mut self, name: &str, values: &[&str]) -> Self {
        self.extra_args.push(format!("--{name}"));
        self.extra_args
            .extend(values.iter().map(|value| (*value).to_owned()));
        self
    }

    /// Pin the server to one CPU core (with `taskset`), so benchmarks can keep it off the
    /// core the client runs on.
    pub fn pin_to_cpu(mut self, core: usize) -> Self {
        self.cpu = Some(core);
        self
    }

    /// Start the server and wait until it accepts connections.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not become ready (a broken test environment:
    /// `scripts/test` installs it).
    pub fn start(mut self) -> RedisServer {
        assert!(
            !self.require_auth || !self.acl_users.is_empty(),
            "require_auth() needs an acl_user(): nobody could log in"
        );
        let dir = tempfile::Builder::new()
            .prefix("cachelayer-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let certificates = match self.certificates.take() {
            Some(certificates) => Some(certificates),
            None => self.tls.then(|| TestCertificates::generate(dir.path())),
        };
        let client_cert_files = match (&certificates, self.tls_only && self.client_certs_required) {
            (Some(certs), true) => Some(write_client_cert_files(certs, dir.path())),
            _ => None,
        };
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls_port: None,
            cluster_port: None,
            dir,
            certificates,
            client_cert_files,
            options: self,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let wanted = usize::from(!server.options.tls_only)
                + usize::from(server.options.tls)
                + usize::from(server.options.cluster_node_timeout.is_some());
            let mut ports = free_ports(wanted).into_iter();
            server.port = if server.options.tls_only {
                0
            } else {
                ports.next().expect("a plain port")
            };
            server.tls_port = server
                .options
                .tls
                .then(|| ports.next().expect("a TLS port"));
            server.cluster_port = server
                .options
                .cluster_node_timeout
                .map(|_| ports.next().expect("a cluster bus port"));
            if server.options.cluster_node_timeout.is_some() {
                // A failed attempt may have left a node identity naming other ports.
                let _ = std::fs::remove_file(server.dir.path().join("nodes.conf"));
            }
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_error}");
    }
}

/// A `redis-server` process owned by a test; killed on drop.
///
/// ```
/// use cachelayer_testkit::RedisServer;
///
/// let server = RedisServer::start();
/// assert_eq!(server.cli(["PING"]), "PONG");
/// assert!(server.url().starts_with("redis://127.0.0.1:"));
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    cluster_port: Option<u16>,
    dir: TempDir,
    certificates: Option<TestCertificates>,
    /// Client certificate and key files, for `cli` on a TLS-only server requiring them.
    client_cert_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    options: RedisServerBuilder,
}

impl RedisServer {
    /// Options for a server.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Start a plain server on a free port.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// The plain TCP port (0 when started [`tls_only`](RedisServerBuilder::tls_only)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port, when started with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The port clients reach: the TLS port when started
    /// [`tls_only`](RedisServerBuilder::tls_only), else the plain one.
    pub fn client_port(&self) -> u16 {
        match (self.options.tls_only, self.tls_port) {
            (true, Some(tls_port)) => tls_port,
            _ => self.port,
        }
    }

    /// The cluster bus port, when started as a [`cluster`](RedisServerBuilder::cluster) node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// The directory the server runs in (its `--dir`; a cluster node keeps `nodes.conf`
    /// there). Removed when the server is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (not [`stop`](Self::stop)ped); a
    /// [`pause`](Self::pause)d server counts as running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://localhost:TLS_PORT`, when started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://localhost:{port}"))
    }

    /// The CA that signed the server's certificate, when started with TLS.
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.certificates.as_ref()
    }

    /// Kill the server (as a crash would). [`restart`](Self::restart) binds the same port
    /// again; nothing reserves it meanwhile, so another process could take it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open and nothing is answered, as with a
    /// hung or overloaded Redis. Its data is kept; [`resume`](Self::resume) thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else {
            panic!("redis-server on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server failed");
    }

    /// Start the server again on the same ports and in the same directory (it comes back
    /// empty, as nothing is persisted; a cluster node keeps its `nodes.conf`).
    ///
    /// # Panics
    /// If it cannot start (for example another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.spawn() {
            panic!("redis-server did not restart on port {}: {err}", self.port);
        }
    }

    /// Run `redis-cli` against the server and return its trimmed output. It speaks TLS to a
    /// [`tls_only`](RedisServerBuilder::tls_only) server and authenticates as the first ACL
    /// user when the server [`require_auth`](RedisServerBuilder::require_auth)s.
    pub fn cli<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> String {
        let output = self
            .cli_command()
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(
            output.status.success(),
            "redis-cli failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Write raw bytes under `key`, bypassing every client library.
    pub fn set_raw(&self, key: &str, value: &[u8]) {
        let reply = self.cli([OsStr::new("SET"), OsStr::new(key), OsStr::from_bytes(value)]);
        assert_eq!(reply, "OK");
    }

    /// How many times the server has executed `command` since start or the last
    /// [`reset_stats`](Self::reset_stats), from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        command_calls_in(&self.cli(["INFO", "commandstats"]), command)
    }

    /// Reset `INFO commandstats`.
    pub fn reset_stats(&self) {
        assert_eq!(self.cli(["CONFIG", "RESETSTAT"]), "OK");
    }

    /// `redis-cli` aimed at this server, as [`cli`](Self::cli) runs it, without arguments.
    fn cli_command(&self) -> Command {
        let tls = self
            .options
            .tls_only
            .then_some(self.certificates.as_ref())
            .flatten()
            .map(|certs| CliTls {
                ca_cert_file: &certs.ca_cert_file,
                client_cert: self
                    .client_cert_files
                    .as_ref()
                    .map(|(cert, key)| (cert.as_path(), key.as_path())),
            });
        let auth = self
            .options
            .require_auth
            .then(|| self.options.acl_users.first())
            .flatten()
            .map(|(name, password)| (name.as_str(), password.as_str()));
        redis_cli(self.client_port(), tls, auth)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = match self.options.cpu {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &core.to_string(), "redis-server"]);
                taskset
            }
            None => Command::new("redis-server"),
        };
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""]);
        if let (Some(node_timeout), Some(cluster_port)) =
            (self.options.cluster_node_timeout, self.cluster_port)
        {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .arg("--cluster-node-timeout")
                .arg(node_timeout.as_millis().max(1).to_string())
                .arg("--cluster-port")
                .arg(cluster_port.to_string());
        }
        if let (Some(tls_port), Some(certs)) = (self.tls_port, &self.certificates) {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&certs.server_cert_file)
                .arg("--tls-key-file")
                .arg(&certs.server_key_file)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca_cert_file)
                .arg("--tls-auth-clients")
                .arg(if self.options.client_certs_required {
                    "yes"
                } else {
                    "no"
                });
        }
        for (name, password) in &self.options.acl_users {
            // Each word is its own argument: redis-server joins them into one config line.
            command
                .arg("--user")
                .args([name, "on", &format!(">{password}"), "~*", "&*", "+@all"]);
        }
        if self.options.require_auth {
            // A configured `default` user is reset first, so this leaves it off, with no rights.
            command.args(["--user", "default", "off"]);
        }
        command.args(&self.options.extra_args);
        self.child = Some(spawn_until_ready(command, READY_LINE)?);
        Ok(())
    }
}

/// Start a Redis process whose log goes to stdout and wait until it prints `ready_line`.
///
/// A reader thread keeps draining the log after readiness so the process never blocks on a
/// full pipe. On failure the process is gone and the error holds the end of its log.
pub(crate) fn spawn_until_ready(mut command: Command, ready_line: &str) -> Result<Child, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| {
            format!("cannot run redis-server ({err}); install it (scripts/test does)")
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    let ready_line = ready_line.to_owned();
    std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&ready_line) {
                let _ = ready_tx.send(Ok(()));
            } else {
                log.push(line);
                if log.len() > 50 {
                    log.remove(0);
                }
            }
        }
        let _ = ready_tx.send(Err(log.join("\n")));
    });
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(())) => Ok(child),
        Ok(Err(log)) => {
            let _ = child.wait();
            Err(format!("redis-server exited before it was ready:\n{log}"))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("redis-server was not ready in time".to_owned())
        }
    }
}

/// How `redis-cli` speaks TLS to a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CliTls<'a> {
    /// The CA to verify the server with.
    pub(crate) ca_cert_file: &'a Path,
    /// A client certificate and key file, for servers that require one.
    pub(crate) client_cert: Option<(&'a Path, &'a Path)>,
}

/// `redis-cli` against `127.0.0.1:port` (TLS needs no host name: the test certificates name
/// `127.0.0.1` too), optionally over TLS and authenticated as an ACL user.
pub(crate) fn redis_cli(port: u16, tls: Option<CliTls<'_>>, auth: Option<(&str, &str)>) -> Command {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    redis_cli_connection_args(&mut command, tls, auth);
    command
}

/// The TLS and authentication arguments of [`redis_cli`], for a `redis-cli` invocation that
/// names its servers otherwise (`--cluster create`).
pub(crate) fn redis_cli_connection_args(
    command: &mut Command,
    tls: Option<CliTls<'_>>,
    auth: Option<(&str, &str)>,
) {
    if let Some(tls) = tls {
        command.arg("--tls").arg("--cacert").arg(tls.ca_cert_file);
        if let Some((cert, key)) = tls.client_cert {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    if let Some((user, password)) = auth {
        command
            .args(["--user", user, "--pass", password])
            .arg("--no-auth-warning");
    }
}

/// Run `command` (feeding it `input` on stdin, if any) and return its trimmed stdout; kill it
/// if it has not finished within `timeout` (a paused server accepts connections but never
/// answers).
///
/// Errors carry stderr when the command failed, or say that it timed out. A Redis error reply
/// is not a failure here: `redis-cli` prints it on stdout and exits 0.
pub(crate) fn run_within(
    mut command: Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run {command:?}: {err}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small inputs fit the pipe's buffer; the child reads them when it gets to them.
        stdin
            .write_all(input.as_bytes())
            .map_err(|err| format!("cannot write to {command:?}: {err}"))?;
    }
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(timeout) {
        Ok(output) => output.map_err(|err| format!("cannot wait for {command:?}: {err}"))?,
        Err(_) => {
            // Our own child, by its id; the waiting thread reaps it.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = done_rx.recv();
            return Err(format!("{command:?} did not finish within {timeout:?}"));
        }
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The `calls=` count of `command` in the output of `INFO commandstats` (0 when absent).
pub(crate) fn command_calls_in(info: &str, command: &str) -> u64 {
    let needle = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
    info.lines()
        .find_map(|line| line.strip_prefix(&needle))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// `user:password@`, percent-encoded for a URL's userinfo.
pub(crate) fn url_userinfo(user: &str, password: &str) -> String {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|byte| {
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    char::from(byte).to_string()
                } else {
                    format!("%{byte:02X}")
                }
            })
            .collect()
    }
    format!("{}:{}@", encode(user), encode(password))
}

/// Write the client certificate and key of `certs` into `dir`, for `redis-cli --cert/--key`.
fn write_client_cert_files(
    certs: &TestCertificates,
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("client.crt");
    let key = dir.join("client.key");
    std::fs::write(&cert, &certs.client_cert_pem).expect("write client certificate");
    std::fs::write(&key, &certs.client_key_pem).expect("write client key");
    (cert, key)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS picks it; it is released for the server).
pub(crate) fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct ports that were free a moment ago: all are held at once while the OS
/// picks them, so none repeats; all are released for the server.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("local address of a bound port")
                .port()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn accepts(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// The server answers once started, and nothing listens on its port after drop.
    #[test]
    fn starts_answers_and_is_gone_after_drop() {
        let server = RedisServer::start();
        let port = server.port();
        assert_ne!(port, 6379, "never the shared Redis");
        assert_eq!(server.cli(["PING"]), "PONG");
        drop(server);
        assert!(!accepts(port));
    }

    /// Stop kills the process; restart brings it back, empty, on the same port.
    #[test]
    fn restart_reuses_the_port() {
        let mut server = RedisServer::start();
        server.set_raw("k", b"v");
        server.stop();
        assert!(!accepts(server.port()));
        server.restart();
        assert_eq!(server.cli(["EXISTS", "k"]), "0");
        assert_eq!(server.cli(["PING"]), "PONG");
    }

    /// Command statistics count what the server executed, and reset.
    #[test]
    fn counts_commands() {
        let server = RedisServer::start();
        server.reset_stats();
        server.cli(["GET", "a"]);
        server.cli(["GET", "b"]);
        assert_eq!(server.command_calls("get"), 2);
        assert_eq!(server.command_calls("mget"), 0);
    }

    /// With TLS, certificates are written and the TLS URL names its own port.
    #[test]
    fn tls_server_has_certificates() {
        let server = RedisServer::builder().tls().start();
        let certs = server.certificates().expect("certificates");
        assert!(certs.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certs.server_key_file.exists());
        let url = server.tls_url().expect("tls url");
        assert!(!url.ends_with(&format!(":{}", server.port())));
    }

    /// With the default user off, only the ACL user gets in; `cli` logs in as that user.
    #[test]
    fn require_auth_turns_the_default_user_off() {
        let server = RedisServer::builder()
            .acl_user("cache", "s3cret")
            .require_auth()
            .start();
        assert_eq!(server.cli(["PING"]), "PONG");
        assert_eq!(server.cli(["ACL", "WHOAMI"]), "cache");
        let anonymous = redis_cli(server.port(), None, None)
            .arg("PING")
            .output()
            .expect("run redis-cli");
        let reply = String::from_utf8_lossy(&anonymous.stdout);
        assert!(reply.contains("NOAUTH"), "{reply}");
    }

    /// TLS only: nothing on plain TCP, and `cli` speaks TLS to the TLS port.
    #[test]
    fn tls_only_listens_on_tls_alone() {
        let server = RedisServer::builder().tls_only().start();
        assert_eq!(server.port(), 0);
        let tls_port = server.tls_port().expect("tls port");
        assert_eq!(server.client_port(), tls_port);
        assert_eq!(server.cli(["PING"]), "PONG");
        let mut plain = redis_cli(tls_port, None, None);
        plain.arg("PING");
        let plain = run_within(plain, None, Duration::from_secs(5));
        assert!(plain.map_or(true, |reply| reply != "PONG"));
    }

    /// `run_within` kills a command that outlives its deadline.
    #[test]
    fn run_within_kills_what_hangs() {
        let server = RedisServer::start();
        server.pause();
        let started = std::time::Instant::now();
        let mut ping = redis_cli(server.port(), None, None);
        ping.arg("PING");
        let result = run_within(ping, None, Duration::from_millis(300));
        server.resume();
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(server.cli(["PING"]), "PONG");
    }

    /// Cluster mode: a bus port of its own, and `nodes.conf` kept across a restart.
    #[test]
    fn cluster_node_has_its_own_bus_port() {
        let mut server = RedisServer::builder()
            .cluster(Duration::from_millis(1000))
            .start();
        let bus = server.cluster_port().expect("bus port");
        assert_ne!(bus, server.port());
        assert!(accepts(bus));
        let id = server.cli(["CLUSTER", "MYID"]);
        server.restart();
        assert_eq!(server.cli(["CLUSTER", "MYID"]), id);
        assert_eq!(server.cluster_port(), Some(bus));
    }
}
