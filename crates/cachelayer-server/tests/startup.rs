//! End-to-end tests of start-up refusals: the real binary, refused at start for a setting it
//! could check or a port it could not take, before it touches a database or starts anything.
//! Each run is expected to end by itself; none may wait on a sleep, only on the process's
//! exit (within the support module's patience).

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use support::{Exited, TestDatabase, run_to_exit};

/// A port held by the test for as long as the returned listener lives.
fn taken_port() -> (TcpListener, SocketAddr) {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let address = holder.local_addr().expect("held address");
    (holder, address)
}

/// The SQLite file a test database names (not created by the test).
fn sqlite_path(database: &TestDatabase) -> PathBuf {
    let path = database
        .url
        .strip_prefix("sqlite://")
        .expect("an SQLite URL");
    PathBuf::from(path)
}

/// Everything the run wrote, standard error first.
fn said(run: &Exited) -> String {
    format!("{}{}", run.stderr, run.stdout)
}

/// The one line of what the run wrote that names `flag`; fails if it is said more than once
/// (a refusal is reported once, on standard error or in the log) or not at all.
fn the_line_naming(run: &Exited, flag: &str) -> String {
    let all = said(run);
    let lines: Vec<&str> = all.lines().filter(|line| line.contains(flag)).collect();
    assert_eq!(lines.len(), 1, "{flag} said once: {all}");
    lines[0].to_owned()
}

/// A malformed `--redis-url` is refused, naming it, before the database file is created:
/// start-up leaves no migrated, seeded database behind for a setting it could have checked.
#[test]
fn a_malformed_redis_url_is_refused_before_the_database_is_created() {
    for url in ["redis://[::1", "redis://cache:notaport", "http://x"] {
        let database = TestDatabase::sqlite();
        let run = run_to_exit(&[
            "serve",
            "--database-url",
            &database.url,
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            url,
        ]);
        assert_eq!(run.status.code(), Some(2), "{url}: {}", said(&run));
        assert!(
            run.stderr.contains("--redis-url (REDIS_URL)"),
            "{url}: {}",
            said(&run)
        );
        the_line_naming(&run, "--redis-url");
        assert!(
            !sqlite_path(&database).exists(),
            "{url}: the database was created: {}",
            said(&run)
        );
    }
}

/// A `--listen` port already taken fails naming the flag, the address and the OS's reason,
/// before the database file is created.
#[test]
fn a_taken_listen_port_fails_before_the_database_is_created() {
    let (_holder, address) = taken_port();
    let database = TestDatabase::sqlite();
    let listen = address.to_string();
    let run = run_to_exit(&[
        "serve",
        "--database-url",
        &database.url,
        "--listen",
        &listen,
    ]);
    assert!(!run.status.success(), "{}", said(&run));
    let line = the_line_naming(&run, "--listen");
    assert!(line.contains(&listen), "{line}");
    assert!(line.contains("os error"), "{line}");
    assert!(
        !sqlite_path(&database).exists(),
        "the database was created: {}",
        said(&run)
    );
}

/// The proxy's two listeners on one address, or on addresses that would collide when bound
/// (a wildcard and a specific address on the same port), are refused naming both flags.
#[test]
fn proxy_listeners_on_one_address_are_refused() {
    // Held, so a proxy that got past the check could never serve on it.
    let (_holder, address) = taken_port();
    let port = address.port();
    let same = address.to_string();
    let wildcard = format!("0.0.0.0:{port}");
    for (listen, admin) in [(&same, &same), (&wildcard, &same), (&same, &wildcard)] {
        let run = run_to_exit(&[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            listen,
            "--admin-listen",
            admin,
        ]);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{listen} {admin}: {}",
            said(&run)
        );
        let line = the_line_naming(&run, "--admin-listen");
        assert!(line.contains("--listen"), "{listen} {admin}: {line}");
    }
}

/// A taken `--admin-listen` port fails naming the flag, the address and the OS's reason,
/// before anything else starts: the proxy never dials its Redis.
#[test]
fn a_taken_admin_port_fails_before_anything_starts() {
    let (_holder, address) = taken_port();
    // Stands in for Redis: any connection the proxy opened would wait in its backlog.
    let (redis, redis_address) = taken_port();
    let admin = address.to_string();
    let redis_url = format!("redis://{redis_address}/0");
    let run = run_to_exit(&[
        "proxy",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &admin,
        "--redis-url",
        &redis_url,
    ]);
    assert!(!run.status.success(), "{}", said(&run));
    let line = the_line_naming(&run, "--admin-listen");
    assert!(line.contains(&admin), "{line}");
    assert!(line.contains("os error"), "{line}");
    redis.set_nonblocking(true).expect("non-blocking");
    match redis.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the proxy dialled Redis before failing: {other:?}"),
    }
}

/// A malformed Redis Cluster or Sentinel `--redis-url` (no master name, an empty seed, a
/// port that is not one, a database a cluster does not have) is refused at start by both
/// commands, naming the flag once, and never showing the password given in it; `serve`
/// creates no database first.
#[test]
fn a_malformed_cluster_or_sentinel_url_is_refused_without_its_password() {
    const PASSWORD: &str = "s3cret-pass";
    let urls = [
        "redis+sentinel://h:1".to_owned(),
        "redis+cluster://a:1,,b:2".to_owned(),
        format!("redis+sentinel://app:{PASSWORD}@h:1"),
        format!("rediss+sentinel://:{PASSWORD}@h:1,,g:2/cachelayer"),
        format!("redis+sentinel://app:{PASSWORD}@h:1/cachelayer/notadb"),
        format!("redis+cluster://app:{PASSWORD}@a:1,,b:2"),
        format!("redis+cluster://app:{PASSWORD}@a:1,b:notaport"),
        format!("rediss+cluster://app:{PASSWORD}@a:1,b:2/3"),
        // A password holding the characters the URL is split on.
        format!("redis+cluster://app:p@ss/,{PASSWORD}@a:1,,b:2"),
    ];
    for url in &urls {
        let database = TestDatabase::sqlite();
        let runs = [
            run_to_exit(&[
                "serve",
                "--database-url",
                &database.url,
                "--listen",
                "127.0.0.1:0",
                "--redis-url",
                url,
            ]),
            run_to_exit(&[
                "proxy",
                "--upstream",
                "http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--redis-url",
                url,
            ]),
        ];
        for run in &runs {
            assert_eq!(run.status.code(), Some(2), "{url}: {}", said(run));
            let line = the_line_naming(run, "--redis-url");
            assert!(line.contains("--redis-url (REDIS_URL)"), "{url}: {line}");
            assert!(!said(run).contains(PASSWORD), "{url}: {}", said(run));
            // The password's pieces too, for the one split on its `@`, `/` and `,`.
            assert!(!said(run).contains("p@ss"), "{url}: {}", said(run));
        }
        assert!(
            !sqlite_path(&database).exists(),
            "{url}: the database was created: {}",
            said(&runs[0])
        );
    }
}
