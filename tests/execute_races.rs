//! A command is loaded and decided outside the store's write lock, and still
//! takes effect as if it alone had run: other writers commit while it folds
//! and decides, and whatever they commit to its stream id in between is
//! folded in and the command decided again, so no update is lost, each
//! version has one winner, and expected versions, command ids, entity keys
//! and snapshots behave as when the whole command held the lock.
//!
//! The races are forced, not hoped for: a handler (or a fold) waits for
//! another thread's append to be acknowledged before it returns. Had the
//! command held the write lock, that append could not commit: every such
//! wait is bounded, and fails the test instead of hanging.

use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Aggregate, CommandId, Error, Execute, ExecuteError, ExpectedVersion, Snapshots, StreamId,
    StreamSequence, Varve,
};

/// Far longer than an append takes: one still waiting after it waits for
/// the command's write lock.
const WAIT: Duration = Duration::from_secs(10);

/// One more: each event names the count it makes, so a decision made on a
/// stale state shows in the fold.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, varvedb::Event)]
#[event(stream = "counts")]
struct Counted {
    to: u64,
}

/// Why a [`Bump`] was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The count is at its limit.
    Full,
    /// The hook failed (its append never committed).
    Hook(String),
}

/// Raise the count by `by`, below `limit` if given. Runs `hook` (once)
/// before deciding, and counts its decisions.
#[derive(Default)]
struct Bump {
    by: u64,
    limit: Option<u64>,
    hook: Cell<Option<Hook>>,
    decisions: Cell<u32>,
}

type Hook = Box<dyn FnOnce() -> Result<(), String>>;

impl Bump {
    fn by(by: u64) -> Bump {
        Bump {
            by,
            ..Bump::default()
        }
    }

    fn limit(mut self, limit: u64) -> Bump {
        self.limit = Some(limit);
        self
    }

    /// Runs `hook` in the first decision, before it reads the state.
    fn racing(self, hook: impl FnOnce() -> Result<(), String> + 'static) -> Bump {
        self.hook.set(Some(Box::new(hook)));
        self
    }
}

/// The count, and how many events did not follow from the state they were
/// folded on (a lost or doubled update).
#[derive(Default, Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
struct State {
    n: u64,
    broken: u64,
}

impl State {
    fn apply(&mut self, event: &ArchivedCounted) {
        let to = event.to.to_native();
        if to != self.n + 1 {
            self.broken += 1;
        }
        self.n = to;
    }

    fn handle(&self, bump: &Bump) -> Result<Vec<Counted>, Refused> {
        bump.decisions.set(bump.decisions.get() + 1);
        if let Some(hook) = bump.hook.take() {
            hook().map_err(Refused::Hook)?;
        }
        if bump.limit.is_some_and(|l| self.n + bump.by > l) {
            return Err(Refused::Full);
        }
        Ok((1..=bump.by).map(|i| Counted { to: self.n + i }).collect())
    }
}

macro_rules! count_aggregate {
    ($name:ident, $snapshots:expr) => {
        #[derive(Default, Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
        struct $name(State);

        impl std::ops::Deref for $name {
            type Target = State;
            fn deref(&self) -> &State {
                &self.0
            }
        }

        impl Aggregate for $name {
            type Event = Counted;
            type Command = Bump;
            type Error = Refused;
            fn apply(&mut self, event: &ArchivedCounted) {
                self.0.apply(event)
            }
            fn handle(&self, bump: &Bump) -> Result<Vec<Counted>, Refused> {
                self.0.handle(bump)
            }
            fn snapshots() -> Snapshots<Self> {
                $snapshots
            }
        }
    };
}

count_aggregate!(Count, Snapshots::never());
count_aggregate!(SnapCount, Snapshots::every(3));
count_aggregate!(LoadSnapCount, Snapshots::every(3).on_load());
count_aggregate!(EveryCount, Snapshots::every(1));

/// Runs `f` on another thread and waits (at most [`WAIT`]) for its answer.
fn acknowledged<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> varvedb::Result<R> + Send + 'static,
) -> Result<R, String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WAIT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_) => Err(format!(
            "{what} was not acknowledged within {WAIT:?}: it waits for the command's write lock"
        )),
    }
}

/// A hook appending `Counted { to }` to `id` from another thread.
fn append_to(varve: &Varve, id: StreamId, to: u64) -> impl FnOnce() -> Result<(), String> + Send {
    let varve = varve.clone();
    move || {
        acknowledged("the racing append", move || {
            varve.events::<Counted>()?.append(id, &Counted { to })
        })
        .map(drop)
    }
}

fn events(varve: &Varve, id: StreamId) -> Vec<u64> {
    let reader = varve.events::<Counted>().unwrap().reader();
    reader
        .iter_stream(id, None)
        .unwrap()
        .map(|e| e.map(|e| e.to.to_native()))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn another_threads_append_commits_while_a_command_is_being_decided() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let (id, other) = (StreamId(1), StreamId(2));
    varve.execute::<Count>(id, &Bump::by(1)).unwrap();
    let bump = Bump::by(1).racing(append_to(&varve, other, 1));
    let done = varve.execute::<Count>(id, &bump).unwrap();
    // The append was to another stream id: decided once, on the read.
    assert_eq!(bump.decisions.get(), 1);
    assert_eq!((done.state.0.n, done.version), (2, Some(StreamSequence(1))));
    assert_eq!(events(&varve, other), [1]);
}

/// An aggregate whose fold, at its 5,000th event, waits for another
/// thread's append: the fold runs outside the write lock too.
#[derive(Default)]
struct SlowFold(u64);

/// The hook [`SlowFold`] runs once, and what it returned.
static FOLD_HOOK: Mutex<Option<SendHook>> = Mutex::new(None);
static FOLD_HOOK_RESULT: Mutex<Option<Result<(), String>>> = Mutex::new(None);

type SendHook = Box<dyn FnOnce() -> Result<(), String> + Send>;

impl Aggregate for SlowFold {
    type Event = Counted;
    type Command = ();
    type Error = std::convert::Infallible;
    const STREAM: &'static str = "counts";
    fn apply(&mut self, _: &ArchivedCounted) {
        self.0 += 1;
        if self.0 == 5_000 {
            if let Some(hook) = FOLD_HOOK.lock().unwrap().take() {
                *FOLD_HOOK_RESULT.lock().unwrap() = Some(hook());
            }
        }
    }
    fn handle(&self, _: &()) -> Result<Vec<Counted>, Self::Error> {
        Ok(vec![Counted { to: self.0 + 1 }])
    }
}

#[test]
fn another_threads_append_commits_while_a_command_folds_a_long_stream() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let (id, other) = (StreamId(3), StreamId(4));
    let batch: Vec<Counted> = (1..=10_000).map(|to| Counted { to }).collect();
    varve
        .events::<Counted>()
        .unwrap()
        .append_batch(id, &batch)
        .unwrap();
    *FOLD_HOOK.lock().unwrap() = Some(Box::new(append_to(&varve, other, 1)));
    let done = varve.execute::<SlowFold>(id, &()).unwrap();
    assert_eq!(
        FOLD_HOOK_RESULT.lock().unwrap().take(),
        Some(Ok(())),
        "the fold's hook ran and its append committed"
    );
    assert_eq!(
        (done.state.0, done.version),
        (10_001, Some(StreamSequence(10_000)))
    );
    assert_eq!(events(&varve, other), [1]);
}

#[test]
fn an_append_between_the_read_and_the_write_makes_the_command_decide_again() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(5);
    // Decided on count 0 (to 1, 2), the append of 1 lands, decided again.
    let bump = Bump::by(2).racing(append_to(&varve, id, 1));
    let done = varve.execute::<Count>(id, &bump).unwrap();
    assert_eq!(bump.decisions.get(), 2, "decided on the read, then again");
    assert_eq!(
        done.state.0,
        State { n: 3, broken: 0 },
        "decided again on the racing event"
    );
    assert_eq!(done.version, Some(StreamSequence(2)));
    let seqs: Vec<u64> = done.positions.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(events(&varve, id), [1, 2, 3]);
    assert_eq!(varve.load::<Count>(id).unwrap().state, done.state);
}

#[test]
fn a_command_decided_again_may_be_rejected_and_then_writes_nothing() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(6);
    let bump = Bump::by(1).limit(1).racing(append_to(&varve, id, 1));
    let refused = varve.execute::<Count>(id, &bump);
    assert!(
        matches!(refused, Err(ExecuteError::Rejected(Refused::Full))),
        "{refused:?}"
    );
    assert_eq!(bump.decisions.get(), 2);
    assert_eq!(events(&varve, id), [1], "only the racing append");
}

#[test]
fn an_expected_version_taken_by_a_racing_append_is_a_conflict() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(7);
    let bump = Bump::by(1).racing(append_to(&varve, id, 1));
    let options = Execute::new().expected(ExpectedVersion::NoStream);
    match varve.execute_with::<Count>(id, &bump, options) {
        Err(ExecuteError::Store(Error::VersionConflict {
            expected, actual, ..
        })) => {
            assert_eq!(
                (expected, actual),
                (ExpectedVersion::NoStream, Some(StreamSequence(0)))
            )
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(bump.decisions.get(), 1, "refused before deciding again");
    assert_eq!(events(&varve, id), [1]);
}

#[test]
fn a_racing_append_to_a_new_entity_key_is_folded_in_and_the_key_keeps_one_id() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let appender = varve.clone();
    // The key is new when the command reads; the racing append allocates it.
    let bump = Bump::by(1).racing(move || {
        acknowledged("the racing keyed append", move || {
            appender
                .events::<Counted>()?
                .append_keyed("cart-7", &Counted { to: 1 })
        })
        .map(drop)
    });
    let done = varve
        .execute_keyed::<Count>("cart-7", &bump, Execute::new())
        .unwrap();
    assert_eq!(bump.decisions.get(), 2);
    assert_eq!((done.state.0.n, done.version), (2, Some(StreamSequence(1))));
    let loaded = varve.load_keyed::<Count>("cart-7").unwrap();
    assert_eq!(loaded.state.0, State { n: 2, broken: 0 });
    let mut reader = varve.events::<Counted>().unwrap().reader();
    let id = reader.entity_id("cart-7").unwrap().expect("allocated");
    assert_eq!(events(&varve, id), [1, 2]);
}

/// A command id's retry, decided while its original commits.
fn a_retry_racing_its_original<A>(id: StreamId)
where
    A: Aggregate<Command = Bump, Error = Refused> + Send + std::fmt::Debug + 'static,
    A: std::ops::Deref<Target = State>,
{
    let (_dir, varve) = varvedb_suite::temp_store();
    varve.execute::<A>(id, &Bump::by(1)).unwrap();
    let command = CommandId::from_u128(0x5eed);
    let (tx, rx) = mpsc::channel();
    let original = varve.clone();
    // While the retry decides, the original (same command id) commits.
    let retry = Bump::by(1).racing(move || {
        let done = acknowledged("the original command", move || {
            original
                .execute_with::<A>(id, &Bump::by(1), Execute::new().command_id(command))
                .map_err(|e| match e {
                    ExecuteError::Store(e) => e,
                    ExecuteError::Rejected(r) => panic!("rejected: {r:?}"),
                })
        })?;
        tx.send(done).unwrap();
        Ok(())
    });
    let done = varve
        .execute_with::<A>(id, &retry, Execute::new().command_id(command))
        .unwrap();
    let original = rx.recv().unwrap();
    assert!(done.idempotent && !original.idempotent);
    assert_eq!(done.positions, original.positions);
    assert_eq!(done.version, original.version);
    assert_eq!(*done.state, *original.state);
    assert_eq!(*done.state, State { n: 2, broken: 0 });
    assert_eq!(retry.decisions.get(), 1, "the retry's decision was dropped");
    assert_eq!(events(&varve, id), [1, 2], "the command's event, once");
}

#[test]
fn a_retry_racing_its_original_answers_with_the_original_outcome() {
    // Its append joins the group commit, which finds the ids stored.
    a_retry_racing_its_original::<Count>(StreamId(8));
}

#[test]
fn a_retry_stored_with_a_snapshot_racing_its_original_answers_with_the_original_outcome() {
    // Its own write transaction (a snapshot is due) finds the command.
    a_retry_racing_its_original::<EveryCount>(StreamId(15));
}

#[test]
fn a_snapshot_after_a_decision_made_again_is_stored_where_a_lone_command_stores_it() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(9);
    varve.execute::<SnapCount>(id, &Bump::by(1)).unwrap();
    // Decided on 1 event; the racing one makes 2; the command's is the 3rd:
    // three folded since no snapshot, so one is stored covering sequence 2.
    let bump = Bump::by(1).racing(append_to(&varve, id, 2));
    let done = varve.execute::<SnapCount>(id, &bump).unwrap();
    assert_eq!(bump.decisions.get(), 2);
    let loaded = varve.load::<SnapCount>(id).unwrap();
    assert_eq!(loaded.snapshot, Some(StreamSequence(2)));
    assert_eq!(loaded.state, done.state);
    assert_eq!(loaded.state.0, State { n: 3, broken: 0 });
}

#[test]
fn a_snapshot_stored_between_the_read_and_the_write_counts_for_the_interval() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(10);
    let filled: Vec<Counted> = (1..=4).map(|to| Counted { to }).collect();
    varve
        .events::<Counted>()
        .unwrap()
        .append_batch(id, &filled)
        .unwrap();
    // The command reads 4 events and no snapshot; meanwhile a load stores
    // one covering them. Folded on top of it, the command's one event is
    // short of the interval: no snapshot, as if the command had run after
    // the load. (Counting from the read's, it would store one.)
    let loader = varve.clone();
    let bump = Bump::by(1).racing(move || {
        acknowledged("the snapshotting load", move || {
            loader.load::<LoadSnapCount>(id)
        })
        .map(drop)
    });
    let done = varve.execute::<LoadSnapCount>(id, &bump).unwrap();
    assert_eq!(bump.decisions.get(), 1, "no event raced: decided once");
    assert_eq!(done.state.0.n, 5);
    let loaded = varve.load::<LoadSnapCount>(id).unwrap();
    assert_eq!(loaded.snapshot, Some(StreamSequence(3)));
    assert_eq!(loaded.state, done.state);
}

#[test]
fn racing_commands_on_one_aggregate_each_count_once_with_dense_versions() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(11);
    let (threads, each) = (4u64, 40u64);
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (varve, start) = (varve.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                (0..each)
                    .map(|_| {
                        let done = varve.execute::<SnapCount>(id, &Bump::by(1)).unwrap();
                        let version = done.version.unwrap().0;
                        assert_eq!(done.positions.len(), 1);
                        // The state returned is the one right after its event.
                        assert_eq!(
                            done.state.0,
                            State {
                                n: version + 1,
                                broken: 0
                            }
                        );
                        version
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (0..threads * each).collect::<Vec<_>>());
    let replayed = varve.load::<Count>(id).unwrap();
    assert_eq!(
        replayed.state.0,
        State {
            n: threads * each,
            broken: 0
        }
    );
    let snapshotted = varve.load::<SnapCount>(id).unwrap();
    assert_eq!(snapshotted.state.0, replayed.state.0);
    assert!(snapshotted.snapshot.is_some());
}

#[test]
fn racing_commands_never_exceed_a_limit_they_check() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(12);
    let (threads, each, limit) = (4, 30, 50u64);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (varve, start) = (varve.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                (0..each)
                    .filter(
                        |_| match varve.execute::<Count>(id, &Bump::by(1).limit(limit)) {
                            Ok(_) => true,
                            Err(ExecuteError::Rejected(Refused::Full)) => false,
                            Err(e) => panic!("{e:?}"),
                        },
                    )
                    .count() as u64
            })
        })
        .collect();
    let accepted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(accepted, limit);
    let loaded = varve.load::<Count>(id).unwrap();
    assert_eq!(
        loaded.state.0,
        State {
            n: limit,
            broken: 0
        }
    );
}

#[test]
fn racing_expected_versions_have_exactly_one_winner_each() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(13);
    let (threads, target) = (4, 60u64);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let varve = varve.clone();
            thread::spawn(move || {
                let (mut won, mut conflicts) = (Vec::new(), 0u64);
                loop {
                    let loaded = varve.load::<Count>(id).unwrap();
                    if loaded.state.0.n >= target {
                        return (won, conflicts);
                    }
                    let options = Execute::new().expected(loaded.expected());
                    match varve.execute_with::<Count>(id, &Bump::by(1), options) {
                        Ok(done) => won.push(done.version.unwrap().0),
                        Err(ExecuteError::Store(Error::VersionConflict { actual, .. })) => {
                            assert!(actual > loaded.version, "a conflict moves forward");
                            conflicts += 1;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        })
        .collect();
    let mut won: Vec<u64> = Vec::new();
    for h in handles {
        won.extend(h.join().unwrap().0);
    }
    won.sort_unstable();
    assert_eq!(
        won,
        (0..target).collect::<Vec<_>>(),
        "one winner per version"
    );
    assert_eq!(
        varve.load::<Count>(id).unwrap().state.0,
        State {
            n: target,
            broken: 0
        }
    );
}

/// Version 1 of an evolving event, and version 2 with its upcast.
mod versions {
    pub mod v1 {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        #[event(name = "Tallied", stream = "tallies")]
        pub struct Tallied {
            pub to: u32,
        }
    }

    pub mod v2 {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        #[event(name = "Tallied", stream = "tallies", version = 2, upcast_from = super::v1::Tallied)]
        pub struct Tallied {
            pub to: u64,
            pub by: String,
        }

        impl varvedb::Upcast<super::v1::Tallied> for Tallied {
            fn upcast(old: &super::v1::ArchivedTallied) -> Self {
                Tallied {
                    to: u64::from(old.to.to_native()),
                    by: "v1".into(),
                }
            }
        }
    }
}

use versions::v2::{ArchivedTallied, Tallied};

/// A tally over both versions: the count and who wrote each event.
#[derive(Default)]
struct Tally {
    n: u64,
    broken: u64,
    by: Vec<String>,
}

impl Aggregate for Tally {
    type Event = Tallied;
    type Command = Cell<Option<Hook>>;
    type Error = String;
    fn apply(&mut self, event: &ArchivedTallied) {
        if event.to.to_native() != self.n + 1 {
            self.broken += 1;
        }
        self.n = event.to.to_native();
        self.by.push(event.by.to_string());
    }
    fn handle(&self, hook: &Cell<Option<Hook>>) -> Result<Vec<Tallied>, String> {
        if let Some(hook) = hook.take() {
            hook()?;
        }
        Ok(vec![Tallied {
            to: self.n + 1,
            by: "command".into(),
        }])
    }
}

#[test]
fn a_command_decided_on_upcast_events_folds_a_racing_new_version_and_decides_again() {
    let dir = tempfile::tempdir().unwrap();
    let id = StreamId(14);
    {
        // The first release wrote two events.
        let varve = Varve::new(dir.path()).unwrap();
        let old = [1, 2].map(|to| versions::v1::Tallied { to });
        varve
            .events::<versions::v1::Tallied>()
            .unwrap()
            .append_batch(id, &old)
            .unwrap();
    }
    let varve = Varve::new(dir.path()).unwrap();
    let appender = varve.clone();
    let hook: Hook = Box::new(move || {
        acknowledged("the racing append of version 2", move || {
            appender.events::<Tallied>()?.append(
                id,
                &Tallied {
                    to: 3,
                    by: "racer".into(),
                },
            )
        })
        .map(drop)
    });
    let done = varve.execute::<Tally>(id, &Cell::new(Some(hook))).unwrap();
    assert_eq!((done.state.n, done.state.broken), (4, 0));
    assert_eq!(done.state.by, ["v1", "v1", "racer", "command"]);
    let loaded = varve.load::<Tally>(id).unwrap();
    assert_eq!((loaded.state.n, loaded.state.by), (4, done.state.by));
}
