//! Finding the primary through Sentinels: ask every Sentinel at once which address the
//! master name has now (`SENTINEL GET-MASTER-ADDR-BY-NAME`), and take the first named node
//! that says it is a primary.
//!
//! Asked by hand rather than through the `redis` crate's `Sentinel`: that one builds the
//! primary's client itself, from the address and its own connection settings, while this
//! store builds every client of a deployment in one place (`ClientFactory`: TLS roots and
//! client certificate, TCP keepalive and user timeout, RESP3 for change tracking), and needs
//! only the address. This module must never pick a node
//! no Sentinel named, and never hold a Sentinel connection open between lookups (lookups
//! are rare: at start and after a failure).

use std::time::Duration;

use futures::future::join_all;
use redis::AsyncConnectionConfig;

use super::ClientFactory;
use super::deployment::SentinelSet;
use crate::error::{Error, ErrorKind, Result};

/// The primary's address (`host`, `port`): every Sentinel is asked at once (one that does
/// not answer costs no time when another does), and the first address, in the URL's order
/// of Sentinels, whose node says it is a primary (`ROLE`) wins. A node just named but still
/// a replica (a failover under way) is not taken.
pub(super) async fn primary_address(
    set: &SentinelSet,
    factory: &ClientFactory,
    timeout: Duration,
) -> Result<(String, u16)> {
    let answers = join_all(
        set.sentinels
            .iter()
            .map(|sentinel| ask(factory, sentinel, &set.master, timeout)),
    )
    .await;
    let mut named: Vec<(String, u16)> = Vec::new();
    let mut last_error = None;
    for (sentinel, answer) in set.sentinels.iter().zip(answers) {
        match answer {
            Ok(Some(address)) if !named.contains(&address) => named.push(address),
            Ok(Some(_)) => {}
            Ok(None) => {
                last_error = Some(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "Sentinel {} does not know a primary named {:?}",
                        super::redact_url(sentinel),
                        set.master
                    ),
                ));
            }
            Err(err) => {
                tracing::debug!(sentinel = %super::redact_url(sentinel), error = %err, "Sentinel did not answer");
                last_error = Some(err);
            }
        }
    }
    for (host, port) in named {
        match is_primary(factory, &set.node_url(&host, port), timeout).await {
            Ok(true) => return Ok((host, port)),
            Ok(false) => {
                last_error = Some(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "the node the Sentinels name for {:?} is not a primary yet (a failover under way)",
                        set.master
                    ),
                ));
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::config("no Sentinel is named")))
}

/// Whether the node at `url` says it is a primary (`ROLE`).
async fn is_primary(factory: &ClientFactory, url: &str, timeout: Duration) -> Result<bool> {
    let client = factory.client(url, None)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let check = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut connection)
            .await
    };
    match tokio::time::timeout(timeout * 2, check).await {
        Ok(role) => Ok(matches!(
            role?,
            redis::Value::Array(fields)
                if matches!(fields.first(), Some(redis::Value::BulkString(role)) if role == b"master")
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            "the node the Sentinels name did not answer in time",
        )),
    }
}

/// One Sentinel's answer: the address, or `None` when it does not know the name.
async fn ask(
    factory: &ClientFactory,
    sentinel: &str,
    master: &str,
    timeout: Duration,
) -> Result<Option<(String, u16)>> {
    let client = factory.client(sentinel, None)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let lookup = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async::<Option<(String, u16)>>(&mut connection)
            .await
    };
    match tokio::time::timeout(timeout * 2, lookup).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            "a Sentinel did not answer in time",
        )),
    }
}
