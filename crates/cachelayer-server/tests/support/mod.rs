//! Test support: the real `cachelayer` binary as a child process, on a free port, with its
//! JSON logs captured, and the databases it runs against (an SQLite file in a temporary
//! directory, or a fresh database on the local PostgreSQL). It must never leave a process or
//! a database behind: everything it starts is stopped or dropped when its handle is.

#![allow(dead_code, unreachable_pub)] // Each test file uses part of this module.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Longest wait for anything the server is expected to do.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Log lines of a server, shared with the thread reading its stdout.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<Value>>,
    grew: Condvar,
}

/// A running `cachelayer serve`.
pub struct Server {
    child: Child,
    logs: Arc<Logs>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The admin listener's `http://127.0.0.1:PORT` (proxy only).
    pub admin: String,
}

/// A database for a server.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The admin URL and the name of a PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// An SQLite file in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("catalogue.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A new, empty database on the local PostgreSQL (`CACHELAYER_TEST_POSTGRES_URL`, by
    /// default the trust-auth server on 127.0.0.1:5432), dropped afterwards. Fails the test
    /// when PostgreSQL is not reachable: `scripts/test` makes sure it is.
    pub async fn postgres() -> Self {
        let admin_url = std::env::var("CACHELAYER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("cachelayer_test_{}", fastrand::u64(..));
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .unwrap_or_else(|err| {
                panic!("PostgreSQL at {admin_url} is not reachable ({err}); scripts/test starts it")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
            postgres: Some((admin_url, name)),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Dropping runs outside the test's runtime: psql is the simplest synchronous client.
        let _ = Command::new("psql")
            .args([
                admin_url.as_str(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Server {
    /// Start `cachelayer serve` on a free port with `args` after the defaults (JSON logs,
    /// 50 sample products, a short shutdown timeout); returns once it listens.
    pub fn start(database: &TestDatabase, args: &[&str]) -> Self {
        let mut server = Self::spawn(database, args);
        server.wait_until_listening();
        server
    }

    /// Start `cachelayer serve` without waiting for it ([`wait_until_listening`] does).
    ///
    /// [`wait_until_listening`]: Self::wait_until_listening
    pub fn spawn(database: &TestDatabase, args: &[&str]) -> Self {
        let mut all = vec!["serve", "--database-url", &database.url, "--seed", "50"];
        all.extend_from_slice(args);
        Self::spawn_command(&all)
    }

    /// Start `cachelayer serve` as [`start`] does, with the process's open-file limit (soft
    /// and hard) set to `open_files`, as a service manager would.
    ///
    /// [`start`]: Self::start
    pub fn start_with_open_files(database: &TestDatabase, open_files: u64, args: &[&str]) -> Self {
        let mut all = vec!["serve", "--database-url", &database.url, "--seed", "50"];
        all.extend_from_slice(args);
        let mut server = Self::spawn_program(Some(open_files), &[], &all);
        server.wait_until_listening();
        server
    }

    /// Start `cachelayer serve` as [`start`] does, with `env` set for the process (say, to
    /// run it under libfaketime).
    ///
    /// [`start`]: Self::start
    pub fn start_with_env(database: &TestDatabase, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut all = vec!["serve", "--database-url", &database.url, "--seed", "50"];
        all.extend_from_slice(args);
        let mut server = Self::spawn_program(None, env, &all);
        server.wait_until_listening();
        server
    }

    /// Start `cachelayer proxy` in front of `upstream` on free ports (clients and admin),
    /// with `args` after the defaults; returns once it listens.
    pub fn proxy(upstream: &str, args: &[&str]) -> Self {
        let mut all = vec![
            "proxy",
            "--upstream",
            upstream,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        let mut server = Self::spawn_command(&all);
        server.wait_until_listening();
        server
    }

    /// Start the binary with `args` (a subcommand first), JSON logs, a free port, two
    /// workers and a short shutdown timeout.
    fn spawn_command(args: &[&str]) -> Self {
        Self::spawn_program(None, &[], args)
    }

    /// [`spawn_command`](Self::spawn_command), under `prlimit` when `open_files` is given
    /// (it runs the binary in its own place, so the child's PID is the server's).
    fn spawn_program(open_files: Option<u64>, env: &[(&str, &str)], args: &[&str]) -> Self {
        let binary = env!("CARGO_BIN_EXE_cachelayer");
        let mut command = match open_files {
            None => Command::new(binary),
            Some(files) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={files}:{files}"))
                    .args(["--", binary]);
                prlimit
            }
        };
        command
            .args(&args[..1])
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--shutdown-timeout", "10s", "--workers", "2"])
            .args(&args[1..])
            // The tests set everything they rely on; the environment must not.
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CACHELAYER_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start the cachelayer binary");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Logs::default());
        let reader_logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value =
                    serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                let mut lines = reader_logs.lines.lock().expect("logs");
                lines.push(value);
                reader_logs.grew.notify_all();
            }
            // Wake waiters at EOF too, so they stop waiting for a dead server.
            let _lines = reader_logs.lines.lock().expect("logs");
            reader_logs.grew.notify_all();
        });
        Self {
            child,
            logs,
            base: String::new(),
            admin: String::new(),
        }
    }

    /// Wait for the "listening" log line, and take the address from it.
    pub fn wait_until_listening(&mut self) {
        let listening = self.wait_for_log("listening");
        let address = listening["address"].as_str().expect("address").to_owned();
        self.base = format!("http://{address}");
        if let Some(admin) = listening["admin"].as_str() {
            self.admin = format!("http://{admin}");
        }
    }

    /// The first log line with this message, waiting for it.
    ///
    /// # Panics
    /// If it does not come within [`PATIENCE`] or the server exits first.
    pub fn wait_for_log(&mut self, message: &str) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut lines = self.logs.lines.lock().expect("logs");
        loop {
            if let Some(line) = lines.iter().find(|l| l["message"] == message) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}) before logging {message:?}: {lines:#?}");
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no {message:?} log line within {PATIENCE:?}: {lines:#?}"
            );
            // Woken by each new line; the timeout only bounds checks of the exit status.
            lines = self
                .logs
                .grew
                .wait_timeout(lines, left.min(Duration::from_millis(200)))
                .expect("logs")
                .0;
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lines.lock().expect("logs").clone()
    }

    /// Send SIGTERM, as an orchestrator stopping the instance would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the admin listener (proxy only).
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that ignores proxy settings of the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// A GET of `path` on `server`: status, `X-Cache` and the JSON body (`null` if none).
pub async fn get(server: &Server, path: &str) -> (reqwest::StatusCode, String, Value) {
    let response = client().get(server.url(path)).send().await.expect("GET");
    let status = response.status();
    let cache = x_cache(&response);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

/// A GET of `path` through `proxy` as `api.example`: status, `X-Cache` and body.
pub async fn get_via(proxy: &Server, path: &str) -> (reqwest::StatusCode, String, String) {
    let response = client()
        .get(proxy.url(path))
        .header("host", "api.example")
        .send()
        .await
        .expect("GET");
    let status = response.status();
    let cache = x_cache(&response);
    (status, cache, response.text().await.expect("text"))
}

/// A response's `X-Cache`.
pub fn x_cache(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// The server's `/metrics` text (on the admin listener for the proxy).
pub async fn metrics_text(server: &Server) -> String {
    let url = if server.admin.is_empty() {
        server.url("/metrics")
    } else {
        server.admin_url("/metrics")
    };
    client()
        .get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The metric families of a `/metrics` text that have a `# TYPE` line but no `# HELP` line.
pub fn undescribed(text: &str) -> Vec<String> {
    let described: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .filter(|name| !described.contains(name))
        .map(str::to_owned)
        .collect()
}

/// The value of a Prometheus counter (summed over series whose labels contain `labels`).
pub async fn counter(server: &Server, name: &str, labels: &str) -> f64 {
    let text = metrics_text(server).await;
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The value of counter or gauge `name` (as [`counter`] sums it) once `reached` holds,
/// polling `/metrics`: the server is another process, and its metrics are the only sign of
/// what it did. After [`PATIENCE`], the value then, whatever it is.
pub async fn metric_once(
    server: &Server,
    name: &str,
    labels: &str,
    reached: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = counter(server, name, labels).await;
        if reached(value) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the binary with `args` (a subcommand first) and a clean environment, expecting it
/// to refuse them at start (exit status 2); its standard error.
pub fn refused_at_start(args: &[&str]) -> String {
    let exited = run_to_exit(args);
    assert_eq!(exited.status.code(), Some(2), "{args:?}");
    exited.stderr
}

/// libfaketime's preload library, which `scripts/test` installs (Debian's `faketime`).
pub fn libfaketime() -> &'static str {
    const PATHS: [&str; 2] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ];
    PATHS
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("libfaketime is not installed; scripts/test installs Debian's faketime")
}

/// What a run of the binary that ended by itself wrote, and how it ended.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run the binary with `args` (a subcommand first) and a clean environment until it exits,
/// for runs expected to end by themselves (a refused start); what it wrote.
///
/// # Panics
/// If it is still running after [`PATIENCE`] (it is killed first).
pub fn run_to_exit(args: &[&str]) -> Exited {
    let child = Command::new(env!("CARGO_BIN_EXE_cachelayer"))
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("CACHELAYER_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cachelayer binary");
    let pid = child.id().to_string();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(child.wait_with_output()));
    let Ok(output) = exit.recv_timeout(PATIENCE) else {
        // Still running, so not yet reaped: the PID is still the child's.
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("{args:?} still running after {PATIENCE:?}");
    };
    let output = output.expect("wait for the cachelayer binary");
    Exited {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
