//! Redis Cluster's key slots: which slot a key hashes to, and which primary serves each
//! slot, as a `CLUSTER SLOTS` reply says.
//!
//! The slot function is written here because the `redis` crate keeps its own to itself; it
//! follows the cluster specification (CRC16/XMODEM from the `crc16` crate, hash tags), and
//! its test checks the specification's example. This module must never guess a primary: a
//! range whose node announces no address leaves its slots unknown, and the table says it is
//! incomplete.

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// The owner of a slot no primary is known to serve.
const UNKNOWN: u16 = u16::MAX;

/// A primary's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(in crate::store::redis) struct NodeAddress {
    pub(in crate::store::redis) host: String,
    pub(in crate::store::redis) port: u16,
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&super::super::deployment::host_port(&self.host, self.port))
    }
}

impl NodeAddress {
    /// `host:port` as a redirection (`MOVED 3999 127.0.0.1:7002`) names a node.
    pub(super) fn parse(address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Which primary serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store::redis) struct SlotTable {
    /// For each slot, an index into `primaries`, or [`UNKNOWN`].
    owners: Vec<u16>,
    /// Every primary known to serve at least one slot, sorted.
    primaries: Vec<NodeAddress>,
    /// Whether every slot range named its primary's address.
    complete: bool,
}

impl Default for SlotTable {
    fn default() -> Self {
        Self {
            owners: vec![UNKNOWN; SLOTS],
            primaries: Vec::new(),
            complete: false,
        }
    }
}

impl SlotTable {
    /// The primary serving `key`'s slot, when known.
    #[cfg(test)]
    fn primary_of(&self, key: &[u8]) -> Option<&NodeAddress> {
        self.primaries.get(self.owner_of(key)?)
    }

    /// The index in [`primaries`](Self::primaries) of the primary serving `key`'s slot.
    pub(super) fn owner_of(&self, key: &[u8]) -> Option<usize> {
        let owner = *self.owners.get(usize::from(slot_of(key)))?;
        (owner != UNKNOWN).then_some(usize::from(owner))
    }

    /// Every primary known to serve a slot.
    pub(in crate::store::redis) fn primaries(&self) -> &[NodeAddress] {
        &self.primaries
    }

    /// Whether every served slot's primary is known (a node may announce no address:
    /// `cluster-preferred-endpoint-type unknown-endpoint`).
    pub(in crate::store::redis) fn is_complete(&self) -> bool {
        self.complete
    }

    /// A `CLUSTER SLOTS` reply as a table; `None` for a reply of another shape.
    pub(super) fn parse(reply: &redis::Value) -> Option<Self> {
        let redis::Value::Array(ranges) = reply else {
            return None;
        };
        let mut table = Self {
            complete: true,
            ..Self::default()
        };
        let mut ranges_of: Vec<(usize, usize, NodeAddress)> = Vec::new();
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let (Some(start), Some(end), Some(redis::Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let start = usize::try_from(integer(start)?).ok()?;
            let end = usize::try_from(integer(end)?).ok()?;
            if start > end || end >= SLOTS {
                return None;
            }
            let port = u16::try_from(integer(node.get(1)?)?).ok()?;
            // A node without a usable address (NULL, empty, `?`) leaves its slots unknown.
            let host = match node.first()? {
                redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                redis::Value::SimpleString(text) => Some(text.clone()),
                redis::Value::Nil => None,
                _ => return None,
            }
            .filter(|host| !host.is_empty() && host != "?");
            let Some(host) = host else {
                table.complete = false;
                continue;
            };
            let address = NodeAddress { host, port };
            if !table.primaries.contains(&address) {
                table.primaries.push(address.clone());
            }
            ranges_of.push((start, end, address));
        }
        table.primaries.sort();
        for (start, end, address) in ranges_of {
            let index = u16::try_from(table.primaries.binary_search(&address).ok()?).ok()?;
            table.owners[start..=end].fill(index);
        }
        Some(table)
    }
}

fn integer(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(number) => Some(*number),
        _ => None,
    }
}

/// A key's hash slot: CRC16 (XMODEM) of the key, or of its hash tag (the text between the
/// first `{` and the next `}`, when not empty), modulo 16384, as Redis Cluster defines it.
pub(in crate::store::redis) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots as Redis Cluster's specification computes them, hash tags included.
    #[test]
    fn slots_follow_the_specification() {
        assert_eq!(
            slot_of(b"123456789"),
            12739,
            "the specification's CRC16 example"
        );
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_ne!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"bar"),
            "empty tag: the whole key"
        );
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    }

    fn node(host: redis::Value, port: i64) -> redis::Value {
        redis::Value::Array(vec![
            host,
            redis::Value::Int(port),
            redis::Value::BulkString(b"id".to_vec()),
        ])
    }

    fn named(host: &str, port: i64) -> redis::Value {
        node(redis::Value::BulkString(host.as_bytes().to_vec()), port)
    }

    fn range(start: i64, end: i64, nodes: Vec<redis::Value>) -> redis::Value {
        let mut fields = vec![redis::Value::Int(start), redis::Value::Int(end)];
        fields.extend(nodes);
        redis::Value::Array(fields)
    }

    /// A `CLUSTER SLOTS` reply maps every slot to its primary; replicas are not primaries.
    #[test]
    fn reads_cluster_slots() {
        let reply = redis::Value::Array(vec![
            range(
                0,
                8191,
                vec![named("127.0.0.1", 7001), named("127.0.0.1", 7004)],
            ),
            range(8192, 16383, vec![named("127.0.0.1", 7002)]),
        ]);
        let table = SlotTable::parse(&reply).expect("a table");
        assert_eq!(table.primaries().len(), 2);
        assert!(table.is_complete());
        let key_in = |port| {
            (0..)
                .map(|i: u32| format!("k{i}"))
                .find(|key| table.primary_of(key.as_bytes()).map(|n| n.port) == Some(port))
                .expect("some key")
        };
        assert!(usize::from(slot_of(key_in(7001).as_bytes())) < 8192);
        assert!(usize::from(slot_of(key_in(7002).as_bytes())) >= 8192);
        assert!(SlotTable::parse(&redis::Value::Int(1)).is_none());
        let out_of_range = redis::Value::Array(vec![range(0, 16384, vec![named("h", 1)])]);
        assert!(SlotTable::parse(&out_of_range).is_none());
    }

    /// A node that announces no address leaves its slots unknown and the table incomplete,
    /// rather than refusing the whole table or guessing.
    #[test]
    fn nodes_without_an_address_leave_their_slots_unknown() {
        let reply = redis::Value::Array(vec![
            range(0, 8191, vec![node(redis::Value::Nil, 7001)]),
            range(8192, 16383, vec![named("127.0.0.1", 7002)]),
        ]);
        let table = SlotTable::parse(&reply).expect("a table");
        assert!(!table.is_complete());
        assert_eq!(table.primaries().len(), 1);
        let unknown = (0..)
            .map(|i: u32| format!("k{i}"))
            .find(|key| usize::from(slot_of(key.as_bytes())) < 8192)
            .expect("some key");
        assert_eq!(table.primary_of(unknown.as_bytes()), None);
    }

    /// Redirections name nodes as `host:port`, IPv6 hosts too.
    #[test]
    fn reads_redirection_addresses() {
        let node = NodeAddress::parse("127.0.0.1:7002").expect("an address");
        assert_eq!((node.host.as_str(), node.port), ("127.0.0.1", 7002));
        let six = NodeAddress::parse("::1:7002").expect("an address");
        assert_eq!((six.host.as_str(), six.port), ("::1", 7002));
        assert!(NodeAddress::parse("nohost").is_none());
        assert!(NodeAddress::parse(":7002").is_none());
    }
}
