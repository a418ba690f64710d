//! Folding a stream id into an aggregate (in a read snapshot or a write
//! transaction), and executing a command: decided on a read snapshot,
//! appended in a write transaction that folds only what was committed since.

use std::ops::ControlFlow;
use std::sync::Arc;

use rkyv::util::AlignedVec;

use super::snapshot::{self, Codec, Snapshots};
use super::{Aggregate, Executed, Loaded};
use crate::error::{Error, Location, Result};
use crate::id::{CommandId, EventId};
use crate::metadata::{Context, Execute, Metadata};
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::reader::{form_of, read_form, Form};
use crate::storage::{
    BlockBuilder, Entity, RawMeta, Store, StoredEvent, StreamInfo, View, WriteTxn,
};
use crate::stream::serialize_with_meta;

/// What a fold reads from: a read snapshot or a write transaction.
pub(crate) trait Source {
    /// The tag of `info`'s stream, `None` while the stream does not exist.
    fn tag(&mut self, info: &StreamInfo) -> Result<Option<u32>>;
    /// The last stream sequence of `(tag, id)`.
    fn version(&mut self, tag: u32, id: u64) -> Result<Option<u64>>;
    /// A value of the `state` database.
    fn state(&mut self, key: &[u8]) -> Result<Option<&[u8]>>;
    /// The stream id entity `key` of `info`'s stream maps to.
    fn entity_id(&mut self, info: &StreamInfo, key: &[u8]) -> Result<Option<u64>>;
    /// Where the event stored with `event_id` is.
    fn stored_event(&mut self, event_id: &[u8; 16]) -> Result<Option<StoredEvent>>;
    /// The name of the stream with `tag`.
    fn stream_name(&mut self, tag: u32) -> Result<String>;
    /// Whether entity `(tag, id)` was erased (its key deleted from the
    /// store's key vault).
    fn erased(&mut self, tag: u32, id: u64) -> Result<bool>;
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

    fn entity_id(&mut self, info: &StreamInfo, key: &[u8]) -> Result<Option<u64>> {
        match self.stream_tag(info)? {
            Some(tag) => View::entity_id(self, tag, key),
            None => Ok(None),
        }
    }

    fn stored_event(&mut self, event_id: &[u8; 16]) -> Result<Option<StoredEvent>> {
        Ok(self.event_by_id(event_id)?.map(|e| StoredEvent {
            tag: e.position.stream_tag,
            id: e.position.stream_id.0,
            seq: e.position.stream_sequence.0,
            global: e.position.global.0,
        }))
    }

    fn erased(&mut self, tag: u32, id: u64) -> Result<bool> {
        self.entity_erased(tag, id)
    }

    fn stream_name(&mut self, tag: u32) -> Result<String> {
        Ok(self.stream_by_tag(tag)?.name.to_string())
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

    fn entity_id(&mut self, info: &StreamInfo, key: &[u8]) -> Result<Option<u64>> {
        WriteTxn::entity_id(self, info, key)
    }

    fn stored_event(&mut self, event_id: &[u8; 16]) -> Result<Option<StoredEvent>> {
        self.event_by_id(event_id)
    }

    fn erased(&mut self, tag: u32, id: u64) -> Result<bool> {
        self.entity_erased(tag, id)
    }

    fn stream_name(&mut self, tag: u32) -> Result<String> {
        WriteTxn::stream_name(self, tag)
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
        // An erased entity's snapshot (sealed under the store's keys) is
        // not used: the fold then meets its first event, `Error::Erased`.
        if src.erased(tag, id.0)? {
            // Nothing to decode.
        } else if let Some(value) = usable(src.state(&snapshot::key(tag, id.0)))? {
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

/// `A`'s snapshot policy, bound to the versions of its event.
pub(crate) fn policy<A: Aggregate>() -> Snapshots<A> {
    A::snapshots().for_events(&crate::event::Schema::of::<A::Event>().lineage())
}

/// Loads `A` of `id` in the read snapshot `view` (for `Varve::load` and
/// `StreamReader::load`).
pub(crate) fn load_in<A: Aggregate>(
    view: &mut View,
    info: &StreamInfo,
    id: StreamId,
) -> Result<Loaded<A>> {
    let mut scratch = AlignedVec::new();
    load_with(view, info, id, &policy::<A>(), &mut scratch)
}

/// After a load (whose read snapshot is closed): stores `loaded` as `id`'s
/// snapshot, in a commit of its own, if `A`'s policy asks for snapshots on
/// load ([`Snapshots::on_load`]) and one is due. Returns whether it stored
/// one.
///
/// It never fails the load: a read-only store, or a policy without
/// `on_load`, writes nothing, and a failed write (a full disk, a map that
/// cannot grow) leaves the snapshot unwritten for the next due load or
/// command to store, and is reported (`varvedb.snapshot_skipped`). A snapshot stored meanwhile that covers as much or
/// more is kept.
pub(crate) fn store_loaded<A: Aggregate>(
    store: &Store,
    info: &StreamInfo,
    id: StreamId,
    loaded: &Loaded<A>,
) -> bool {
    let policy = policy::<A>();
    let Some(codec) = policy.codec().filter(|c| c.on_load()) else {
        return false;
    };
    let Some(version) = loaded.version.map(|v| v.0) else {
        return false;
    };
    if !codec.due(loaded.snapshot.map(|s| s.0), version)
        || store.check_writable("storing a snapshot").is_err()
    {
        return false;
    }
    // Encoded before the write lock is taken.
    let value = match codec.encode(&loaded.state, version) {
        Ok(value) => value,
        Err(e) => return skipped(info, id, version, &e),
    };
    let stored = store.write(|txn| {
        let Some(tag) = txn.stream_tag(info)? else {
            return Ok(false);
        };
        // Events are never removed, so this holds unless the store was
        // replaced under the handle: then the snapshot is not its own.
        if txn.version(tag, id.0)?.is_none_or(|v| v < version) {
            return Ok(false);
        }
        let key = snapshot::key(tag, id.0);
        if let Some(stored) = usable(txn.state_get(&key))? {
            if codec.covers(stored).is_some_and(|c| c >= version) {
                return Ok(false);
            }
        }
        txn.state_put(&key, &value)?;
        Ok(true)
    });
    stored.unwrap_or_else(|e| skipped(info, id, version, &e))
}

/// Reports (feature `tracing`, WARN `varvedb.snapshot_skipped`) a snapshot
/// a load could not store; the load itself succeeded. Returns `false`.
fn skipped(info: &StreamInfo, id: StreamId, version: u64, error: &dyn std::fmt::Display) -> bool {
    crate::trace::event!(
        WARN,
        "varvedb.snapshot_skipped",
        "a snapshot due on load could not be stored",
        stream = &*info.name,
        id = id.0,
        version = version,
        error = crate::trace::display(error),
    );
    false
}

/// The stream id `entity` names in `src`, `None` for an entity key not
/// allocated yet (whose stream id holds no events).
fn stream_id(src: &mut impl Source, info: &StreamInfo, entity: &Entity) -> Result<Option<u64>> {
    match entity {
        Entity::Id(id) => Ok(Some(*id)),
        Entity::Key(key) => src.entity_id(info, key),
    }
}

/// The empty state of a stream id without events.
fn empty<A: Aggregate>() -> Loaded<A> {
    Loaded {
        state: A::default(),
        version: None,
        snapshot: None,
    }
}

/// Folds `(tag, id)`'s events after `loaded.version` up to `to` (included)
/// into `loaded`.
fn advance<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    tag: u32,
    id: StreamId,
    loaded: &mut Loaded<A>,
    to: u64,
    scratch: &mut AlignedVec<16>,
) -> Result<()> {
    let from = loaded.version.map_or(0, |v| v.0 + 1);
    let last = fold_from(
        src,
        info,
        tag,
        id,
        from,
        Some(to),
        &mut loaded.state,
        scratch,
    )?;
    if last != Some(to) {
        return Err(Error::Corruption {
            location: Location::Record(format!(
                "the stream index of stream {:?} id {}",
                info.name, id.0
            )),
            detail: format!(
                "the index says sequence {to} is stored, but the events end at {last:?}"
            ),
        });
    }
    loaded.version = Some(StreamSequence(to));
    Ok(())
}

/// Brings `loaded`, the state of stream id `id` in an earlier read
/// snapshot, up to `src`: folds the events committed since. Returns whether
/// there were any (the state moved on).
fn catch_up<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    id: Option<u64>,
    loaded: &mut Loaded<A>,
    policy: &Snapshots<A>,
    scratch: &mut AlignedVec<16>,
) -> Result<bool> {
    let Some(id) = id else {
        // An entity key still unallocated: no events, as in the read.
        return Ok(false);
    };
    let Some(tag) = src.tag(info)? else {
        return Ok(false);
    };
    let now = src.version(tag, id)?;
    let before = loaded.version.map(|v| v.0);
    if now == before {
        return Ok(false);
    }
    match now {
        Some(now) if before.is_none_or(|b| b < now) => {
            advance(src, info, tag, StreamId(id), loaded, now, scratch)?;
        }
        // Fewer events than the read saw: the store was replaced under the
        // handle (a restore). Start over from what is there.
        _ => *loaded = load_with(src, info, StreamId(id), policy, scratch)?,
    }
    Ok(true)
}

/// What a command decided.
enum Decision<E> {
    /// Events were serialized into the block: this many.
    Append(u64),
    /// The command produced no event.
    Nothing,
    /// The aggregate rejected it.
    Rejected(E),
}

/// Checks `expected` against `loaded` (of stream id `id`), decides
/// `command` on it and serializes the events into `block`.
#[allow(clippy::too_many_arguments)]
fn decide<A: Aggregate>(
    info: &StreamInfo,
    id: Option<u64>,
    loaded: &Loaded<A>,
    command: &A::Command,
    expected: ExpectedVersion,
    command_id: Option<CommandId>,
    context: Option<&Context>,
    block: &mut BlockBuilder,
) -> Result<Decision<A::Error>> {
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
        Err(rejection) => return Ok(Decision::Rejected(rejection)),
    };
    if events.is_empty() {
        return Ok(Decision::Nothing);
    }
    if events.len() > u32::MAX as usize {
        return Err(Error::EventTooLarge {
            stream: info.name.to_string(),
            size: events.len(),
            max: u32::MAX as usize,
        });
    }
    let ids: Option<Vec<EventId>> =
        command_id.map(|c| (0..events.len() as u32).map(|i| c.event_id(i)).collect());
    serialize_with_meta(block, &info.name, &events, ids.as_deref(), context)?;
    Ok(Decision::Append(events.len() as u64))
}

/// The outcome of a command that appended nothing.
fn unchanged<A>(loaded: Loaded<A>) -> Executed<A> {
    Executed {
        state: loaded.state,
        version: loaded.version,
        positions: Vec::new(),
        idempotent: false,
    }
}

/// Executes a command: loads and decides it on a read snapshot, outside
/// the store's write lock, then appends in one write transaction that
/// folds only the events committed to the stream id since the read, and
/// decides again if there were any. The outer error is the store's, the
/// inner one the aggregate's rejection.
///
/// A command takes effect at one instant, as if it alone had run then:
/// - an outcome that writes nothing (a rejection, no events, a version
///   conflict, or the replay of a command id found stored) takes effect at
///   the read snapshot and is answered from it, without a write
///   transaction;
/// - events are appended only as decided on the stream id's newest state:
///   the write transaction looks up the stream id's version (one index
///   lookup) and, if events were committed since the read, folds them into
///   the state, checks the expected version again and decides again there.
///   So one winner per version, and no update lost, exactly as when the
///   whole command ran in the transaction.
///
/// `Store::write` may run its closure again (after growing the map, the
/// first attempt having been aborted): a later attempt decides again, on a
/// state caught up in its own transaction, which is why `handle` borrows
/// the command and must be pure.
///
/// With a command id, the events' ids derive from it
/// ([`CommandId::event_id`](crate::CommandId::event_id)); if the first is
/// stored, the command was executed before: its original outcome is
/// rebuilt from the store and `handle` is not called.
pub(crate) fn execute<A: Aggregate>(
    store: &Arc<Store>,
    info: &StreamInfo,
    entity: &Entity,
    command: &A::Command,
    options: &Execute<'_>,
) -> Result<Result<Executed<A>, A::Error>> {
    // A read-only store refuses every command, as it did when the whole
    // command ran in a write transaction.
    store.check_writable("writing")?;
    let policy = policy::<A>();
    let expected = options.expected;
    let mut scratch = AlignedVec::new();
    let default_context = options
        .command_id
        .map(|c| Context::new().correlation(c).causation(EventId::from(c)));
    let context = options.context.or(default_context.as_ref());

    // Outside the write lock: the state in a read snapshot.
    let (read_id, loaded) = {
        let mut view = store.snapshot()?;
        // An append through this handle would be refused (an older
        // program): so is the command, whatever it decides.
        view.check_appendable(info)?;
        if let Some(found) = stored_command(&mut view, info, entity, options)? {
            let loaded = load_until(
                &mut view,
                info,
                StreamId(found.id),
                Some(found.last),
                &policy,
                &mut scratch,
            )?;
            return Ok(Ok(found.executed(loaded.state)));
        }
        let id = stream_id(&mut view, info, entity)?;
        let loaded = match id {
            Some(id) => load_with(&mut view, info, StreamId(id), &policy, &mut scratch)?,
            None => empty(),
        };
        (id, loaded)
        // The snapshot ends here: `handle` below may take long, and an open
        // snapshot would hold up the map's growth meanwhile.
    };
    let mut block = BlockBuilder::with_capacity(A::BUFFER_SIZE);
    let decided = decide(
        info,
        read_id,
        &loaded,
        command,
        expected,
        options.command_id,
        context,
        &mut block,
    )?;
    let mut count = match decided {
        Decision::Append(count) => count,
        Decision::Nothing => return Ok(Ok(unchanged(loaded))),
        Decision::Rejected(rejection) => return Ok(Err(rejection)),
    };

    // Usually nothing was committed to the stream id since the read: the
    // events join the group commit, on condition that it is still so.
    let loaded = match policy.codec() {
        Some(codec) if codec.due(loaded.snapshot.map(|s| s.0), last_after(&loaded, count)) => {
            loaded
        }
        _ => match append_grouped(store, info, entity, options, loaded, &mut block, count)? {
            Ok(done) => return Ok(Ok(done)),
            Err(loaded) => loaded,
        },
    };

    // Events were committed since the read (or a snapshot is due, which is
    // stored with the events): a write transaction of its own, which folds
    // them onto the read's state and decides again. `read` holds that state
    // until an attempt consumes it.
    let mut read = Some((read_id, loaded));
    let mut attempt = 0u32;
    store.write(|txn| {
        attempt += 1;
        let base = read.take();
        if let Some(found) = stored_command(txn, info, entity, options)? {
            return Ok(Ok(rebuild(txn, info, found, base, &policy, &mut scratch)?));
        }
        let id = stream_id(txn, info, entity)?;
        let (loaded, moved) = match base {
            // The key was unallocated at the read (its state empty) or maps
            // to the same stream id: catch up.
            Some((read_id, mut loaded)) if read_id.is_none() || read_id == id => {
                let moved = catch_up(txn, info, id, &mut loaded, &policy, &mut scratch)?;
                (loaded, moved)
            }
            // A later attempt, its read state consumed: load afresh.
            _ => {
                let loaded = match id {
                    Some(id) => load_with(txn, info, StreamId(id), &policy, &mut scratch)?,
                    None => empty(),
                };
                (loaded, true)
            }
        };
        if moved || attempt > 1 {
            let decided = decide(
                info,
                id,
                &loaded,
                command,
                expected,
                options.command_id,
                context,
                &mut block,
            )?;
            count = match decided {
                Decision::Append(count) => count,
                Decision::Nothing => return Ok(Ok(unchanged(loaded))),
                Decision::Rejected(rejection) => return Ok(Err(rejection)),
            };
        }
        // The snapshot the state would load from now, for the interval.
        let base_snapshot = match (policy.codec(), txn.tag(info)?, id) {
            (Some(codec), Some(tag), Some(id)) => stored_base(
                txn,
                codec,
                tag,
                id,
                loaded.version.map(|v| v.0),
                loaded.snapshot.map(|s| s.0),
                &mut scratch,
            )?,
            _ => None,
        };
        let placed = match txn.append_to(info, entity, expected, &mut block) {
            Ok(placed) => placed,
            Err(e) => {
                // Nothing of this command was folded into the state: a
                // retry after growing the map starts from it.
                read = Some((id, loaded));
                return Err(e);
            }
        };
        let mut state = loaded.state;
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
        if last != Some(first_seq + count - 1) {
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(first_global)),
                detail: "the events just appended do not read back".into(),
            });
        }
        let version = first_seq + count - 1;
        if let Some(codec) = policy.codec() {
            if codec.due(base_snapshot, version) {
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

/// The stream sequence of the last of `count` events appended right after
/// `loaded`.
fn last_after<A>(loaded: &Loaded<A>, count: u64) -> u64 {
    loaded.version.map_or(0, |v| v.0 + 1) + count - 1
}

/// Appends a command's `count` events, decided on `loaded`, through the
/// group commit (sharing a durable commit with concurrent appends) if the
/// stream id is still at `loaded`'s version; `Err(loaded)` if it is not
/// (nothing was written).
fn append_grouped<A: Aggregate>(
    store: &Arc<Store>,
    info: &StreamInfo,
    entity: &Entity,
    options: &Execute<'_>,
    mut loaded: Loaded<A>,
    block: &mut BlockBuilder,
    count: u64,
) -> Result<Result<Executed<A>, Loaded<A>>> {
    let unchanged = match loaded.version {
        Some(v) => ExpectedVersion::Exact(v),
        None => ExpectedVersion::NoStream,
    };
    let placed = match store.append(info, entity.clone(), unchanged, block) {
        Ok(placed) => placed,
        Err(Error::VersionConflict { .. }) => return Ok(Err(loaded)),
        Err(e) => return Err(e),
    };
    // Committed: fold the new events as they were stored, as a later load
    // will, from a snapshot that holds them.
    let mut view = store.snapshot()?;
    let mut scratch = AlignedVec::new();
    if placed.idempotent {
        // The command's event ids were stored since the read: a retry of
        // it committed first. Answer with that one's outcome.
        let found =
            stored_command(&mut view, info, entity, options)?.ok_or_else(|| Error::Corruption {
                location: Location::Global(GlobalSequence(placed.first_global)),
                detail: "a command's event ids are stored but its first one is not found".into(),
            })?;
        let base = Some((Some(placed.id), loaded));
        return Ok(Ok(rebuild(
            &mut view,
            info,
            found,
            base,
            &policy::<A>(),
            &mut scratch,
        )?));
    }
    let last = last_after(&loaded, count);
    let tag = view.tag(info)?;
    let (Some(tag), true) = (tag, placed.first_seq + count - 1 == last) else {
        return Err(Error::Corruption {
            location: Location::Global(GlobalSequence(placed.first_global)),
            detail: "the events just appended do not read back where they were placed".into(),
        });
    };
    let id = StreamId(placed.id);
    advance(&mut view, info, tag, id, &mut loaded, last, &mut scratch)?;
    Ok(Ok(Executed {
        state: loaded.state,
        version: loaded.version,
        positions: (0..count)
            .map(|i| {
                (
                    StreamSequence(placed.first_seq + i),
                    GlobalSequence(placed.first_global + i),
                )
            })
            .collect(),
        idempotent: false,
    }))
}

/// The original outcome of the command `found` (executed meanwhile, by a
/// concurrent retry): the state right after its events, from `base` (a
/// read's state of the stream id, before them) if usable, else loaded.
fn rebuild<A: Aggregate>(
    src: &mut impl Source,
    info: &StreamInfo,
    found: Found,
    base: Option<(Option<u64>, Loaded<A>)>,
    policy: &Snapshots<A>,
    scratch: &mut AlignedVec<16>,
) -> Result<Executed<A>> {
    let loaded = match base {
        // Its events follow the read, so the read's state needs only them.
        Some((id, mut loaded))
            if id.is_none_or(|id| id == found.id)
                && loaded.version.is_none_or(|v| v.0 < found.first_seq) =>
        {
            let id = StreamId(found.id);
            advance(src, info, found.tag, id, &mut loaded, found.last, scratch)?;
            loaded
        }
        _ => load_until(
            src,
            info,
            StreamId(found.id),
            Some(found.last),
            policy,
            scratch,
        )?,
    };
    Ok(found.executed(loaded.state))
}

/// The last stream sequence covered by the snapshot of `(tag, id)` a load
/// of a stream id at `version` would start from in `src`, if any: the one
/// `known` (which the read decoded) without decoding it again.
fn stored_base<A>(
    src: &mut impl Source,
    codec: &Codec<A>,
    tag: u32,
    id: u64,
    version: Option<u64>,
    known: Option<u64>,
    scratch: &mut AlignedVec<16>,
) -> Result<Option<u64>> {
    let Some(version) = version else {
        return Ok(None);
    };
    let Some(value) = usable(src.state(&snapshot::key(tag, id)))? else {
        return Ok(None);
    };
    Ok(match codec.covers(value) {
        Some(covers) if covers > version => None,
        Some(covers) if Some(covers) == known => Some(covers),
        // Stored since the read (or unusable to it): usable only if it
        // decodes, as a load would find.
        Some(_) => codec.decode(value, scratch).map(|(_, covers)| covers),
        None => None,
    })
}

/// A command found executed: where its events are.
struct Found {
    /// The stream tag and stream id they are in.
    tag: u32,
    id: u64,
    first_seq: u64,
    /// The stream sequence of its last event.
    last: u64,
    positions: Vec<(StreamSequence, GlobalSequence)>,
}

impl Found {
    /// The command's original outcome, with the state right after it.
    fn executed<A>(self, state: A) -> Executed<A> {
        Executed {
            state,
            version: Some(StreamSequence(self.last)),
            positions: self.positions,
            idempotent: true,
        }
    }
}

/// Where the events of the command with `options`' command id are, if its
/// first event id is stored in `src`. An [`Error::EventIdConflict`] if it
/// is stored in another stream or stream id.
fn stored_command(
    src: &mut impl Source,
    info: &StreamInfo,
    entity: &Entity,
    options: &Execute<'_>,
) -> Result<Option<Found>> {
    let Some(command) = options.command_id else {
        return Ok(None);
    };
    let Some(first) = src.stored_event(&command.event_id(0).0)? else {
        return Ok(None);
    };
    let tag = src.tag(info)?;
    let id = stream_id(src, info, entity)?;
    let stored_elsewhere = Some(first.tag) != tag || Some(first.id) != id;
    if stored_elsewhere {
        let name = src.stream_name(first.tag)?;
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
        match src.stored_event(&command.event_id(i).0)? {
            Some(e)
                if e.tag == first.tag && e.id == first.id && e.seq == first.seq + u64::from(i) =>
            {
                positions.push((StreamSequence(e.seq), GlobalSequence(e.global)));
            }
            _ => break,
        }
    }
    Ok(Some(Found {
        tag: first.tag,
        id: first.id,
        first_seq: first.seq,
        last: first.seq + positions.len() as u64 - 1,
        positions,
    }))
}

/// A stored snapshot as a fold may use it: one that does not authenticate (an
/// encrypted store's sealed value, altered) is ignored like one that does not
/// decode: snapshots are a cache of the events.
fn usable(read: Result<Option<&[u8]>>) -> Result<Option<&[u8]>> {
    match read {
        Err(crate::Error::Unauthentic { .. }) => Ok(None),
        other => other,
    }
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

        fn entity_id(&mut self, _: &StreamInfo, _: &[u8]) -> Result<Option<u64>> {
            Ok(None)
        }

        fn stored_event(&mut self, _: &[u8; 16]) -> Result<Option<StoredEvent>> {
            Ok(None)
        }

        fn erased(&mut self, _: u32, _: u64) -> Result<bool> {
            Ok(false)
        }

        fn stream_name(&mut self, _: u32) -> Result<String> {
            Ok(Sum::STREAM.into())
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
