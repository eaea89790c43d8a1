//! Structure-aware damage for the fuzz targets: a valid encoding, then a few edits of the
//! kinds that break parsers (a flipped bit, a length field set to an edge value, bytes cut,
//! inserted, removed or repeated), so the parsers under test get past their first checks.
//!
//! This module must never decide what a parser should answer; it only makes inputs.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// One edit of a byte string. Positions are [`Index`]es, so they fit whatever length the
/// bytes have by the time the edit is applied.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// Flip one bit.
    Flip { at: Index, bit: u8 },
    /// Overwrite one byte.
    Set { at: Index, byte: u8 },
    /// Overwrite a big-endian integer of `width` bytes (a length, a count, a time) with an
    /// edge value.
    Word { at: Index, width: u8, value: u64 },
    /// Cut the bytes at a point.
    Truncate { at: Index },
    /// Insert bytes at a point.
    Insert { at: Index, bytes: Vec<u8> },
    /// Remove up to `len` bytes from a point.
    Remove { at: Index, len: usize },
    /// Copy a run of the bytes to another point (repeats fields and headers).
    Repeat { from: Index, len: usize, to: Index },
}

/// Values that sit on the edges of lengths, counts and times.
fn edge_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x100,
            0x7fff,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x7fff_ffff,
            0xffff_fffe,
            0xffff_ffff,
            1 << 32,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0u64..64,
        any::<u64>(),
    ]
}

/// One edit.
pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        3 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), edge_value())
            .prop_map(|(at, width, value)| Mutation::Word { at, width, value }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Repeat { from, len, to }),
    ]
}

/// One to a few edits.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..5)
}

/// Apply `edits` in order.
pub(crate) fn apply(bytes: &mut Vec<u8>, edits: &[Mutation]) {
    for edit in edits {
        apply_one(bytes, edit);
    }
}

fn apply_one(bytes: &mut Vec<u8>, edit: &Mutation) {
    let len = bytes.len();
    match edit {
        Mutation::Truncate { at } => bytes.truncate(at.index(len + 1)),
        Mutation::Insert { at, bytes: new } => {
            let at = at.index(len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        _ if len == 0 => {}
        Mutation::Flip { at, bit } => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Set { at, byte } => bytes[at.index(len)] = *byte,
        Mutation::Word { at, width, value } => {
            let width = usize::from(*width).min(len);
            let at = at.index(len - width + 1);
            let be = value.to_be_bytes();
            bytes[at..at + width].copy_from_slice(&be[8 - width..]);
        }
        Mutation::Remove { at, len: count } => {
            let at = at.index(len);
            let end = (at + count).min(len);
            bytes.drain(at..end);
        }
        Mutation::Repeat {
            from,
            len: count,
            to,
        } => {
            let from = from.index(len);
            let end = (from + count).min(len);
            let run = bytes[from..end].to_vec();
            let to = to.index(len + 1);
            bytes.splice(to..to, run);
        }
    }
}
