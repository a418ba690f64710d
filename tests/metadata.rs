//! Event metadata reaches every read path (stream reads, bytes, the global
//! log, folds, subscriptions, projections, aggregates), costs no byte when
//! unused, is covered by the record checksums, and a command with an id is
//! executed once: a retry gets the original outcome without `handle`.

use std::cell::Cell;
use std::time::Duration;

use rkyv::{Archive, Serialize};
use varvedb::{
    Aggregate, Append, CommandId, Context, CorrelationId, Error, EventId, Execute, ExecuteError,
    Filter, GlobalEvent, GlobalSequence, HandlerError, Metadata, Projection, ReadModel, StreamId,
    StreamSequence, Varve,
};
use varvedb_suite::{temp_store, Order};

fn full_context() -> Context {
    Context::new()
        .correlation(CorrelationId::from_u128(0xc0))
        .causation(EventId::from_u128(0xca))
        .user_bytes(b"tenant=7".to_vec())
        .unwrap()
}

fn assert_full(meta: &Metadata<'_>, id: u128) {
    assert_eq!(meta.event_id(), Some(EventId::from_u128(id)));
    assert_eq!(meta.correlation_id(), Some(CorrelationId::from_u128(0xc0)));
    assert_eq!(meta.causation_id(), Some(EventId::from_u128(0xca)));
    assert_eq!(meta.user_bytes(), Some(&b"tenant=7"[..]));
}

/// id 1: two events with full metadata; id 2: one without.
fn store_with_metadata() -> (tempfile::TempDir, Varve) {
    let (dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let context = full_context();
    let ids = [EventId::from_u128(1), EventId::from_u128(2)];
    orders
        .append_batch_with(
            StreamId(1),
            &[Order::numbered(1), Order::numbered(2)],
            Append::new().event_ids(&ids).context(&context),
        )
        .unwrap();
    orders.append(StreamId(2), &Order::numbered(3)).unwrap();
    (dir, varve)
}

#[test]
fn metadata_reaches_stream_reads_bytes_iterators_and_the_global_log() {
    let (_dir, varve) = store_with_metadata();
    let mut reader = varve.stream::<Order, 256>("orders").unwrap().reader();
    let event = reader
        .get_archived(StreamId(1), StreamSequence(1))
        .unwrap()
        .unwrap();
    assert_full(&event.metadata(), 2);
    assert_eq!(event.id, 2, "the payload is intact behind the metadata");
    let bytes = reader
        .get_bytes(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_full(&bytes.metadata(), 1);
    let iterated: Vec<Option<EventId>> = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .map(|e| e.unwrap().metadata().event_id())
        .collect();
    assert_eq!(
        iterated,
        [Some(EventId::from_u128(1)), Some(EventId::from_u128(2))]
    );
    let plain = reader
        .get_archived(StreamId(2), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert!(plain.metadata().is_empty());
    // The borrowed stream fold sees each event's metadata beside its payload.
    let folded = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .try_fold_with_metadata(Vec::new(), |mut seen, seq, order, meta| {
            assert_full(&meta, u128::from(seq.0) + 1);
            seen.push((order.id.to_native(), meta.event_id()));
            seen
        })
        .unwrap();
    assert_eq!(
        folded,
        [
            (1, Some(EventId::from_u128(1))),
            (2, Some(EventId::from_u128(2)))
        ]
    );

    let mut log = varve.global_reader();
    assert_full(&log.get(GlobalSequence(0)).unwrap().unwrap().metadata(), 1);
    let global_ids: Vec<Option<EventId>> = log
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| e.unwrap().metadata().event_id())
        .collect();
    assert_eq!(global_ids.len(), 3);
    assert_eq!(global_ids[2], None);
    // The borrowed fold sees the same, and the owned copy of an event too.
    let users = log
        .iter_from(GlobalSequence(0))
        .unwrap()
        .try_fold_entries(0, |n, e| {
            Ok(n + usize::from(e.metadata().user_bytes().is_some()))
        })
        .unwrap();
    assert_eq!(users, 2);
    let owned = log
        .get(GlobalSequence(1))
        .unwrap()
        .unwrap()
        .to_event_ref::<Order>()
        .unwrap();
    assert_full(&owned.metadata(), 2);
}

#[test]
fn subscriptions_see_metadata_and_filter_by_correlation() {
    let (_dir, varve) = store_with_metadata();
    let mut all = varve.subscribe(GlobalSequence(0));
    assert_full(&all.try_next().unwrap().unwrap().metadata(), 1);
    let mut flow = varve
        .subscribe(GlobalSequence(0))
        .with_filter(Filter::all().correlation(CorrelationId::from_u128(0xc0)));
    let got: Vec<GlobalSequence> = std::iter::from_fn(|| flow.try_next().unwrap())
        .map(|e| e.global_sequence())
        .collect();
    assert_eq!(got, [GlobalSequence(0), GlobalSequence(1)]);
    let mut none = varve
        .subscribe(GlobalSequence(0))
        .with_filter(Filter::all().correlation(CorrelationId::from_u128(1)));
    assert!(none.try_next().unwrap().is_none());
    // Correlation and stream together: both must hold.
    let mut both = varve.subscribe(GlobalSequence(0)).with_filter(
        Filter::all()
            .stream("returns")
            .correlation(CorrelationId::from_u128(0xc0)),
    );
    assert!(both.try_next().unwrap().is_none());
    let mut typed = varve
        .stream::<Order, 256>("orders")
        .unwrap()
        .reader()
        .subscribe(StreamId(1), StreamSequence(1));
    let next = typed.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_full(&next.metadata(), 2);
}

/// Counts, per correlation id, the events a projection applied.
struct ByCorrelation;

impl Projection for ByCorrelation {
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let key = match event.metadata().correlation_id() {
            Some(id) => id.to_string(),
            None => "none".into(),
        };
        let n = model.get_u64(key.as_bytes())?.unwrap_or(0);
        Ok(model.put_u64(key.as_bytes(), n + 1)?)
    }
}

#[test]
fn a_projection_sees_each_events_metadata() {
    let (_dir, varve) = store_with_metadata();
    varve
        .projector("by_correlation", ByCorrelation)
        .unwrap()
        .catch_up()
        .unwrap();
    let mut model = varve.read_model("by_correlation").unwrap();
    let key = CorrelationId::from_u128(0xc0).to_string();
    assert_eq!(model.get_u64(key.as_bytes()).unwrap(), Some(2));
    assert_eq!(model.get_u64(b"none").unwrap(), Some(1));
}

#[derive(Archive, Serialize, Debug, varvedb::Event)]
struct Withdrew(u64);

thread_local! {
    static HANDLED: Cell<u32> = const { Cell::new(0) };
}

/// An account with a limit; it records the causation of its last event.
#[derive(Default, Debug)]
struct Account {
    spent: u64,
    last_cause: Option<EventId>,
}

impl Aggregate for Account {
    type Event = Withdrew;
    type Command = u64;
    type Error = &'static str;
    const STREAM: &'static str = "accounts";

    fn apply(&mut self, event: &ArchivedWithdrew) {
        self.spent += event.0.to_native();
    }

    fn apply_with_meta(&mut self, event: &ArchivedWithdrew, metadata: &Metadata<'_>) {
        self.apply(event);
        self.last_cause = metadata.causation_id();
    }

    fn handle(&self, amount: &u64) -> Result<Vec<Withdrew>, &'static str> {
        HANDLED.with(|h| h.set(h.get() + 1));
        if self.spent + amount > 50 {
            return Err("over the limit");
        }
        Ok(vec![Withdrew(*amount), Withdrew(0)])
    }
}

#[test]
fn a_retried_command_gets_its_original_outcome_without_being_decided_again() {
    let (_dir, varve) = temp_store();
    let command = CommandId::from_u128(0xbeef);
    let once = Execute::new().command_id(command);
    let first = varve
        .execute_with::<Account>(StreamId(1), &30, once)
        .unwrap();
    assert_eq!(HANDLED.with(Cell::get), 1);
    assert_eq!(first.state.last_cause, Some(EventId::from(command)));
    // The state moves on after the command.
    varve
        .execute_with::<Account>(StreamId(1), &20, Execute::new())
        .unwrap();
    let handled = HANDLED.with(Cell::get);
    // Deciding 30 again would be refused (50 spent): the retry is not decided.
    let retry = varve
        .execute_with::<Account>(StreamId(1), &30, once)
        .unwrap();
    assert_eq!(HANDLED.with(Cell::get), handled, "handle ran for a retry");
    assert!(retry.idempotent && !first.idempotent);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(retry.version, first.version);
    assert_eq!(retry.state.spent, 30, "the state right after the original");
    assert_eq!(varve.load::<Account>(StreamId(1)).unwrap().state.spent, 50);
    // The events carry ids derived from the command.
    let mut log = varve.global_reader();
    let stored = log.get_by_id(command.event_id(1)).unwrap().unwrap();
    assert_eq!(stored.global_sequence(), first.positions[1].1);
    assert_eq!(
        stored.metadata().correlation_id(),
        Some(CorrelationId::from(command))
    );
    // The same command id against another stream id is refused.
    match varve.execute_with::<Account>(StreamId(2), &1, once) {
        Err(ExecuteError::Store(Error::EventIdConflict { stored, .. })) => {
            assert_eq!(stored.id, StreamId(1))
        }
        other => panic!("{other:?}"),
    }
    // A new command id is decided (and refused by the rule).
    let refused = varve.execute_with::<Account>(
        StreamId(1),
        &30,
        Execute::new().command_id(CommandId::from_u128(1)),
    );
    assert!(matches!(
        refused,
        Err(ExecuteError::Rejected("over the limit"))
    ));
}

#[test]
fn a_retried_command_with_snapshots_past_it_rebuilds_the_original_state() {
    #[derive(Default, Debug, Archive, Serialize, rkyv::Deserialize)]
    struct Counted(u64);
    impl Aggregate for Counted {
        type Event = Withdrew;
        type Command = u64;
        type Error = std::convert::Infallible;
        const STREAM: &'static str = "counted";
        fn apply(&mut self, event: &ArchivedWithdrew) {
            self.0 += event.0.to_native();
        }
        fn handle(&self, n: &u64) -> Result<Vec<Withdrew>, Self::Error> {
            Ok(vec![Withdrew(*n)])
        }
        fn snapshots() -> varvedb::Snapshots<Self> {
            varvedb::Snapshots::every(2)
        }
    }
    let (_dir, varve) = temp_store();
    let once = Execute::new().command_id(CommandId::from_u128(5));
    let first = varve
        .execute_with::<Counted>(StreamId(1), &3, once)
        .unwrap();
    for n in 0..5 {
        varve.execute::<Counted>(StreamId(1), &(10 + n)).unwrap();
    }
    let retry = varve
        .execute_with::<Counted>(StreamId(1), &3, once)
        .unwrap();
    assert_eq!((retry.state.0, retry.positions), (3, first.positions));
}

#[test]
fn user_bytes_past_the_cap_are_refused_and_at_the_cap_round_trip() {
    assert!(matches!(
        Context::new().user_bytes(vec![1; Context::MAX_USER_BYTES + 1]),
        Err(Error::MetadataTooLarge { size, max, .. }) if size == max + 1
    ));
    let (_dir, varve) = temp_store();
    let context = Context::new()
        .user_bytes(vec![7; Context::MAX_USER_BYTES])
        .unwrap();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    orders
        .append_with(
            StreamId(1),
            &Order::numbered(1),
            Append::new().context(&context),
        )
        .unwrap();
    let event = orders
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!(
        event.metadata().user_bytes().map(<[u8]>::len),
        Some(Context::MAX_USER_BYTES)
    );
    assert_eq!(event.metadata().event_id(), None);
    assert_eq!(event.note, "order number 1");
}

#[test]
fn a_flipped_bit_in_an_events_metadata_is_corruption_not_another_id() {
    if varvedb_suite::skip_when_encrypted(
        "flips a metadata byte found in the plaintext data file (tests/encryption.rs attacks sealed blocks)",
    ) {
        return;
    }
    let (dir, varve) = temp_store();
    let id = EventId::from_u128(0x5eed_5eed_5eed_5eed_5eed_5eed_5eed_5eed);
    varve
        .stream::<Order, 256>("orders")
        .unwrap()
        .append_with(StreamId(1), &Order::numbered(1), Append::new().event_id(id))
        .unwrap();
    drop(varve);
    // The id is in the data file twice: in the event's slot and as the
    // key of the ids index; both are damaged.
    varvedb_suite::flip_in_data_file(dir.path(), id.as_bytes(), 3);
    let varve = Varve::new(dir.path()).unwrap();
    let read = varve
        .stream::<Order, 256>("orders")
        .unwrap()
        .reader()
        .get_archived(StreamId(1), StreamSequence(0));
    assert!(matches!(read, Err(Error::Corruption { .. })), "{read:?}");
    assert!(!varve.verify().unwrap().is_ok());
}

/// The bytes of the data file's live event records, as LMDB stores them,
/// measured through the raw environment for the zero-cost promise.
fn block_len(dir: &std::path::Path) -> usize {
    use heed::types::Bytes;
    // SAFETY: the test owns the store directory and no varvedb handle is open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(dir) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let events = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let db = opener
                .database_options()
                .types::<Bytes, Bytes>()
                .name("events")
                .create(wtxn)?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit();
    let rtxn = env.read_txn().unwrap();
    events
        .iter(&rtxn)
        .unwrap()
        .map(|e| e.unwrap().1.len())
        .sum()
}

#[test]
fn events_without_metadata_cost_no_byte_and_ids_cost_sixteen() {
    let sizes: Vec<usize> = [0u8, 1, 2]
        .into_iter()
        .map(|kind| {
            let dir = tempfile::tempdir().unwrap();
            {
                let varve = Varve::new(dir.path()).unwrap();
                let mut orders = varve.stream::<Order, 256>("orders").unwrap();
                let ids: Vec<EventId> = (0..10).map(EventId::from_u128).collect();
                let events: Vec<Order> = (0..10).map(Order::numbered).collect();
                let context = Context::new()
                    .correlation(CorrelationId::from_u128(1))
                    .causation(EventId::from_u128(2));
                let options = match kind {
                    0 => Append::new(),
                    1 => Append::new().event_ids(&ids),
                    _ => Append::new().event_ids(&ids).context(&context),
                };
                orders
                    .append_batch_with(StreamId(1), &events, options)
                    .unwrap();
            }
            block_len(dir.path())
        })
        .collect();
    let plain = {
        let dir = tempfile::tempdir().unwrap();
        {
            let varve = Varve::new(dir.path()).unwrap();
            let events: Vec<Order> = (0..10).map(Order::numbered).collect();
            varve
                .stream::<Order, 256>("orders")
                .unwrap()
                .append_batch(StreamId(1), &events)
                .unwrap();
        }
        block_len(dir.path())
    };
    assert_eq!(sizes[0], plain, "Append::new() writes the format-1 block");
    assert_eq!(sizes[1] - sizes[0], 10 * 16, "an event id costs 16 bytes");
    assert_eq!(sizes[2] - sizes[0], 10 * 48, "three ids cost 48 bytes");
}

#[test]
fn a_follow_up_context_chains_causation_and_keeps_the_correlation() {
    let (_dir, varve) = store_with_metadata();
    let mut log = varve.global_reader();
    let cause = log.get(GlobalSequence(0)).unwrap().unwrap();
    let next = cause.metadata().follow_up();
    assert_eq!(next.causation_id(), Some(EventId::from_u128(1)));
    assert_eq!(next.correlation_id(), Some(CorrelationId::from_u128(0xc0)));
    assert_eq!(next.user(), None);
    // An event without a correlation starts the flow with its own id; one
    // without an id gives nothing to chain.
    let plain = log.get(GlobalSequence(2)).unwrap().unwrap();
    assert!(plain.metadata().follow_up().is_empty());
}

#[test]
fn metadata_reaches_the_borrowed_snapshot_loops_block_by_block() {
    let (_dir, varve) = store_with_metadata();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    // A plain block after a block with metadata in the same id: the loops
    // decide per block whether there is a prefix to skip.
    orders.append(StreamId(1), &Order::numbered(4)).unwrap();
    let snap = orders.reader().snapshot().unwrap();
    let seen: Vec<_> = snap
        .iter_stream(StreamId(1), None)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata();
            (
                entry.stream_sequence().0,
                entry.id.to_native(),
                meta.event_id(),
                meta.user_bytes().map(<[u8]>::to_vec),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                0,
                1,
                Some(EventId::from_u128(1)),
                Some(b"tenant=7".to_vec())
            ),
            (
                1,
                2,
                Some(EventId::from_u128(2)),
                Some(b"tenant=7".to_vec())
            ),
            (2, 4, None, None),
        ]
    );
    let entry = snap
        .iter_stream(StreamId(1), None)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_full(&entry.metadata(), 1);
    assert_eq!(entry.global_sequence(), GlobalSequence(0));

    let log = varve.snapshot().unwrap();
    let ids: Vec<_> = log
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.global_sequence().0,
                e.stream_id().0,
                e.metadata().event_id(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (0, 1, Some(EventId::from_u128(1))),
            (1, 1, Some(EventId::from_u128(2))),
            (2, 2, None),
            (3, 1, None),
        ]
    );
    let folded = orders
        .reader()
        .iter_stream(StreamId(1), Some(StreamSequence(1)))
        .unwrap()
        .try_fold_with_metadata(Vec::new(), |mut seen, seq, order, meta| {
            seen.push((seq.0, order.id.to_native(), meta.event_id()));
            seen
        })
        .unwrap();
    assert_eq!(
        folded,
        [(1, 2, Some(EventId::from_u128(2))), (2, 4, None)],
        "a fold starting inside a block with metadata"
    );
}
