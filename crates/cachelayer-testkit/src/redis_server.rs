//! `RedisServer`: one `redis-server` child process per test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use crate::tls::TestCertificates;

/// How long a server may take to log that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a free port before giving up (another process may take the port
/// between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

/// Options for a [`RedisServer`].
#[derive(Debug, Default, Clone)]
pub struct RedisServerBuilder {
    tls: bool,
    client_certs_required: bool,
    acl_users: Vec<(String, String)>,
    extra_args: Vec<String>,
    cpu: Option<usize>,
}

impl RedisServerBuilder {
    /// Also listen for TLS on a second port, with a freshly generated CA and certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
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

    /// Pass `--name value` to the server.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.extra_args.push(format!("--{name}"));
        self.extra_args.push(value.to_owned());
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
    pub fn start(self) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("cachelayer-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let certificates = self.tls.then(|| TestCertificates::generate(dir.path()));
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls_port: None,
            dir,
            certificates,
            options: self,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            server.tls_port = server.options.tls.then(free_port);
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
    dir: TempDir,
    certificates: Option<TestCertificates>,
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

    /// The plain TCP port.
    pub fn port(&self) -> u16 {
        self.port
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

    /// Start the server again on the same ports (it comes back empty).
    ///
    /// # Panics
    /// If it cannot start (for example another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.spawn() {
            panic!("redis-server did not restart on port {}: {err}", self.port);
        }
    }

    /// Run `redis-cli` against the server and return its trimmed output.
    pub fn cli<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> String {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
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
        let needle = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        self.cli(["INFO", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// Reset `INFO commandstats`.
    pub fn reset_stats(&self) {
        assert_eq!(self.cli(["CONFIG", "RESETSTAT"]), "OK");
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
        command.args(&self.options.extra_args);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| {
                format!("cannot run redis-server ({err}); install it (scripts/test does)")
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // The reader keeps draining the log after readiness so the server never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
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
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS picks it; it is released for the server).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
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
}
