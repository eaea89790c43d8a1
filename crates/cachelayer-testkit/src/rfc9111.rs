//! RFC 9111 (HTTP caching) conformance cases as data, and the driver that runs them against
//! any cache in front of a [`ScriptedOrigin`].
//!
//! A [`Case`] is a sequence of [`Step`]s on its own path (`/rfc/<name>`), so every case of a
//! run shares one cache and one origin and all run at once. A runner supplies only how a
//! [`Request`] reaches the cache (its `send`); [`run`] scripts the origin, sends each step,
//! and compares the [`Reply`] and what the origin saw with the step's [`Expect`]ation,
//! returning every [`Failure`]. Set `RFC9111_CASE=<name>` to run one case.
//!
//! This module must never know how a request reaches the cache, nor depend on the library
//! under test: the same cases judge the tower layer and the proxy binary alike.

mod cases;
mod check;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::task::JoinSet;

pub use self::cases::{
    cases, set_cookie_refuse_cases, set_cookie_store_cases, set_cookie_strip_cases,
};
use crate::origin::{Scripted, ScriptedOrigin, field, header_name};

/// The environment variable naming the one case to run.
pub const CASE_FILTER_VAR: &str = "RFC9111_CASE";
/// Longest wait for one reply: a cache that hangs fails its case rather than the run.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a step waits for a `max-age=1` response to become stale: past the second, with
/// margin for a clock read just before the response was stored.
pub const STALE: Duration = Duration::from_millis(1200);

/// Which cache a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// The tower layer and the proxy binary.
    Both,
    /// Only the tower layer (in-process).
    Layer,
    /// Only the proxy binary.
    Proxy,
}

/// The cache a run judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The tower layer, in-process.
    Layer,
    /// The proxy binary, over TCP.
    Proxy,
}

impl Applies {
    /// Whether a case with this scope runs against `target`.
    pub fn includes(self, target: Target) -> bool {
        matches!(
            (self, target),
            (Self::Both, _) | (Self::Layer, Target::Layer) | (Self::Proxy, Target::Proxy)
        )
    }
}

/// One conformance case: steps on the path `/rfc/<name>`, in order.
#[derive(Debug, Clone)]
pub struct Case {
    /// A unique name, usable in a path (lowercase letters, digits and `-`).
    pub name: &'static str,
    /// The sections it checks, e.g. `9111 §4.3.1`.
    pub rfc: &'static str,
    /// The caches it is about.
    pub applies: Applies,
    /// The origin's answers for the path, set before the first step (steps may replace it).
    pub script: Vec<Scripted>,
    /// The steps.
    pub steps: Vec<Step>,
}

impl Case {
    /// A case about both caches, with no script and no steps yet.
    pub fn new(name: &'static str, rfc: &'static str) -> Self {
        Self {
            name,
            rfc,
            applies: Applies::Both,
            script: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The path of the case named `name`.
    pub fn path_of(name: &str) -> String {
        format!("/rfc/{name}")
    }

    /// This case's path.
    pub fn path(&self) -> String {
        Self::path_of(self.name)
    }

    /// Limits the case to some caches.
    #[must_use]
    pub fn applies(mut self, applies: Applies) -> Self {
        self.applies = applies;
        self
    }

    /// The origin answers with `responses` in order (the last repeating) from the start.
    #[must_use]
    pub fn script(mut self, responses: impl IntoIterator<Item = Scripted>) -> Self {
        self.script = responses.into_iter().collect();
        self
    }

    /// Adds a step.
    #[must_use]
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }
}

/// The request of a step, without its path (always the case's).
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The method.
    pub method: Method,
    /// Header fields to send.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One request of a case and what must come of it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The request to send.
    pub request: StepRequest,
    /// When given, the origin's only answer for the path from this step on.
    pub origin: Option<Scripted>,
    /// Time to let pass first (for a stored response to become stale).
    pub pause_before: Duration,
    /// What the reply and the origin must show.
    pub expect: Expect,
}

impl Step {
    /// A step sending `method`, expecting a 200.
    pub fn new(method: Method) -> Self {
        Self {
            request: StepRequest {
                method,
                headers: Vec::new(),
            },
            origin: None,
            pause_before: Duration::ZERO,
            expect: Expect::status(200),
        }
    }

    /// A GET, expecting a 200.
    pub fn get() -> Self {
        Self::new(Method::GET)
    }

    /// A POST without a body, expecting a 200.
    pub fn post() -> Self {
        Self::new(Method::POST)
    }

    /// Adds a request header field.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request.headers.push(field(name, value));
        self
    }

    /// Lets `pause` pass before the step.
    #[must_use]
    pub fn after(mut self, pause: Duration) -> Self {
        self.pause_before = pause;
        self
    }

    /// Lets the case's `max-age=1` response become stale before the step.
    #[must_use]
    pub fn when_stale(self) -> Self {
        self.after(STALE)
    }

    /// Scripts the origin's answer from this step on.
    #[must_use]
    pub fn origin(mut self, response: Scripted) -> Self {
        self.origin = Some(response);
        self
    }

    /// What must come of the step.
    #[must_use]
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

/// A check of a whole reply that the other fields cannot express (one of several
/// acceptable answers, say); an error says what was wrong.
pub type ReplyCheck = fn(&Reply) -> Result<(), String>;

/// What a step's reply and the origin must show.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The reply's status.
    pub status: u16,
    /// The reply's exact body, when it matters.
    pub body: Option<Bytes>,
    /// Header fields the reply must carry, with a value among its values.
    pub headers: Vec<(HeaderName, String)>,
    /// Header fields the reply must not carry.
    pub absent: Vec<HeaderName>,
    /// Requests for the case's path the origin has received after the step, in all.
    pub origin_calls_after_step: Option<usize>,
    /// Header fields the origin's last request must carry, with a value among its values
    /// (the origin must have been called in this step).
    pub origin_saw: Vec<(HeaderName, String)>,
    /// Header fields the origin's last request must not carry.
    pub origin_lacked: Vec<HeaderName>,
    /// Text each of which this `Cache-Status` (all its entries) must contain.
    pub cache_status_contains: Vec<&'static str>,
    /// A check of the whole reply, instead of `status` and `body`.
    pub check: Option<ReplyCheck>,
}

impl Expect {
    /// A reply with this status; nothing else checked yet.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
            absent: Vec::new(),
            origin_calls_after_step: None,
            origin_saw: Vec::new(),
            origin_lacked: Vec::new(),
            cache_status_contains: Vec::new(),
            check: None,
        }
    }

    /// A 200 served from the cache (`X-Cache: HIT`), the origin called `calls` times in all.
    pub fn hit(calls: usize) -> Self {
        Self::status(200).header("x-cache", "HIT").calls(calls)
    }

    /// This exact body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The reply carries `name` with `value` among its values.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((field(name, value).0, value.to_owned()));
        self
    }

    /// The reply does not carry `name`.
    #[must_use]
    pub fn absent(mut self, name: &str) -> Self {
        self.absent.push(header_name(name));
        self
    }

    /// The origin has received `calls` requests for the case's path after this step.
    #[must_use]
    pub fn calls(mut self, calls: usize) -> Self {
        self.origin_calls_after_step = Some(calls);
        self
    }

    /// The origin was called in this step, with `name: value` in the request.
    #[must_use]
    pub fn origin_saw(mut self, name: &str, value: &str) -> Self {
        self.origin_saw
            .push((field(name, value).0, value.to_owned()));
        self
    }

    /// The origin's last request did not carry `name`.
    #[must_use]
    pub fn origin_lacked(mut self, name: &str) -> Self {
        self.origin_lacked.push(header_name(name));
        self
    }

    /// `Cache-Status` contains `text`.
    #[must_use]
    pub fn cache_status(mut self, text: &'static str) -> Self {
        self.cache_status_contains.push(text);
        self
    }

    /// `check` judges the whole reply instead of `status` and `body`.
    #[must_use]
    pub fn check(mut self, check: ReplyCheck) -> Self {
        self.check = Some(check);
        self
    }
}

/// A request for the runner's `send`: the step's method and header fields, on the case's
/// path. The runner adds whatever its transport needs (a `Host`, say).
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path (and query), e.g. `/rfc/must-revalidate`.
    pub path: String,
    /// Header fields, in order, a name possibly repeated.
    pub headers: HeaderMap,
}

/// What the cache answered, as the runner's `send` received it (body complete).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The header fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// A step that did not go as expected. The case's later steps were not run: they build on
/// this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The case's name.
    pub case: &'static str,
    /// The sections the case checks.
    pub rfc: &'static str,
    /// The failed step's index, from 0.
    pub step: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) step {}: {}",
            self.case, self.rfc, self.step, self.message
        )
    }
}

/// Panics listing every failure, if there are any.
///
/// # Panics
/// When `failures` is not empty.
pub fn assert_no_failures(failures: &[Failure]) {
    if failures.is_empty() {
        return;
    }
    let list: Vec<String> = failures.iter().map(|f| format!("- {f}")).collect();
    panic!(
        "{} RFC 9111 case(s) failed (rerun one with {CASE_FILTER_VAR}=<name>):\n{}",
        failures.len(),
        list.join("\n")
    );
}

/// Runs the `cases` about `target` (only the one named by `RFC9111_CASE`, when set), all at
/// once, each on its own path of `origin`, sending requests with `send`; returns every
/// failure, sorted by case name.
///
/// `origin` must be the one behind the cache `send` reaches.
pub async fn run<F, Fut>(
    target: Target,
    origin: &ScriptedOrigin,
    cases: Vec<Case>,
    send: F,
) -> Vec<Failure>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let send = Arc::new(send);
    let only = std::env::var(CASE_FILTER_VAR).ok();
    let mut running = JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for case in selected(cases, target, only.as_deref()) {
        let (name, rfc) = (case.name, case.rfc);
        let handle = running.spawn(run_case(case, origin.clone(), Arc::clone(&send)));
        names.insert(handle.id(), (name, rfc));
    }
    let mut failures = Vec::new();
    while let Some(done) = running.join_next_with_id().await {
        match done {
            Ok((_, failure)) => failures.extend(failure),
            // A panic in `send` (say, a connection refused) fails its case, not the run.
            Err(error) => {
                let (case, rfc) = names.get(&error.id()).copied().unwrap_or(("?", "?"));
                failures.push(Failure {
                    case,
                    rfc,
                    step: 0,
                    message: format!("the case's task failed: {error}"),
                });
            }
        }
    }
    failures.sort_by_key(|f| f.case);
    failures
}

/// The cases to run: those about `target`, and only the one named `only`, when given.
fn selected(cases: Vec<Case>, target: Target, only: Option<&str>) -> Vec<Case> {
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "two cases named {}", case.name);
    }
    cases
        .into_iter()
        .filter(|case| case.applies.includes(target))
        .filter(|case| only.is_none_or(|name| name == case.name))
        .collect()
}

/// Runs one case's steps in order, stopping at the first that fails.
async fn run_case<F, Fut>(case: Case, origin: ScriptedOrigin, send: Arc<F>) -> Option<Failure>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    let path = case.path();
    if !case.script.is_empty() {
        origin.script(&path, case.script.iter().cloned());
    }
    for (index, step) in case.steps.iter().enumerate() {
        if let Err(message) = run_step(step, &path, &origin, send.as_ref()).await {
            return Some(Failure {
                case: case.name,
                rfc: case.rfc,
                step: index,
                message,
            });
        }
    }
    None
}

/// Sends one step's request and checks what came of it.
async fn run_step<F, Fut>(
    step: &Step,
    path: &str,
    origin: &ScriptedOrigin,
    send: &F,
) -> Result<(), String>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    if !step.pause_before.is_zero() {
        // Time passing is what the step is about (staleness), not synchronisation.
        tokio::time::sleep(step.pause_before).await;
    }
    if let Some(response) = &step.origin {
        origin.script(path, [response.clone()]);
    }
    let calls_before = origin.calls(path);
    let request = Request {
        method: step.request.method.clone(),
        path: path.to_owned(),
        headers: step.request.headers.iter().cloned().collect(),
    };
    let reply = tokio::time::timeout(REPLY_TIMEOUT, send(request))
        .await
        .map_err(|_| format!("no reply within {REPLY_TIMEOUT:?}"))?;
    let seen = check::OriginSeen {
        calls_before,
        calls: origin.calls(path),
        last: origin.last_request(path),
    };
    check::step(&step.expect, &reply, &seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in case has a unique name usable in a path, and at least one step.
    #[test]
    fn cases_are_well_formed() {
        let all: Vec<Case> = [
            cases(),
            set_cookie_refuse_cases(),
            set_cookie_strip_cases(),
            set_cookie_store_cases(),
        ]
        .concat();
        let mut names = std::collections::HashSet::new();
        for case in &all {
            assert!(names.insert(case.name), "two cases named {}", case.name);
            assert!(!case.steps.is_empty(), "{} has no steps", case.name);
            assert!(
                case.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{} is not a path segment",
                case.name
            );
        }
    }

    /// The filter keeps the named case, and scope keeps cases off the other cache.
    #[test]
    fn selection_follows_target_and_filter() {
        let all = vec![
            Case::new("a", "x"),
            Case::new("b", "x").applies(Applies::Proxy),
        ];
        let names = |cases: Vec<Case>| cases.iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(selected(all.clone(), Target::Layer, None)), ["a"]);
        assert_eq!(
            names(selected(all.clone(), Target::Proxy, None)),
            ["a", "b"]
        );
        assert_eq!(names(selected(all, Target::Proxy, Some("b"))), ["b"]);
    }
}
