//! Folding a stream id into an aggregate (in a read snapshot or a write
//! transaction), and executing a command in one write transaction.

use std::ops::ControlFlow;

use rkyv::util::AlignedVec;

use super::snapshot::{self, Snapshots};
use super::{Aggregate, Executed, Loaded};
use crate::error::{Error, Location, Result};
use crate::id::EventId;
use crate::metadata::{Context, Execute, Metadata};
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{form_of, read_form, Form};
use crate::storage::{BlockBuilder, Entity, RawMeta, Store, StreamInfo, View, WriteTxn};
use crate::stream::serialize_with_meta;

/// What a fold reads from: a read snapshot or a write transaction.
pub(crate) trait Source {
    /// The tag of `info`'s stream, `None` while the stream does not exist.
    fn tag(&mut self, info: &StreamInfo) -> Result<Option<u32>>;
    /// The last stream sequence of `(tag, id)`.
    fn version(&mut self, tag: u32, id: u64) -> Result<Option<u64>>;
    /// A value of the `state` database.
    fn state(&mut self, key: &[u8]) -> Result<Option<&[u8]>>;
    /// Calls `f(stream sequence, global sequence, block fingerprint,
    /// payload, metadata)` from `from` on.
    fn walk(
        &mut self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()>;
}

impl Source for View {
    fn tag(&mut self, info: &StreamInfo) -> Result<Option<u32>> {
        self.stream_tag(info)
    }

    fn version(&mut self, tag: u32, id: u64) -> Result<Option<u64>> {
        Ok(self.stream_version(tag, id)?.map(|s| s.0))
    }

    fn state(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.state_get(key)
    }

    fn walk(
        &mut self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        self.walk_stream_versions(tag, id, from, f)
    }
}

impl Source for WriteTxn<'_> {
    fn tag(&mut self, info: &StreamInfo) -> Result<Option<u32>> {
        self.stream_tag(info)
    }

    fn version(&mut self, tag: u32, id: u64) -> Result<Option<u64>> {
        WriteTxn::version(self, tag, id)
    }

    fn state(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.state_get(key)
    }

    fn walk(
        &mut self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        self.walk_stream_versions(tag, id, from, f)
    }
}

/// Folds `(info, id)`'s events from `from` into `state`, each validated with
/// rkyv and read in place; an under-aligned payload is validated on a copy in
/// `aligned` (reused, so no allocation per event), up to `until` (included)
/// if given. Returns the last sequence folded, if any.
#[allow(clippy::too_many_arguments)]
fn fold_from<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    tag: u32,
    id: StreamId,
    from: u64,
    until: Option<u64>,
    state: &mut A,
    aligned: &mut AlignedVec<16>,
) -> Result<Option<u64>> {
    let mut last = None;
    // The form is decided once per block fingerprint, not per event.
    let mut form: Option<(u64, Form)> = None;
    src.walk(tag, id.0, from, |seq, _, fp, bytes, meta| {
        if until.is_some_and(|u| seq > u) {
            return Ok(ControlFlow::Break(()));
        }
        let location = || Location::Stream {
            stream: info.name.to_string(),
            id,
            sequence: StreamSequence(seq),
        };
        let f = match form {
            Some((known, f)) if known == fp => f,
            _ => {
                let f = form_of(info, fp, location)?;
                form = Some((fp, f));
                f
            }
        };
        let event = read_form::<A::Event>(info, f, bytes, aligned, location)?;
        state.apply_with_meta(event, &Metadata::from_raw(meta));
        last = Some(seq);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(last)
}

/// Loads `A` of `id` from `src`: the stored snapshot if it is usable, then
/// the tail of the stream.
fn load_with<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    id: StreamId,
    policy: &Snapshots<A>,
    scratch: &mut AlignedVec<16>,
) -> Result<Loaded<A>> {
    load_until(src, info, id, None, policy, scratch)
}

/// [`load_with`], folding only up to stream sequence `until` if given (a
/// snapshot covering more is ignored).
fn load_until<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    id: StreamId,
    until: Option<u64>,
    policy: &Snapshots<A>,
    scratch: &mut AlignedVec<16>,
) -> Result<Loaded<A>> {
    // A stream that does not exist yet loads as the default state; looking
    // at it creates nothing.
    let Some(tag) = src.tag(info)? else {
        return Ok(Loaded {
            state: A::default(),
            version: None,
            snapshot: None,
        });
    };
    let version = match (src.version(tag, id.0)?, until) {
        (Some(v), Some(u)) => Some(v.min(u)),
        (v, _) => v,
    };
    let mut start = None;
    if let (Some(codec), Some(version)) = (policy.codec(), version) {
        if let Some(value) = src.state(&snapshot::key(tag, id.0))? {
            // Anything unusable (damaged, another layout, past the stream's
            // end) is ignored: the fold then starts from the first event.
            start = codec
                .decode(value, scratch)
                .filter(|&(_, covers)| covers <= version);
        }
    }
    let (mut state, snapshot) = match start {
        Some((state, covers)) => (state, Some(covers)),
        None => (A::default(), None),
    };
    let from = snapshot.map_or(0, |s| s + 1);
    let last = fold_from(src, info, tag, id, from, until, &mut state, scratch)?.or(snapshot);
    if last != version {
        return Err(Error::Corruption {
            location: Location::Record(format!(
                "the stream index of stream {:?} id {}",
                info.name, id.0
            )),
            detail: format!(
                "the index says the last sequence is {version:?}, but the events end at {last:?}"
            ),
        });
    }
    Ok(Loaded {
        state,
        version: version.map(StreamSequence),
        snapshot: snapshot.map(StreamSequence),
    })
}

/// Loads `A` of `id` in the read snapshot `view` (for `Varve::load` and
/// `StreamReader::load`).
pub(crate) fn load_in<A: Aggregate>(
    view: &mut View,
    info: &StreamInfo,
    id: StreamId,
) -> Result<Loaded<A>> {
    let mut scratch = AlignedVec::new();
    load_with(
        view,
        info,
        id,
        &A::snapshots().for_events(&crate::event::Schema::of::<A::Event>().lineage()),
        &mut scratch,
    )
}

/// Loads, decides and appends in one write transaction. The outer error is
/// the store's, the inner one the aggregate's rejection.
///
/// `Store::write` may run the closure twice (after growing the map, the first
/// attempt having been aborted): each run loads afresh and decides again,
/// which is why `handle` borrows the command and must be pure.
///
/// With a command id, the events' ids derive from it
/// ([`CommandId::event_id`](crate::CommandId::event_id)); if the first is
/// stored, the command was executed before: its original outcome is
/// rebuilt from the store and `handle` is not called.
pub(crate) fn execute<A: Aggregate>(
    store: &Store,
    info: &StreamInfo,
    entity: &Entity,
    command: &A::Command,
    options: &Execute<'_>,
) -> Result<Result<Executed<A>, A::Error>> {
    let policy = A::snapshots().for_events(&crate::event::Schema::of::<A::Event>().lineage());
    let expected = options.expected;
    let mut block = BlockBuilder::with_capacity(A::BUFFER_SIZE);
    let mut scratch = AlignedVec::new();
    let default_context = options
        .command_id
        .map(|c| Context::new().correlation(c).causation(EventId::from(c)));
    let context = options.context.or(default_context.as_ref());
    store.write(|txn| {
        if let Some(done) = replay_command(txn, info, entity, options, &policy, &mut scratch)? {
            return Ok(Ok(done));
        }
        let id = match entity {
            Entity::Id(id) => Some(*id),
            Entity::Key(key) => txn.entity_id(info, key)?,
        };
        let loaded = match id {
            Some(id) => load_with(txn, info, StreamId(id), &policy, &mut scratch)?,
            None => Loaded {
                state: A::default(),
                version: None,
                snapshot: None,
            },
        };
        if !expected.matches(loaded.version) {
            return Err(Error::VersionConflict {
                stream: info.name.to_string(),
                id: StreamId(id.unwrap_or(crate::storage::FIRST_KEYED_ID)),
                expected,
                actual: loaded.version,
            });
        }
        let events = match loaded.state.handle(command) {
            Ok(events) => events,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let mut state = loaded.state;
        if events.is_empty() {
            return Ok(Ok(Executed {
                state,
                version: loaded.version,
                positions: Vec::new(),
                idempotent: false,
            }));
        }
        if events.len() > u32::MAX as usize {
            return Err(Error::EventTooLarge {
                stream: info.name.to_string(),
                size: events.len(),
                max: u32::MAX as usize,
            });
        }
        let ids: Option<Vec<EventId>> = options
            .command_id
            .map(|c| (0..events.len() as u32).map(|i| c.event_id(i)).collect());
        serialize_with_meta(&mut block, &info.name, &events, ids.as_deref(), context)?;
        let placed = txn.append_to(info, entity, expected, &mut block)?;
        let id = match (id, entity) {
            (Some(id), _) => StreamId(id),
            (None, Entity::Key(key)) => {
                StreamId(txn.entity_id(info, key)?.ok_or_else(|| Error::Corruption {
                    location: Location::Record(format!("entity keys of stream {:?}", info.name)),
                    detail: "a key allocated in this transaction does not read back".into(),
                })?)
            }
            (None, Entity::Id(id)) => StreamId(*id),
        };
        let (first_seq, first_global) = (placed.first_seq, placed.first_global);
        // The append created the stream if it did not exist.
        let tag = txn.stream_tag(info)?.ok_or_else(|| Error::Corruption {
            location: Location::Global(GlobalSequence(first_global)),
            detail: format!(
                "stream {:?} is not in the catalog after an append",
                info.name
            ),
        })?;
        // Fold the new events as they were stored, as a later load will.
        let last = fold_from(
            txn,
            info,
            tag,
            id,
            first_seq,
            None,
            &mut state,
            &mut scratch,
        )?;
        let count = events.len() as u64;
        if last != Some(first_seq + count - 1) {
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(first_global)),
                detail: "the events just appended do not read back".into(),
            });
        }
        let version = first_seq + count - 1;
        if let Some(codec) = policy.codec() {
            if codec.due(loaded.snapshot.map(|s| s.0), version) {
                let value = codec
                    .encode(&state, version)
                    .map_err(|source| Error::Serialize {
                        stream: info.name.to_string(),
                        source,
                    })?;
                txn.state_put(&snapshot::key(tag, id.0), &value)?;
            }
        }
        Ok(Ok(Executed {
            state,
            version: Some(StreamSequence(version)),
            positions: (0..count)
                .map(|i| {
                    (
                        StreamSequence(first_seq + i),
                        GlobalSequence(first_global + i),
                    )
                })
                .collect(),
            idempotent: false,
        }))
    })
}

/// The original outcome of a command whose id's first event is stored:
/// its events' positions and the state right after them. `None` if the
/// command's first event id is not stored.
fn replay_command<A: Aggregate>(
    txn: &mut WriteTxn<'_>,
    info: &StreamInfo,
    entity: &Entity,
    options: &Execute<'_>,
    policy: &Snapshots<A>,
    scratch: &mut AlignedVec<16>,
) -> Result<Option<Executed<A>>> {
    let Some(command) = options.command_id else {
        return Ok(None);
    };
    let Some(first) = txn.event_by_id(&command.event_id(0).0)? else {
        return Ok(None);
    };
    let tag = txn.stream_tag(info)?;
    let id = match entity {
        Entity::Id(id) => Some(*id),
        Entity::Key(key) => txn.entity_id(info, key)?,
    };
    let stored_elsewhere = Some(first.tag) != tag || Some(first.id) != id;
    if stored_elsewhere {
        let name = txn.stream_name(first.tag)?;
        return Err(Error::EventIdConflict {
            stream: info.name.to_string(),
            id: StreamId(id.unwrap_or(crate::storage::FIRST_KEYED_ID)),
            event_id: command.event_id(0),
            index: 0,
            stored: Box::new(crate::error::StoredAt {
                stream: name,
                id: StreamId(first.id),
                sequence: StreamSequence(first.seq),
                global: GlobalSequence(first.global),
            }),
            reason: "this command id was executed against another stream or stream id",
        });
    }
    // The command's events are one block: consecutive from the first.
    let mut positions = vec![(StreamSequence(first.seq), GlobalSequence(first.global))];
    for i in 1u32.. {
        match txn.event_by_id(&command.event_id(i).0)? {
            Some(e)
                if e.tag == first.tag && e.id == first.id && e.seq == first.seq + u64::from(i) =>
            {
                positions.push((StreamSequence(e.seq), GlobalSequence(e.global)));
            }
            _ => break,
        }
    }
    let last = first.seq + positions.len() as u64 - 1;
    let loaded = load_until(txn, info, StreamId(first.id), Some(last), policy, scratch)?;
    Ok(Some(Executed {
        state: loaded.state,
        version: Some(StreamSequence(last)),
        positions,
        idempotent: true,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rkyv::rancor;
    use rkyv::{Archive, Deserialize, Serialize};

    use super::*;
    use crate::event::Event;

    /// Events and state values in memory, in place of a store. Each payload
    /// sits at `offset` bytes into an aligned buffer.
    struct Memory {
        payloads: Vec<AlignedVec<16>>,
        offset: usize,
        /// What the "index" says the last sequence is.
        version: Option<u64>,
        state: HashMap<Vec<u8>, Vec<u8>>,
    }

    impl Memory {
        fn new(events: &[u64], offset: usize) -> Memory {
            let payloads = events
                .iter()
                .map(|e| {
                    let bytes = rkyv::to_bytes::<rancor::Error>(&Added(*e)).unwrap();
                    let mut shifted = AlignedVec::new();
                    shifted.extend_from_slice(&[0; 16][..offset]);
                    shifted.extend_from_slice(&bytes);
                    shifted
                })
                .collect();
            Memory {
                payloads,
                offset,
                version: events.len().checked_sub(1).map(|v| v as u64),
                state: HashMap::new(),
            }
        }
    }

    /// The tag the in-memory source gives every stream.
    const MEMORY_TAG: u32 = 0;

    impl Source for Memory {
        fn tag(&mut self, _: &StreamInfo) -> Result<Option<u32>> {
            Ok(Some(MEMORY_TAG))
        }

        fn version(&mut self, _: u32, _: u64) -> Result<Option<u64>> {
            Ok(self.version)
        }

        fn state(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
            Ok(self.state.get(key).map(Vec::as_slice))
        }

        fn walk(
            &mut self,
            _: u32,
            _: u64,
            from: u64,
            mut f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
        ) -> Result<()> {
            for (seq, p) in self.payloads.iter().enumerate().skip(from as usize) {
                let fp = Added::FINGERPRINT;
                if f(
                    seq as u64,
                    seq as u64,
                    fp,
                    &p[self.offset..],
                    RawMeta::default(),
                )?
                .is_break()
                {
                    break;
                }
            }
            Ok(())
        }
    }

    #[derive(Archive, Serialize)]
    struct Added(u64);

    impl Event for Added {
        const STREAM: &'static str = "sums";
        const BUFFER_SIZE: usize = 64;
        const TYPE_NAME: &'static str = "varvedb::aggregate::fold::tests::Added";
        const VERSION: u32 = 1;
        const FINGERPRINT: u64 = 0xadd;
        const NAME: &'static str = "Added";
        type Previous = crate::event::NoPrevious;
        fn upcast(previous: &crate::event::NoPrevious) -> Self {
            match *previous {}
        }
    }

    #[derive(Archive, Serialize, Deserialize, Default, Debug, PartialEq)]
    struct Sum(u64);

    impl Aggregate for Sum {
        type Event = Added;
        type Command = ();
        type Error = ();
        const STREAM: &'static str = "sums";
        fn apply(&mut self, event: &ArchivedAdded) {
            self.0 += event.0.to_native();
        }
        fn handle(&self, _: &()) -> Result<Vec<Added>, ()> {
            Ok(vec![])
        }
        fn snapshots() -> Snapshots<Self> {
            Snapshots::every(2)
        }
    }

    fn memory_info() -> StreamInfo {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::config::VarveConfig::default()).unwrap();
        store
            .open_stream(Sum::STREAM, &crate::typed::identity::<Added>())
            .unwrap()
    }

    fn load(memory: &mut Memory) -> Result<Loaded<Sum>> {
        load_with(
            memory,
            &memory_info(),
            StreamId(7),
            &Sum::snapshots(),
            &mut AlignedVec::new(),
        )
    }

    #[test]
    fn under_aligned_payloads_are_folded_from_an_aligned_copy() {
        let mut memory = Memory::new(&[1, 2, 3], 4);
        assert_eq!(
            &memory.payloads[0][4..],
            &*rkyv::to_bytes::<rancor::Error>(&Added(1)).unwrap()
        );
        let loaded = load(&mut memory).unwrap();
        assert_eq!(
            (loaded.state, loaded.version),
            (Sum(6), Some(StreamSequence(2)))
        );
    }

    #[test]
    fn a_snapshot_is_used_and_only_the_tail_folded() {
        let mut memory = Memory::new(&[1, 2, 3], 0);
        let codec = *Sum::snapshots().codec().unwrap();
        // A (deliberately different) state proves the snapshot was used.
        let value = codec.encode(&Sum(100), 1).unwrap();
        memory
            .state
            .insert(snapshot::key(MEMORY_TAG, 7).to_vec(), value);
        let loaded = load(&mut memory).unwrap();
        assert_eq!(
            (loaded.state, loaded.snapshot),
            (Sum(103), Some(StreamSequence(1)))
        );
    }

    #[test]
    fn a_snapshot_covering_more_than_the_stream_holds_is_ignored() {
        let mut memory = Memory::new(&[1, 2, 3], 0);
        let codec = *Sum::snapshots().codec().unwrap();
        let value = codec.encode(&Sum(100), 3).unwrap();
        memory
            .state
            .insert(snapshot::key(MEMORY_TAG, 7).to_vec(), value);
        let loaded = load(&mut memory).unwrap();
        assert_eq!((loaded.state, loaded.snapshot), (Sum(6), None));
    }

    #[test]
    fn events_ending_before_the_indexed_version_are_corruption_not_a_short_state() {
        let mut memory = Memory::new(&[1, 2, 3], 0);
        memory.version = Some(5);
        assert!(matches!(load(&mut memory), Err(Error::Corruption { .. })));
    }

    #[test]
    fn an_invalid_payload_is_corruption_at_its_position() {
        let mut memory = Memory::new(&[1, 2], 0);
        memory.payloads[1] = AlignedVec::new();
        match load(&mut memory) {
            Err(Error::Corruption {
                location: Location::Stream { sequence, .. },
                ..
            }) => assert_eq!(sequence, StreamSequence(1)),
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
