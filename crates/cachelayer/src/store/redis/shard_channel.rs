//! Subscriptions on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), on a RESP3 cluster
//! connection of the subscription's own, whose pushes are forwarded to the subscriber.
//!
//! Sharded rather than classic pub/sub because a classic `PUBLISH` travels the cluster bus to
//! every node, a cost that grows with the cluster; a sharded message goes to the nodes of one
//! shard. The `redis` crate's cluster connection subscribes again by itself when the shard's
//! primary changes (a failover, a slot migration). Delivery stays at most once, as the
//! [`Store::subscribe`](crate::store::Store::subscribe) contract says: messages published
//! while the shard has no primary are missed. This module must never block the connection's
//! task: it forwards with `try_send` and counts what a lagging subscriber loses.

use std::time::Duration;

use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use super::ClientFactory;
use super::deployment::ClusterSeeds;
use crate::error::{Error, ErrorKind, Result};
use crate::store::contract::Subscription;
use crate::telemetry;

/// Subscribe to `channel` on the cluster that `seeds` reach.
pub(super) async fn subscribe(
    factory: &ClientFactory,
    seeds: &ClusterSeeds,
    channel: &str,
    timeout: Duration,
) -> Result<Subscription> {
    let (pushes, received) = mpsc::unbounded_channel();
    let client = factory.cluster_client(&seeds.seeds, (timeout, timeout), Some(pushes))?;
    let connect = async {
        let mut connection = client.get_async_connection().await?;
        connection.ssubscribe(channel).await?;
        Ok::<_, redis::RedisError>(connection)
    };
    let connection = match tokio::time::timeout(timeout * 2, connect).await {
        Ok(connection) => connection?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                "the Redis Cluster did not accept the subscription in time; check that its nodes are up",
            ));
        }
    };
    let (sender, subscription) = Subscription::channel_pair(channel);
    tokio::spawn(forward(channel.to_owned(), connection, received, sender));
    Ok(subscription)
}

/// Forward the subscription's messages until the subscriber goes away (which drops the
/// connection, and with it the subscription) or the connection ends.
async fn forward(
    channel: String,
    connection: ClusterConnection,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    sender: mpsc::Sender<Bytes>,
) {
    let _subscribed = connection;
    loop {
        let push = tokio::select! {
            () = sender.closed() => return,
            push = pushes.recv() => push,
        };
        let Some(push) = push else {
            tracing::warn!(channel, "Redis Cluster subscription ended");
            return;
        };
        match push.kind {
            PushKind::SMessage => {
                // `smessage <channel> <payload>`: the payload is the last field.
                let Some(redis::Value::BulkString(payload)) = push.data.last() else {
                    continue;
                };
                match sender.try_send(Bytes::copy_from_slice(payload)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!(telemetry::SUBSCRIPTION_DROPPED).increment(1);
                    }
                }
            }
            PushKind::Disconnection => {
                metrics::counter!(telemetry::SUBSCRIPTION_RECONNECTS).increment(1);
                tracing::warn!(
                    channel,
                    "Redis Cluster subscription lost a node; messages published until it subscribes again are missed"
                );
            }
            _ => {}
        }
    }
}
