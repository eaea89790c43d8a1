//! Following a Redis Cluster's redirections, and nothing else.
//!
//! The `redis` crate's cluster connection retries on its own after any error, I/O errors
//! included, so it can send again a command that already ran (a reply lost after the node
//! executed it): a `SET NX` then reports the key taken by its own write, a lock release
//! reports failure after releasing. The store turns those retries off and follows here only
//! the answers that say the command did **not** run: `MOVED` (ask that node) and `ASK` (ask
//! that node once, after `ASKING`). `ASKING` goes in one pipeline with the command, so on a
//! connection shared by concurrent calls no other command can take its flag (which the
//! crate's own `ASK` handling, sending it as a request of its own, allows during a slot
//! migration). This module must never send a command again after any other error.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisResult, Value};

use super::slots::NodeAddress;

/// Redirections followed for one command; more means the cluster is still moving slots.
const MAX_REDIRECTIONS: usize = 5;

/// Where a redirection sends a command.
enum Redirection {
    /// `MOVED`: the slot is served there now.
    Moved(NodeAddress),
    /// `ASK`: the slot is migrating there, and this key already moved.
    Ask(NodeAddress),
}

impl Redirection {
    fn of(err: &redis::RedisError) -> Option<Self> {
        let (address, _slot) = err.redirect_node()?;
        let node = NodeAddress::parse(address)?;
        match err.kind() {
            redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => Some(Self::Ask(node)),
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => Some(Self::Moved(node)),
            _ => None,
        }
    }
}

/// Send `command` to its slot's primary, following `MOVED` and `ASK`.
pub(in crate::store::redis) async fn send(
    connection: &mut ClusterConnection,
    command: &Cmd,
) -> RedisResult<Value> {
    let mut reply = redis::aio::ConnectionLike::req_packed_command(connection, command).await;
    for _ in 0..MAX_REDIRECTIONS {
        let Some(redirection) = reply.as_ref().err().and_then(Redirection::of) else {
            break;
        };
        reply = match redirection {
            Redirection::Moved(node) => connection.route_command(command.clone(), to(&node)).await,
            Redirection::Ask(node) => asking(connection, command, &node).await,
        };
    }
    reply
}

/// `ASKING` and `command`, as one pipeline to `node`: the reply to `command`.
async fn asking(
    connection: &mut ClusterConnection,
    command: &Cmd,
    node: &NodeAddress,
) -> RedisResult<Value> {
    let mut pipeline = redis::pipe();
    pipeline.cmd("ASKING").add_command(command.clone());
    let route = SingleNodeRoutingInfo::ByAddress {
        host: node.host.clone(),
        port: node.port,
    };
    let mut replies = connection.route_pipeline(pipeline, 0, 2, route).await?;
    match replies.pop() {
        Some(Value::ServerError(err)) => Err(err.into()),
        Some(reply) => Ok(reply),
        None => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the cluster answered ASKING and a command with no reply",
        ))),
    }
}

fn to(node: &NodeAddress) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: node.host.clone(),
        port: node.port,
    })
}
