//! Connecting to Redis: TLS with a private CA, ACL users, database numbers and the pool of
//! multiplexed connections, each against a real redis-server.

use std::time::Duration;

use cachelayer::config::Secret;
use cachelayer::store::{RedisStore, Store};
use cachelayer::{Cache, CacheConfig, ErrorKind};
use cachelayer_testkit::{RedisServer, TestCertificates};

const MINUTE: Duration = Duration::from_secs(60);

/// `rediss://` with the server's CA trusted: values round-trip over TLS.
#[tokio::test]
async fn tls_with_trusted_ca_round_trips() {
    let server = RedisServer::builder().tls().start();
    let certificates = server.certificates().expect("tls certificates");
    let store = RedisStore::builder(server.tls_url().expect("tls url"))
        .tls_root_cert_pem(certificates.ca_cert_pem.clone())
        .build()
        .expect("store");
    store
        .set("k", "over tls".into(), MINUTE)
        .await
        .expect("set over TLS");
    assert_eq!(
        store.get("k").await.expect("get").as_deref(),
        Some(&b"over tls"[..])
    );
    // Proof the write went through the TLS listener to this same server.
    assert_eq!(server.cli(["GET", "k"]), "over tls");
}

/// Mutual TLS: a server that requires client certificates refuses a client without one and
/// accepts one that presents a certificate signed by its CA.
#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    let server = RedisServer::builder().tls().require_client_certs().start();
    let certificates = server.certificates().expect("tls certificates");
    let url = server.tls_url().expect("tls url");
    let anonymous = RedisStore::builder(url.clone())
        .tls_root_cert_pem(certificates.ca_cert_pem.clone())
        .build()
        .expect("store");
    let err = anonymous.ping().await.expect_err("no client certificate");
    assert!(err.is_unavailable(), "{err:?}");
    let identified = RedisStore::builder(url)
        .tls_root_cert_pem(certificates.ca_cert_pem.clone())
        .tls_client_cert_pem(
            certificates.client_cert_pem.clone(),
            certificates.client_key_pem.clone(),
        )
        .build()
        .expect("store");
    identified
        .ping()
        .await
        .expect("client certificate accepted");
}

/// A server certificate from an unknown CA is refused: the TLS check is real.
#[tokio::test]
async fn tls_with_untrusted_ca_is_refused() {
    let server = RedisServer::builder().tls().start();
    let other_dir = tempfile::tempdir().expect("temp dir");
    let stranger = TestCertificates::generate(other_dir.path());
    let store = RedisStore::builder(server.tls_url().expect("tls url"))
        .tls_root_cert_pem(stranger.ca_cert_pem)
        .build()
        .expect("store");
    let err = store.ping().await.expect_err("untrusted certificate");
    assert!(err.is_connection(), "{err:?}");
}

/// `#insecure` skips certificate checks (development only): the same untrusted server that
/// is refused above is accepted.
#[tokio::test]
async fn tls_insecure_fragment_skips_verification() {
    let server = RedisServer::builder().tls().start();
    let url = format!("{}/#insecure", server.tls_url().expect("tls url"));
    let store = RedisStore::builder(url).build().expect("store");
    store.ping().await.expect("verification skipped");
    let strict = RedisStore::builder(server.tls_url().expect("tls url"))
        .build()
        .expect("store");
    assert!(
        strict.ping().await.is_err(),
        "system roots do not trust the test CA"
    );
}

/// `CacheConfig` reads the CA from a file and caches over TLS.
#[tokio::test]
async fn config_with_ca_file_uses_tls() {
    let server = RedisServer::builder().tls().start();
    let config = CacheConfig {
        redis_url: server.tls_url().map(Secret::new),
        redis_tls_ca_file: Some(server.certificates().expect("certs").ca_cert_file.clone()),
        ..CacheConfig::default()
    };
    let cache = config.build().expect("cache");
    cache.insert("k", &5u8).await.expect("insert");
    assert_eq!(cache.get::<u8>("k").await, Some(5));
    assert_eq!(server.cli(["EXISTS", "cachelayer:v1:k"]), "1");
}

/// ACL users authenticate from the URL; a wrong password is a connection error and the
/// cache fails open.
#[tokio::test]
async fn acl_user_from_url() {
    let server = RedisServer::builder().acl_user("app", "s3cret").start();
    let port = server.port();
    let good = RedisStore::builder(format!("redis://app:s3cret@127.0.0.1:{port}"))
        .build()
        .expect("store");
    good.set("k", "v".into(), MINUTE)
        .await
        .expect("authenticated set");
    assert_eq!(server.cli(["GET", "k"]), "v");
    let clients = server.cli(["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|c| c.contains(" user=app ")),
        "{clients}"
    );

    let bad = RedisStore::builder(format!("redis://app:wrong@127.0.0.1:{port}"))
        .build()
        .expect("store");
    let err = bad.ping().await.expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(
        !format!("{bad:?}").contains("wrong"),
        "password leaked into Debug"
    );

    let cache = Cache::builder().store(bad).build().expect("cache");
    assert_eq!(cache.get_with("k", MINUTE, async { 1u8 }).await, 1);
}

/// A connection refused at authentication recovers once the credentials become valid (a
/// password rotated on the server), without restarting the process.
#[tokio::test]
async fn recovers_after_authentication_starts_working() {
    let server = RedisServer::builder().acl_user("app", "old").start();
    let store = RedisStore::builder(format!("redis://app:new@127.0.0.1:{}", server.port()))
        .build()
        .expect("store");
    let err = store.ping().await.expect_err("password not valid yet");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    // The rotation: the server starts accepting the new password.
    assert_eq!(server.cli(["ACL", "SETUSER", "app", ">new"]), "OK");
    store
        .ping()
        .await
        .expect("the next call dials again and authenticates");
}

/// The database number in the URL selects the database.
#[tokio::test]
async fn database_number_from_url() {
    let server = RedisServer::start();
    let store = RedisStore::builder(format!("{}/3", server.url()))
        .build()
        .expect("store");
    store.set("in-db-3", "v".into(), MINUTE).await.expect("set");
    assert_eq!(server.cli(["EXISTS", "in-db-3"]), "0", "not in db 0");
    assert_eq!(server.cli(["-n", "3", "EXISTS", "in-db-3"]), "1");
}

/// The pool opens the configured number of connections and spreads commands over them.
#[tokio::test]
async fn pool_opens_configured_connections() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .pool_size(3)
        .build()
        .expect("store");
    for _ in 0..6 {
        store.ping().await.expect("ping");
    }
    let clients = server.cli(["CLIENT", "LIST"]);
    // Three pooled connections plus redis-cli's own.
    assert_eq!(clients.lines().count(), 4, "{clients}");
}

/// A server that accepts connections but never answers: connecting gives up after the
/// connect timeout instead of hanging the caller.
#[tokio::test]
async fn unresponsive_server_hits_the_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold connections without ever replying.
    let held = std::thread::spawn(move || {
        let mut sockets = Vec::new();
        for socket in listener.incoming().take(4) {
            sockets.push(socket);
        }
        sockets
    });
    let store = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .build()
        .expect("store");
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), store.ping())
        .await
        .expect("bounded by the store's own timeouts, not this guard");
    // Connect (200 ms) plus command (200 ms) timeouts, with room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = outcome.expect_err("nothing answers");
    assert!(err.is_unavailable(), "{err:?}");
    drop(held);
}

/// The store's own command timeout bounds a call to a server that accepted the connection
/// but stopped answering (every client paused).
#[tokio::test]
async fn command_timeout_bounds_a_paused_server() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .command_timeout(Duration::from_millis(100))
        .build()
        .expect("store");
    store.ping().await.expect("connected first");
    server.cli(["CLIENT", "PAUSE", "2000", "ALL"]);
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), store.get("k"))
        .await
        .expect("bounded by the command timeout, not this guard");
    // A 100 ms timeout, against a 2 s pause: well under the pause even on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let err = outcome.expect_err("paused");
    assert!(err.is_timeout(), "{err:?}");
    server.cli(["CLIENT", "UNPAUSE"]);
}

/// A subscription survives a Redis restart: it re-subscribes by itself, and messages
/// published afterwards arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resubscribes_after_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder(server.url()).build().expect("store");
    let mut subscription = store.subscribe("events").await.expect("subscribe");
    server.restart();
    // PUBLISH answers how many subscribers received the message: the signal that the
    // subscription is back. Bounded, since re-subscribing backs off.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store.publish("events", "after restart".into()).await {
            Ok(1) => break,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("subscription never came back: {other:?}"),
        }
    }
    let message = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("delivered in time");
    assert_eq!(message.as_deref(), Some(&b"after restart"[..]));
}
