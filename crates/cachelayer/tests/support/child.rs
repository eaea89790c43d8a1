//! A child process of a multi-process test: the test binary itself, re-run as one of its
//! ignored entry-point tests, talked to over stdin and stdout, and killed when dropped so a
//! failing test leaves no process behind.

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A running child: its stdin for requests, its stdout read line by line.
pub struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    /// Re-run this test binary as its ignored test `entry`, with `env` set.
    pub fn spawn(entry: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([entry, "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self { child, lines }
    }

    /// Reads the child's output until a line holding `marker`; returns the line from the
    /// marker on (the test harness may print its own text before it on the same line).
    pub fn line_from(&mut self, marker: &str) -> String {
        loop {
            let line = self
                .lines
                .next()
                .expect("child exited before reporting")
                .expect("child output");
            if let Some(at) = line.find(marker) {
                return line[at..].to_owned();
            }
        }
    }

    /// Send the child one line on its stdin.
    pub fn ask(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").expect("write to child");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
