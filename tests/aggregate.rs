//! An aggregate loaded from the store is exactly the fold of its events
//! (with or without snapshots, before and after a reopen), and `execute`
//! appends exactly what `handle` decided, once, even from many threads.

use proptest::prelude::*;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Aggregate, AggregateTest, Durability, ExecuteError, Snapshots, StreamId, StreamSequence, Varve,
    VarveConfig,
};

/// What happened to an account.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, varvedb::Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrew { cents: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AccountCommand {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AccountError {
    NotOpen,
    AlreadyOpen,
    Insufficient { balance: u64 },
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;
    const STREAM: &'static str = "accounts";

    fn apply(&mut self, event: &ArchivedAccountEvent) {
        match event {
            ArchivedAccountEvent::Opened { owner } => self.owner = Some(owner.to_string()),
            ArchivedAccountEvent::Deposited { cents } => self.balance += cents.to_native(),
            ArchivedAccountEvent::Withdrew { cents } => self.balance -= cents.to_native(),
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match (command, &self.owner) {
            (AccountCommand::Open { .. }, Some(_)) => Err(AccountError::AlreadyOpen),
            (AccountCommand::Open { owner }, None) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            (_, None) => Err(AccountError::NotOpen),
            (AccountCommand::Deposit { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Deposited { cents: *cents }])
            }
            (AccountCommand::Withdraw { cents }, Some(_)) if *cents > self.balance => {
                Err(AccountError::Insufficient {
                    balance: self.balance,
                })
            }
            (AccountCommand::Withdraw { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Withdrew { cents: *cents }])
            }
        }
    }
}

fn open(varve: &Varve, id: StreamId) {
    varve
        .execute::<Account>(
            id,
            &AccountCommand::Open {
                owner: "alice".into(),
            },
        )
        .unwrap();
}

#[test]
fn tellers_on_many_threads_leave_an_exact_balance_and_dense_versions() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(1);
    open(&varve, id);
    let (threads, per_thread) = (6u64, 25u64);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                let mut versions = Vec::new();
                for i in 0..per_thread {
                    let command = if i % 5 == 4 {
                        AccountCommand::Withdraw { cents: 1 }
                    } else {
                        AccountCommand::Deposit { cents: t + 1 }
                    };
                    let done = varve.execute::<Account>(id, &command).unwrap();
                    assert_eq!(done.positions.len(), 1);
                    assert_eq!(done.version, Some(done.positions[0].0));
                    versions.push(done.version.unwrap().0);
                }
                versions
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=threads * per_thread).collect();
    assert_eq!(versions, expected, "every version handed out once, no gap");

    // Each thread deposits 20 × (t + 1) and withdraws 5 × 1.
    let balance: u64 = (0..threads).map(|t| 20 * (t + 1) - 5).sum();
    let loaded = varve.load::<Account>(id).unwrap();
    assert_eq!(loaded.state.balance, balance);
    assert_eq!(loaded.version, Some(StreamSequence(threads * per_thread)));
}

#[test]
fn a_rejected_command_writes_nothing_and_returns_the_aggregates_error() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(9);
    let early = varve.execute::<Account>(id, &AccountCommand::Deposit { cents: 5 });
    assert!(matches!(
        early,
        Err(ExecuteError::Rejected(AccountError::NotOpen))
    ));
    assert_eq!(varve.load::<Account>(id).unwrap().version, None);

    open(&varve, id);
    varve
        .execute::<Account>(id, &AccountCommand::Deposit { cents: 5 })
        .unwrap();
    let overdraft = varve.execute::<Account>(id, &AccountCommand::Withdraw { cents: 6 });
    match overdraft {
        Err(ExecuteError::Rejected(AccountError::Insufficient { balance })) => {
            assert_eq!(balance, 5)
        }
        other => panic!("expected an overdraft rejection, got {other:?}"),
    }
    let loaded = varve.load::<Account>(id).unwrap();
    assert_eq!(
        (loaded.state.balance, loaded.version),
        (5, Some(StreamSequence(1)))
    );
    assert_eq!(
        varve
            .global_reader()
            .iter_from(Default::default())
            .unwrap()
            .count(),
        2
    );
}

#[test]
fn a_command_producing_no_event_appends_nothing() {
    #[derive(Archive, Serialize, varvedb::Event)]
    struct Noted;
    #[derive(Default)]
    struct Quiet;
    impl Aggregate for Quiet {
        type Event = Noted;
        type Command = bool;
        type Error = ();
        const STREAM: &'static str = "quiet";
        fn apply(&mut self, _: &ArchivedNoted) {}
        fn handle(&self, note: &bool) -> Result<Vec<Noted>, ()> {
            Ok(if *note { vec![Noted] } else { vec![] })
        }
    }
    let (_dir, varve) = varvedb_suite::temp_store();
    let done = varve.execute::<Quiet>(StreamId(1), &false).unwrap();
    assert!(done.positions.is_empty() && done.version.is_none());
    varve.execute::<Quiet>(StreamId(1), &true).unwrap();
    let done = varve.execute::<Quiet>(StreamId(1), &false).unwrap();
    assert_eq!(done.version, Some(StreamSequence(0)));
    assert!(done.positions.is_empty());
}

#[test]
fn a_reader_loads_the_same_state_as_the_store_on_another_thread() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(2);
    open(&varve, id);
    varve
        .execute::<Account>(id, &AccountCommand::Deposit { cents: 70 })
        .unwrap();
    let mut reader = varve
        .events_in::<AccountEvent>(Account::STREAM)
        .unwrap()
        .reader();
    let from_reader = std::thread::spawn(move || reader.load::<Account>(id).unwrap())
        .join()
        .unwrap();
    assert_eq!(from_reader, varve.load::<Account>(id).unwrap());
    assert_eq!(from_reader.state.owner.as_deref(), Some("alice"));
}

thread_local! {
    static DECISIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A note.
#[derive(Archive, Serialize, varvedb::Event)]
struct Note(String);

/// Appends one long note per command, counting its decisions; with
/// `SNAPSHOTS`, stores a snapshot with every command.
#[derive(Default, Archive, Serialize, Deserialize)]
struct Notebook<const SNAPSHOTS: bool> {
    notes: u64,
    bytes: u64,
}

impl<const SNAPSHOTS: bool> Aggregate for Notebook<SNAPSHOTS> {
    type Event = Note;
    type Command = usize;
    type Error = ();
    const STREAM: &'static str = "notebooks";
    fn apply(&mut self, ArchivedNote(note): &ArchivedNote) {
        self.notes += 1;
        self.bytes += note.len() as u64;
    }
    fn handle(&self, len: &usize) -> Result<Vec<Note>, ()> {
        DECISIONS.with(|d| d.set(d.get() + 1));
        Ok(vec![Note(format!("{:>len$}", self.notes))])
    }
    fn snapshots() -> Snapshots<Self> {
        if SNAPSHOTS {
            Snapshots::every(1)
        } else {
            Snapshots::never()
        }
    }
}

/// Executes 300 commands of 4,000-byte notes (1.2 MB) on a 256 KiB map;
/// returns how many decisions they took.
fn notes_across_map_growth<const SNAPSHOTS: bool>() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        map_size: 256 * 1024,
        durability: Durability::NoSync,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let id = StreamId(1);
    let commands = 300u64;
    let before = DECISIONS.with(|d| d.get());
    for n in 0..commands {
        let done = varve.execute::<Notebook<SNAPSHOTS>>(id, &4000).unwrap();
        assert_eq!(done.version, Some(StreamSequence(n)));
        assert_eq!(done.state.notes, n + 1);
    }
    let decisions = DECISIONS.with(|d| d.get()) - before;
    let loaded = varve.load::<Notebook<SNAPSHOTS>>(id).unwrap();
    assert_eq!(
        (loaded.state.notes, loaded.state.bytes),
        (commands, commands * 4000)
    );
    assert_eq!(loaded.version, Some(StreamSequence(commands - 1)));
    assert_eq!(
        loaded.snapshot,
        SNAPSHOTS.then_some(StreamSequence(commands - 1))
    );
    // Each command's note is stored once.
    assert_eq!(
        varve.global_reader().end().unwrap(),
        varvedb::GlobalSequence(commands)
    );
    let grown = std::fs::metadata(dir.path().join("data.mdb"))
        .unwrap()
        .len();
    assert!(grown > 1_000_000, "the map grew, to {grown} bytes");
    decisions
}

#[test]
fn a_command_whose_append_grows_the_map_is_written_once_and_decided_once() {
    // Its append joins the group commit, which grows the map and appends
    // the same block again: the state it was decided on did not change.
    assert_eq!(notes_across_map_growth::<false>(), 300);
}

#[test]
fn a_command_stored_with_its_snapshot_across_map_growth_is_decided_again_and_written_once() {
    // Its own write transaction (the snapshot is stored with the events)
    // is rolled back when the map fills, and the rerun decides again.
    assert!(notes_across_map_growth::<true>() > 300);
}

#[test]
fn the_given_when_then_helper_checks_events_errors_and_state() {
    AggregateTest::<Account>::given_no_events()
        .when(&AccountCommand::Open {
            owner: "bob".into(),
        })
        .then_expect_events(&[AccountEvent::Opened {
            owner: "bob".into(),
        }]);
    AggregateTest::<Account>::given([
        AccountEvent::Opened {
            owner: "bob".into(),
        },
        AccountEvent::Deposited { cents: 10 },
    ])
    .when(&AccountCommand::Withdraw { cents: 11 })
    .then_expect_error(&AccountError::Insufficient { balance: 10 });
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "bob".into(),
    }])
    .when(&AccountCommand::Deposit { cents: 3 })
    .then_expect_state(|account| assert_eq!(account.balance, 3));
}

#[test]
#[should_panic(expected = "other events")]
fn the_given_when_then_helper_fails_on_other_events() {
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "bob".into(),
    }])
    .when(&AccountCommand::Deposit { cents: 3 })
    .then_expect_events(&[AccountEvent::Deposited { cents: 4 }]);
}

// --- Property: load == in-memory fold --------------------------------------

/// A step of the model: owned events, folded in memory.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, varvedb::Event)]
enum Step {
    Add(u32),
    Double,
    Label(String),
}

/// An order-sensitive state, so a missed, repeated or reordered event shows.
#[derive(Archive, Serialize, Deserialize, Default, Debug, Clone, PartialEq, Eq)]
struct Tally {
    value: u64,
    events: u64,
    label: String,
}

impl Tally {
    fn step(&mut self, step: &Step) {
        self.events += 1;
        match step {
            Step::Add(n) => self.value = self.value.wrapping_add(u64::from(*n)),
            Step::Double => self.value = self.value.wrapping_mul(2),
            Step::Label(l) => self.label = format!("{l}@{}", self.value),
        }
    }

    fn apply_archived(&mut self, step: &ArchivedStep) {
        self.events += 1;
        match step {
            ArchivedStep::Add(n) => self.value = self.value.wrapping_add(u64::from(n.to_native())),
            ArchivedStep::Double => self.value = self.value.wrapping_mul(2),
            ArchivedStep::Label(l) => self.label = format!("{l}@{}", self.value),
        }
    }
}

/// The tally without snapshots.
#[derive(Default, Debug, PartialEq, Eq)]
struct Plain(Tally);

/// The same tally with a snapshot every 3 events.
#[derive(Archive, Serialize, Deserialize, Default, Debug, PartialEq, Eq)]
struct Snapped(Tally);

impl Aggregate for Plain {
    type Event = Step;
    type Command = Vec<Step>;
    type Error = ();
    const STREAM: &'static str = "tallies";
    fn apply(&mut self, step: &ArchivedStep) {
        self.0.apply_archived(step)
    }
    fn handle(&self, steps: &Vec<Step>) -> Result<Vec<Step>, ()> {
        Ok(steps.clone())
    }
}

impl Aggregate for Snapped {
    type Event = Step;
    type Command = Vec<Step>;
    type Error = ();
    const STREAM: &'static str = "tallies";
    fn apply(&mut self, step: &ArchivedStep) {
        self.0.apply_archived(step)
    }
    fn handle(&self, steps: &Vec<Step>) -> Result<Vec<Step>, ()> {
        Ok(steps.clone())
    }
    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(3)
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u32>().prop_map(Step::Add),
        Just(Step::Double),
        "[a-z]{0,12}".prop_map(Step::Label),
    ]
}

/// How a batch reaches the store.
#[derive(Debug, Clone, Copy)]
enum Via {
    Plain,
    Snapped,
    Stream,
}

fn write(varve: &Varve, id: StreamId, via: Via, batch: &[Step]) {
    let batch = batch.to_vec();
    match via {
        Via::Plain => drop(varve.execute::<Plain>(id, &batch).unwrap()),
        Via::Snapped => drop(varve.execute::<Snapped>(id, &batch).unwrap()),
        Via::Stream => drop(
            varve
                .events_in::<Step>("tallies")
                .unwrap()
                .append_batch(id, &batch)
                .unwrap(),
        ),
    }
}

fn check(varve: &Varve, id: StreamId, model: &Tally, len: u64) {
    let version = len.checked_sub(1).map(StreamSequence);
    let plain = varve.load::<Plain>(id).unwrap();
    assert_eq!((&plain.state.0, plain.version), (model, version));
    assert_eq!(plain.snapshot, None);
    let snapped = varve.load::<Snapped>(id).unwrap();
    assert_eq!((&snapped.state.0, snapped.version), (model, version));
    let mut reader = varve.events_in::<Step>("tallies").unwrap().reader();
    assert_eq!(reader.load::<Snapped>(id).unwrap(), snapped);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn load_equals_the_in_memory_fold_with_and_without_snapshots_and_across_reopen(
        batches in prop::collection::vec(
            (prop::collection::vec(step(), 1..6), 0..3u8),
            0..12,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = VarveConfig { durability: Durability::NoSync, ..VarveConfig::default() };
        let id = StreamId(5);
        let mut model = Tally::default();
        let mut len = 0u64;
        {
            let varve = Varve::with_config(dir.path(), config.clone()).unwrap();
            for (batch, via) in &batches {
                let via = [Via::Plain, Via::Snapped, Via::Stream][usize::from(*via)];
                write(&varve, id, via, batch);
                batch.iter().for_each(|s| model.step(s));
                len += batch.len() as u64;
                check(&varve, id, &model, len);
            }
        }
        let varve = Varve::with_config(dir.path(), config).unwrap();
        check(&varve, id, &model, len);
    }
}
