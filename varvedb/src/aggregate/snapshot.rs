//! Stored aggregate states ([`Snapshots`]), so a load folds only the tail.
//!
//! A snapshot is a value of the `state` database, written in the same
//! transaction as the events it covers:
//!
//! ```text
//! key:   "snap/" | stream tag u32 (BE) | stream id u64 (BE)          (17 bytes)
//! value: offset  size  field (little endian)
//!        0       4     magic "VSNP"
//!        4       4     snapshot format version (1)
//!        8       8     state fingerprint (see `Snapshots::fingerprint`)
//!        16      8     covers: the stream sequence of the last event folded in
//!        24      4     reserved (0)
//!        28      4     CRC-32 of bytes 0..28 and of the payload
//!        32      ..    payload: the rkyv archive of the state
//! ```
//!
//! A value that fails any check (length, magic, version, checksum,
//! fingerprint, rkyv validation, or covering more events than the stream
//! has) is ignored, and the load replays every event.

use std::fmt;

use rkyv::api::high::HighDeserializer;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::Deserialize;

use crate::event::{layout_fingerprint, Archivable};
use crate::storage::block::{u32_at, u64_at};

const MAGIC: &[u8; 4] = b"VSNP";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 32;

/// The `state` key of the snapshot of `(tag, id)` (kept in `storage`, whose
/// erasure of an entity deletes it).
pub(crate) fn key(tag: u32, id: u64) -> [u8; 17] {
    crate::storage::keys::snapshot_key(tag, id)
}

/// An aggregate's snapshot policy: never (the default), or every `n` events.
///
/// With snapshots, [`Varve::execute`](crate::Varve::execute) stores the state
/// (rkyv-archived, in the same transaction as the events) whenever the events
/// folded on top of the last usable snapshot reach `n`; [`Varve::load`](crate::Varve::load)
/// then deserializes the snapshot and folds only the events after it. Loads
/// write nothing unless the policy says [`on_load`](Snapshots::on_load):
/// without it, a stream id only appended to through streams gets snapshots
/// once commands are executed on it; with it, a load that folded `n` events
/// or more stores the state it loaded.
///
/// A snapshot records a *fingerprint* of the state type: a hash of its
/// [`type_name`](std::any::type_name), its archived size and alignment, and
/// the [`version`](Snapshots::version) given here. A snapshot with another
/// fingerprint, a damaged one (each carries a CRC-32) or one rkyv cannot
/// validate is ignored, and the state is rebuilt from every event: a
/// snapshot is never trusted over the events, and never replaced by a
/// default state.
///
/// The fingerprint also covers every version of the aggregate's event: a
/// new event version makes older snapshots unusable. With
/// [`schema`](Snapshots::schema) (the state's own `#[derive(Event)]`
/// fingerprint) it covers the state's fields; without it, only the state's
/// type name, size and alignment. **Bump the version** whenever
/// [`apply`](crate::Aggregate::apply) folds differently, or the state's
/// fields change without a schema given: the layout alone sees a renamed or
/// moved type and a changed size, but not, say, a `u64` field turned into an
/// `i64`, nor a fixed bug in `apply`.
///
/// Each stream id has one snapshot slot. Two aggregates with snapshots over
/// the same stream still load correctly, but overwrite each other's
/// snapshots (each ignores the other's).
///
/// ```
/// use rkyv::{Archive, Deserialize, Serialize};
/// use varvedb::{Aggregate, Snapshots, StreamId, StreamSequence, Varve};
///
/// #[derive(Archive, Serialize, varvedb::Event)]
/// struct Scored(u32);
///
/// // The state is stored too, so it derives rkyv's traits.
/// #[derive(Archive, Serialize, Deserialize, Default)]
/// struct Scores {
///     total: u64,
/// }
///
/// impl Aggregate for Scores {
///     type Event = Scored;
///     type Command = u32;
///     type Error = std::convert::Infallible;
///     const STREAM: &'static str = "scores";
///
///     fn apply(&mut self, event: &ArchivedScored) {
///         self.total += u64::from(event.0.to_native());
///     }
///
///     fn handle(&self, points: &u32) -> Result<Vec<Scored>, Self::Error> {
///         Ok(vec![Scored(*points)])
///     }
///
///     fn snapshots() -> Snapshots<Self> {
///         Snapshots::every(100).version(1)
///     }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let varve = Varve::new(dir.path())?;
/// let player = StreamId(1);
/// for _ in 0..250 {
///     varve.execute::<Scores>(player, &2)?;
/// }
/// let loaded = varve.load::<Scores>(player)?;
/// assert_eq!(loaded.state.total, 500);
/// // Stored after events 0..=99 and 100..=199: only 200..=249 were folded.
/// assert_eq!(loaded.snapshot, Some(StreamSequence(199)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Snapshots<A> {
    codec: Option<Codec<A>>,
}

/// How snapshots of `A` are written and read.
pub(crate) struct Codec<A> {
    every: u64,
    version: u32,
    layout: u64,
    /// The state's schema fingerprint, if given ([`Snapshots::schema`]).
    schema: u64,
    /// A hash of the aggregate's event versions, set where the aggregate's
    /// event type is known (loads and executes).
    events: u64,
    /// Whether loads store a due snapshot too ([`Snapshots::on_load`]).
    on_load: bool,
    encode: fn(&A) -> Result<AlignedVec<16>, rancor::Error>,
    decode: fn(&[u8]) -> Result<A, rancor::Error>,
}

impl<A> Clone for Codec<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Codec<A> {}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Snapshots<A> {}

impl<A> fmt::Debug for Snapshots<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.codec {
            None => f.write_str("Snapshots::never()"),
            Some(c) => f
                .debug_struct("Snapshots")
                .field("every", &c.every)
                .field("version", &c.version)
                .field("on_load", &c.on_load)
                .finish(),
        }
    }
}

fn encode_state<A: Archivable>(state: &A) -> Result<AlignedVec<16>, rancor::Error> {
    rkyv::to_bytes::<rancor::Error>(state)
}

fn decode_state<A>(bytes: &[u8]) -> Result<A, rancor::Error>
where
    A: Archivable,
    A::Archived: Deserialize<A, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<A, rancor::Error>(bytes)
}

impl<A> Snapshots<A> {
    /// No snapshots: every load folds every event.
    pub const fn never() -> Self {
        Snapshots { codec: None }
    }

    /// Stores the state whenever `n` events have been folded on top of the
    /// last usable snapshot (or of the empty state). `n = 0` means never.
    ///
    /// The state type must be storable ([`Archivable`]) and its archived form
    /// deserializable back into it.
    pub fn every(n: u64) -> Self
    where
        A: Archivable,
        A::Archived: Deserialize<A, HighDeserializer<rancor::Error>>,
    {
        if n == 0 {
            return Snapshots::never();
        }
        Snapshots {
            codec: Some(Codec {
                every: n,
                version: 0,
                layout: layout_fingerprint::<A>(),
                schema: 0,
                events: 0,
                on_load: false,
                encode: encode_state::<A>,
                decode: decode_state::<A>,
            }),
        }
    }

    /// Sets the state's snapshot version (0 unless set): bump it when the
    /// state's fields or the logic of [`apply`](crate::Aggregate::apply)
    /// change, and every older snapshot is ignored.
    pub const fn version(mut self, version: u32) -> Self {
        if let Some(codec) = &mut self.codec {
            codec.version = version;
        }
        self
    }

    /// Sets the state's schema fingerprint: with `#[derive(Event)]` on the
    /// state type, pass its [`FINGERPRINT`](crate::Event::FINGERPRINT), and
    /// any change of its fields (a same-size retype included, which the
    /// layout alone misses) makes older snapshots unusable.
    ///
    /// ```
    /// use rkyv::{Archive, Deserialize, Serialize};
    /// use varvedb::{Event, Snapshots};
    ///
    /// #[derive(Archive, Serialize, Deserialize, Event, Default)]
    /// struct Balance { cents: u64 }
    ///
    /// let policy = Snapshots::<Balance>::every(100).schema(Balance::FINGERPRINT);
    /// assert_ne!(policy.fingerprint(), Snapshots::<Balance>::every(100).fingerprint());
    /// ```
    pub const fn schema(mut self, fingerprint: u64) -> Self {
        if let Some(codec) = &mut self.codec {
            codec.schema = fingerprint;
        }
        self
    }

    /// Lets loads store snapshots too: a [`Varve::load`](crate::Varve::load)
    /// (or [`load_keyed`](crate::Varve::load_keyed),
    /// [`StreamReader::load`](crate::StreamReader::load)) that folded `n` or
    /// more events on top of the last usable snapshot stores the state it
    /// loaded, in a commit of its own, after its read. Without it, only
    /// [`Varve::execute`](crate::Varve::execute) stores snapshots, and a
    /// stream id filled by plain appends never gets one.
    ///
    /// It is opt-in because it makes a read write: a load that stores a
    /// snapshot waits for that commit (a durable one, under the store's
    /// write lock, like any commit). It never makes a load fail: a
    /// read-only store writes nothing, and a failed write (a full disk, a
    /// map that cannot grow) is ignored, leaving the snapshot for the next
    /// due load or command. The loaded state is the same either way.
    ///
    /// ```
    /// use rkyv::{Archive, Deserialize, Serialize};
    /// use varvedb::{Aggregate, Snapshots, StreamId, StreamSequence, Varve};
    ///
    /// #[derive(Archive, Serialize, varvedb::Event)]
    /// struct Viewed;
    ///
    /// #[derive(Archive, Serialize, Deserialize, Default)]
    /// struct Views(u64);
    ///
    /// impl Aggregate for Views {
    ///     type Event = Viewed;
    ///     type Command = ();
    ///     type Error = std::convert::Infallible;
    ///     const STREAM: &'static str = "views";
    ///     fn apply(&mut self, _: &ArchivedViewed) {
    ///         self.0 += 1;
    ///     }
    ///     fn handle(&self, _: &()) -> Result<Vec<Viewed>, Self::Error> {
    ///         Ok(vec![Viewed])
    ///     }
    ///     fn snapshots() -> Snapshots<Self> {
    ///         Snapshots::every(100).on_load()
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// // Filled by appends: no command ever ran on it.
    /// let page = StreamId(1);
    /// varve.events_in::<Viewed>("views")?.append_batch(page, &[(); 250].map(|_| Viewed))?;
    /// let first = varve.load::<Views>(page)?;
    /// assert_eq!((first.state.0, first.snapshot), (250, None));
    /// // That load stored its state: the next one starts from it.
    /// let next = varve.load::<Views>(page)?;
    /// assert_eq!((next.state.0, next.snapshot), (250, Some(StreamSequence(249))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn on_load(mut self) -> Self {
        if let Some(codec) = &mut self.codec {
            codec.on_load = true;
        }
        self
    }

    /// Whether loads store snapshots too ([`Snapshots::on_load`]).
    ///
    /// ```
    /// # #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)] struct S;
    /// use varvedb::Snapshots;
    /// assert!(!Snapshots::<S>::every(50).stores_on_load());
    /// assert!(Snapshots::<S>::every(50).on_load().stores_on_load());
    /// assert!(!Snapshots::<S>::never().on_load().stores_on_load());
    /// ```
    pub fn stores_on_load(&self) -> bool {
        self.codec.as_ref().is_some_and(|c| c.on_load)
    }

    /// The policy for an aggregate whose event has the versions `lineage`:
    /// snapshots taken under other event versions are unusable.
    pub(crate) fn for_events(mut self, lineage: &[(u32, u64)]) -> Self {
        if let Some(codec) = &mut self.codec {
            let mut h = crate::event::Fnv::new();
            for (v, fp) in lineage {
                h.write(&v.to_le_bytes());
                h.write(&fp.to_le_bytes());
            }
            codec.events = h.finish();
        }
        self
    }

    /// The interval, or `None` for [`Snapshots::never`].
    ///
    /// ```
    /// # #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)] struct S;
    /// use varvedb::Snapshots;
    /// assert_eq!(Snapshots::<S>::every(50).interval(), Some(50));
    /// assert_eq!(Snapshots::<S>::every(0).interval(), None);
    /// ```
    pub fn interval(&self) -> Option<u64> {
        self.codec.as_ref().map(|c| c.every)
    }

    /// The fingerprint recorded in (and required of) this aggregate's
    /// snapshots, or `None` for [`Snapshots::never`].
    pub fn fingerprint(&self) -> Option<u64> {
        self.codec.as_ref().map(Codec::fingerprint)
    }

    pub(crate) fn codec(&self) -> Option<&Codec<A>> {
        self.codec.as_ref()
    }
}

impl<A> Codec<A> {
    fn fingerprint(&self) -> u64 {
        // 64-bit FNV-1a over a domain tag, the layout and the version, then
        // the state's schema and the event versions when known (a codec
        // without them keeps the fingerprints of before).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let (schema, events) = (self.schema.to_le_bytes(), self.events.to_le_bytes());
        let extra: &[u8] = if self.schema == 0 && self.events == 0 {
            &[]
        } else {
            b"+schema"
        };
        let parts: [&[u8]; 6] = [
            b"varvedb snapshot",
            &self.layout.to_le_bytes(),
            &self.version.to_le_bytes(),
            extra,
            if extra.is_empty() { &[] } else { &schema },
            if extra.is_empty() { &[] } else { &events },
        ];
        for byte in parts.into_iter().flatten() {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    /// Whether loads store due snapshots too.
    pub(crate) fn on_load(&self) -> bool {
        self.on_load
    }

    /// The last stream sequence `value` covers, if it is a snapshot of this
    /// fingerprint with a valid header and checksum (its payload is not
    /// validated: see [`Codec::decode`]).
    pub(crate) fn covers(&self, value: &[u8]) -> Option<u64> {
        parse_value(value)
            .ok()
            .filter(|p| p.fingerprint == self.fingerprint())
            .map(|p| p.covers)
    }

    /// Whether a state at `version` should be stored, given the snapshot
    /// (covering `base`) it was loaded from.
    pub(crate) fn due(&self, base: Option<u64>, version: u64) -> bool {
        let folded = version + 1 - base.map_or(0, |b| b + 1);
        folded >= self.every
    }

    /// The value storing `state`, which covers events up to `covers`.
    pub(crate) fn encode(&self, state: &A, covers: u64) -> Result<Vec<u8>, rancor::Error> {
        let payload = (self.encode)(state)?;
        Ok(encode_value(self.fingerprint(), covers, &payload))
    }

    /// The state and the sequence it covers, if `value` is a valid snapshot
    /// of this layout. `scratch` receives an aligned copy of the payload.
    pub(crate) fn decode(&self, value: &[u8], scratch: &mut AlignedVec<16>) -> Option<(A, u64)> {
        let parsed = parse_value(value).ok()?;
        if parsed.fingerprint != self.fingerprint() {
            return None;
        }
        scratch.clear();
        scratch.extend_from_slice(parsed.payload);
        let state = (self.decode)(scratch).ok()?;
        Some((state, parsed.covers))
    }
}

fn crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// A snapshot value: header then payload.
pub(crate) fn encode_value(fingerprint: u64, covers: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&FORMAT.to_le_bytes());
    v.extend_from_slice(&fingerprint.to_le_bytes());
    v.extend_from_slice(&covers.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    let sum = crc(&v, payload);
    v.extend_from_slice(&sum.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A snapshot value's checked header and its payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) fingerprint: u64,
    pub(crate) covers: u64,
    pub(crate) payload: &'a [u8],
}

/// Why a value is not a usable snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unusable {
    Short,
    Magic,
    Format(u32),
    Checksum,
}

/// Checks a snapshot value's header and checksum.
pub(crate) fn parse_value(value: &[u8]) -> Result<Parsed<'_>, Unusable> {
    if value.len() < HEADER_LEN {
        return Err(Unusable::Short);
    }
    if &value[..4] != MAGIC {
        return Err(Unusable::Magic);
    }
    let format = u32_at(value, 4);
    if format != FORMAT {
        return Err(Unusable::Format(format));
    }
    let payload = &value[HEADER_LEN..];
    if crc(&value[..28], payload) != u32_at(value, 28) {
        return Err(Unusable::Checksum);
    }
    Ok(Parsed {
        fingerprint: u64_at(value, 8),
        covers: u64_at(value, 16),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use rkyv::{Archive, Deserialize, Serialize};

    use super::*;

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Default)]
    struct State {
        total: u64,
        name: String,
    }

    mod moved {
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default)]
        pub(super) struct State {
            total: u64,
            name: String,
        }
    }

    fn codec<A>(s: Snapshots<A>) -> Codec<A> {
        *s.codec().expect("snapshots on")
    }

    #[test]
    fn a_value_round_trips_and_every_header_byte_is_checked() {
        let value = encode_value(0xabcd, 41, b"payload bytes...");
        let parsed = parse_value(&value).unwrap();
        assert_eq!((parsed.fingerprint, parsed.covers), (0xabcd, 41));
        assert_eq!(parsed.payload, b"payload bytes...");
        for at in 0..value.len() {
            let mut bad = value.clone();
            bad[at] ^= 0x01;
            assert!(
                parse_value(&bad).is_err(),
                "flipping byte {at} went unnoticed"
            );
        }
        assert_eq!(parse_value(&value[..31]), Err(Unusable::Short));
        assert_eq!(parse_value(&value[..40]), Err(Unusable::Checksum));
    }

    #[test]
    fn a_state_round_trips_through_its_codec() {
        let c = codec(Snapshots::<State>::every(10));
        let state = State {
            total: 7,
            name: "a name longer than inline".into(),
        };
        let value = c.encode(&state, 9).unwrap();
        let mut scratch = AlignedVec::new();
        assert_eq!(c.decode(&value, &mut scratch), Some((state, 9)));
    }

    #[test]
    fn another_version_or_type_has_another_fingerprint_and_is_ignored() {
        let v0 = codec(Snapshots::<State>::every(10));
        let v1 = codec(Snapshots::<State>::every(10).version(1));
        let other = codec(Snapshots::<moved::State>::every(10));
        assert_ne!(v0.fingerprint(), v1.fingerprint());
        assert_ne!(v0.fingerprint(), other.fingerprint());

        let value = v0.encode(&State::default(), 3).unwrap();
        let mut scratch = AlignedVec::new();
        assert!(v1.decode(&value, &mut scratch).is_none());
        assert!(other.decode(&value, &mut scratch).is_none());
    }

    #[test]
    fn another_event_version_or_state_schema_makes_a_snapshot_unusable() {
        let v1 = Snapshots::<State>::every(10).for_events(&[(1, 0xa)]);
        let v2 = Snapshots::<State>::every(10).for_events(&[(1, 0xa), (2, 0xb)]);
        let v1_changed = Snapshots::<State>::every(10).for_events(&[(1, 0xc)]);
        let retyped = v1.schema(0x5);
        let retyped_again = v1.schema(0x6);
        let all = [v1, v2, v1_changed, retyped, retyped_again].map(|s| codec(s).fingerprint());
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let value = codec(v1).encode(&State::default(), 3).unwrap();
        let mut scratch = AlignedVec::new();
        assert!(codec(v1).decode(&value, &mut scratch).is_some());
        assert!(codec(v2).decode(&value, &mut scratch).is_none());
        assert!(codec(retyped).decode(&value, &mut scratch).is_none());
    }

    #[test]
    fn a_payload_rkyv_rejects_is_ignored_even_with_a_valid_checksum() {
        let c = codec(Snapshots::<State>::every(10));
        // Too short to hold the archived root.
        let value = encode_value(c.fingerprint(), 0, &[0; 8]);
        let mut scratch = AlignedVec::new();
        assert!(c.decode(&value, &mut scratch).is_none());
    }

    #[test]
    fn a_snapshot_is_due_once_the_interval_is_folded_on_top_of_the_last_one() {
        let c = codec(Snapshots::<State>::every(3));
        assert!(!c.due(None, 1));
        assert!(c.due(None, 2));
        assert!(!c.due(Some(2), 4));
        assert!(c.due(Some(2), 5));
        assert!(c.due(Some(2), 100));
        assert!(Snapshots::<State>::every(0).codec().is_none());
    }
}
