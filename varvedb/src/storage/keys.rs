//! Key and value encodings of the `index` database.
//!
//! An index entry describes a *run*: consecutive stream sequences of one
//! `(stream tag, stream id)` that sit at consecutive global sequences.
//!
//! ```text
//! key   (20 bytes, big endian so keys sort by stream, id, sequence):
//!       stream tag u32 | stream id u64 | first stream sequence u64
//! value (20 bytes, little endian): first global sequence u64 | event count u64 |
//!       checksum u32 (low 32 bits of XXH3-64 over the key and the first 16 bytes)
//! ```
//! The checksum covers the key too, so a damaged key or value is an error, not
//! a run that silently points elsewhere or ends early.
//! A batch is one run; consecutive single appends to the same id extend the
//! previous run in place, so the index stays small whatever the write pattern.

pub(crate) const INDEX_KEY_LEN: usize = 20;
pub(crate) const RUN_LEN: usize = 20;

pub(crate) fn index_key(tag: u32, id: u64, seq: u64) -> [u8; INDEX_KEY_LEN] {
    let mut k = [0u8; INDEX_KEY_LEN];
    k[..4].copy_from_slice(&tag.to_be_bytes());
    k[4..12].copy_from_slice(&id.to_be_bytes());
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes an index key into `(tag, id, first sequence)`; `None` if malformed.
pub(crate) fn parse_index_key(k: &[u8]) -> Option<(u32, u64, u64)> {
    if k.len() != INDEX_KEY_LEN {
        return None;
    }
    Some((
        u32::from_be_bytes(k[..4].try_into().ok()?),
        u64::from_be_bytes(k[4..12].try_into().ok()?),
        u64::from_be_bytes(k[12..].try_into().ok()?),
    ))
}

/// A run of a stream id: `count` events from `first_seq`, at globals from `first_global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) first_seq: u64,
    pub(crate) first_global: u64,
    pub(crate) count: u64,
}

impl Run {
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + self.count
    }

    pub(crate) fn end_global(&self) -> u64 {
        self.first_global + self.count
    }

    pub(crate) fn encode(&self, key: &[u8; INDEX_KEY_LEN]) -> [u8; RUN_LEN] {
        let mut v = [0u8; RUN_LEN];
        v[..8].copy_from_slice(&self.first_global.to_le_bytes());
        v[8..16].copy_from_slice(&self.count.to_le_bytes());
        let sum = run_checksum(key, &v[..16]);
        v[16..].copy_from_slice(&sum.to_le_bytes());
        v
    }

    /// Decodes the run stored under `key` (whose first sequence is
    /// `first_seq`); `None` if malformed, impossible or failing its checksum.
    pub(crate) fn decode(key: &[u8], first_seq: u64, v: &[u8]) -> Option<Run> {
        if v.len() != RUN_LEN || run_checksum(key, &v[..16]).to_le_bytes() != v[16..] {
            return None;
        }
        let run = Run {
            first_seq,
            first_global: u64::from_le_bytes(v[..8].try_into().ok()?),
            count: u64::from_le_bytes(v[8..16].try_into().ok()?),
        };
        let valid = run.count > 0
            && run.first_seq.checked_add(run.count).is_some()
            && run.first_global.checked_add(run.count).is_some();
        valid.then_some(run)
    }
}

fn run_checksum(key: &[u8], value: &[u8]) -> u32 {
    let mut both = [0u8; INDEX_KEY_LEN + 16];
    let (k, v) = (key.len().min(INDEX_KEY_LEN), value.len().min(16));
    both[..k].copy_from_slice(&key[..k]);
    both[INDEX_KEY_LEN..INDEX_KEY_LEN + v].copy_from_slice(&value[..v]);
    xxhash_rust::xxh3::xxh3_64(&both) as u32
}

/// Key of the `events` database: the first global sequence of a block.
pub(crate) fn event_key(global: u64) -> [u8; 8] {
    global.to_be_bytes()
}

pub(crate) fn parse_event_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// Value of the `ids` database (key: the 16-byte event id): the event's
/// global sequence (u64 LE) and a checksum (u32 LE, low 32 bits of XXH3-64
/// over the key and the global).
pub(crate) const ID_VALUE_LEN: usize = 12;

fn keyed_checksum(key: &[u8], value: &[u8]) -> u32 {
    let seed = xxhash_rust::xxh3::xxh3_64(key);
    xxhash_rust::xxh3::xxh3_64_with_seed(value, seed) as u32
}

pub(crate) fn id_value(event_id: &[u8; 16], global: u64) -> [u8; ID_VALUE_LEN] {
    let mut v = [0u8; ID_VALUE_LEN];
    v[..8].copy_from_slice(&global.to_le_bytes());
    let sum = keyed_checksum(event_id, &v[..8]);
    v[8..].copy_from_slice(&sum.to_le_bytes());
    v
}

/// The global sequence stored under `key` in `ids`; `None` if malformed.
pub(crate) fn decode_id_value(key: &[u8], v: &[u8]) -> Option<u64> {
    if v.len() != ID_VALUE_LEN || keyed_checksum(key, &v[..8]).to_le_bytes() != v[8..] {
        return None;
    }
    Some(u64::from_le_bytes(v[..8].try_into().ok()?))
}

/// Keys of the `keys` database (entity keys): `k` + tag (BE) + user key maps
/// to the stream id; `r` + tag (BE) + stream id (BE) maps back to the user
/// key; `n` + tag (BE) holds the next stream id to allocate. Every value ends
/// with a checksum over its key and value (u32 LE).
pub(crate) fn entity_key(tag: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(b'k');
    k.extend_from_slice(&tag.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub(crate) fn entity_reverse_key(tag: u32, id: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'r';
    k[1..5].copy_from_slice(&tag.to_be_bytes());
    k[5..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn entity_counter_key(tag: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = b'n';
    k[1..].copy_from_slice(&tag.to_be_bytes());
    k
}

/// `value` followed by its checksum (bound to `key`).
pub(crate) fn sealed_value(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 4);
    v.extend_from_slice(value);
    v.extend_from_slice(&keyed_checksum(key, value).to_le_bytes());
    v
}

/// The value [`sealed_value`] sealed under `key`; `None` if it fails its checksum.
pub(crate) fn open_sealed<'v>(key: &[u8], v: &'v [u8]) -> Option<&'v [u8]> {
    let (value, sum) = v.split_at_checked(v.len().checked_sub(4)?)?;
    (keyed_checksum(key, value).to_le_bytes() == sum).then_some(value)
}

/// The `state` key of the aggregate snapshot of `(tag, id)`: `snap/`, the
/// tag (BE u32), the stream id (BE u64). The aggregate layer stores under
/// it; erasing the entity deletes it.
pub(crate) fn snapshot_key(tag: u32, id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..5].copy_from_slice(b"snap/");
    k[5..9].copy_from_slice(&tag.to_be_bytes());
    k[9..].copy_from_slice(&id.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_values_and_sealed_values_are_bound_to_their_key() {
        let v = id_value(&[7; 16], 99);
        assert_eq!(decode_id_value(&[7; 16], &v), Some(99));
        assert_eq!(decode_id_value(&[8; 16], &v), None);
        for byte in 0..ID_VALUE_LEN {
            let mut bad = v;
            bad[byte] ^= 1;
            assert_eq!(decode_id_value(&[7; 16], &bad), None);
        }
        let sealed = sealed_value(b"key", b"value");
        assert_eq!(open_sealed(b"key", &sealed), Some(&b"value"[..]));
        assert_eq!(open_sealed(b"kez", &sealed), None);
        assert_eq!(open_sealed(b"key", &sealed[1..]), None);
        assert_eq!(open_sealed(b"key", &[1, 2]), None);
    }

    #[test]
    fn index_keys_sort_by_tag_then_id_then_sequence() {
        let a = index_key(1, 5, 9);
        let b = index_key(1, 6, 0);
        let c = index_key(2, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(parse_index_key(&a), Some((1, 5, 9)));
    }

    #[test]
    fn runs_round_trip_and_reject_garbage() {
        let r = Run {
            first_seq: 3,
            first_global: 10,
            count: 4,
        };
        let key = index_key(1, 2, 3);
        let v = r.encode(&key);
        assert_eq!(Run::decode(&key, 3, &v), Some(r));
        assert_eq!(Run::decode(&key, 3, &[0u8; 3]), None);
        let empty = Run { count: 0, ..r }.encode(&key);
        assert_eq!(
            Run::decode(&key, 3, &empty),
            None,
            "an empty run is impossible"
        );
    }

    #[test]
    fn a_damaged_run_key_or_value_fails_its_checksum() {
        let r = Run {
            first_seq: 3,
            first_global: 10,
            count: 4,
        };
        let key = index_key(1, 2, 3);
        let v = r.encode(&key);
        for byte in 0..RUN_LEN {
            let mut bad = v;
            bad[byte] ^= 0x10;
            assert_eq!(Run::decode(&key, 3, &bad), None, "value byte {byte}");
        }
        for byte in 0..INDEX_KEY_LEN {
            let mut bad = key;
            bad[byte] ^= 0x10;
            assert_eq!(Run::decode(&bad, 3, &v), None, "key byte {byte}");
        }
    }
}
