//! Finding the primary through Sentinels: ask each Sentinel in turn which address the
//! master name has now (`SENTINEL GET-MASTER-ADDR-BY-NAME`), and take the first answer.
//!
//! Asked by hand rather than through the `redis` crate's `Sentinel`, because that returns a
//! client built from the bare address: it would drop the TLS roots, client certificate and
//! TCP settings this store gives every connection. Here the answer is only an address, and
//! the store builds its clients for it as for any node. This module must never pick a node
//! no Sentinel named, and never hold a Sentinel connection open between lookups (lookups
//! are rare: at start and after a failure).

use std::time::Duration;

use redis::AsyncConnectionConfig;

use super::ClientFactory;
use super::deployment::SentinelSet;
use crate::error::{Error, ErrorKind, Result};

/// The primary's address (`host`, `port`) as the first Sentinel that knows it says.
pub(super) async fn primary_address(
    set: &SentinelSet,
    factory: &ClientFactory,
    timeout: Duration,
) -> Result<(String, u16)> {
    let mut last_error = None;
    for sentinel in &set.sentinels {
        match ask(factory, sentinel, &set.master, timeout).await {
            Ok(Some(address)) => return Ok(address),
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
    Err(last_error.unwrap_or_else(|| Error::config("no Sentinel is named")))
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
