//! A bank on an embedded store: accounts as aggregates.
//!
//! Opens accounts, deposits to and withdraws from them under one business rule
//! (no overdraft), runs several tellers on threads against the same account,
//! refuses a client holding a stale version, and finally reopens the store to
//! show every balance rebuilt from the events alone.
//!
//! Run it with `cargo run --example bank`. The same bank runs on PostgreSQL
//! in `bank_postgres.rs`, which changes only how the store is opened.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Aggregate, Error, ExecuteError, Snapshots, StreamId, StreamSequence, Varve};

/// What happened to an account: past tense, one fact each.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, varvedb::Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrew { cents: u64 },
}

/// What a teller asks for.
#[derive(Debug, Clone)]
enum Command {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

/// Why the bank says no.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    AlreadyOpen,
    NoSuchAccount,
    Overdraft { balance: u64, wanted: u64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AlreadyOpen => f.write_str("the account is already open"),
            Refusal::NoSuchAccount => f.write_str("no such account"),
            Refusal::Overdraft { balance, wanted } => {
                write!(f, "cannot withdraw {wanted} from a balance of {balance}")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// An account's state, folded from its events. It is also stored as a
/// snapshot every 50 events, so it derives rkyv's traits too.
#[derive(Archive, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = Command;
    type Error = Refusal;
    const STREAM: &'static str = "accounts";

    // No logic here: events are facts, read zero-copy from the store.
    fn apply(&mut self, event: &ArchivedAccountEvent) {
        match event {
            ArchivedAccountEvent::Opened { owner } => self.owner = Some(owner.to_string()),
            ArchivedAccountEvent::Deposited { cents } => self.balance += cents.to_native(),
            ArchivedAccountEvent::Withdrew { cents } => self.balance -= cents.to_native(),
        }
    }

    // The business rules.
    fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, Refusal> {
        match (command, &self.owner) {
            (Command::Open { .. }, Some(_)) => Err(Refusal::AlreadyOpen),
            (Command::Open { owner }, None) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            (_, None) => Err(Refusal::NoSuchAccount),
            (Command::Deposit { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Deposited { cents: *cents }])
            }
            (Command::Withdraw { cents }, Some(_)) if *cents > self.balance => {
                Err(Refusal::Overdraft {
                    balance: self.balance,
                    wanted: *cents,
                })
            }
            (Command::Withdraw { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Withdrew { cents: *cents }])
            }
        }
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(50)
    }
}

/// A version for people: the last event's sequence, or "new".
fn show(version: Option<StreamSequence>) -> String {
    version.map_or_else(|| "new".to_string(), |v| v.to_string())
}

const ALICE: StreamId = StreamId(1);
const BOB: StreamId = StreamId(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    run(|| Varve::new(dir.path()))
}

/// The bank, on the store `open` opens (an empty one, opened again to show
/// the balances rebuilt from the events).
pub fn run(open: impl Fn() -> Result<Varve, Error>) -> Result<(), Box<dyn std::error::Error>> {
    let balances_before = {
        let varve = open()?;

        // Open two accounts and move some money.
        for (id, owner) in [(ALICE, "alice"), (BOB, "bob")] {
            let open = Command::Open {
                owner: owner.into(),
            };
            varve.execute::<Account>(id, &open)?;
        }
        varve.execute::<Account>(ALICE, &Command::Deposit { cents: 10_000 })?;
        let done = varve.execute::<Account>(BOB, &Command::Deposit { cents: 2_500 })?;
        println!(
            "bob has {} cents at version {}",
            done.state.balance,
            show(done.version)
        );

        // The business rule: a refusal is the aggregate's own error, and
        // nothing is written.
        match varve.execute::<Account>(BOB, &Command::Withdraw { cents: 9_999 }) {
            Err(ExecuteError::Rejected(refusal)) => println!("refused: {refusal}"),
            other => return Err(format!("expected a refusal, got {other:?}").into()),
        }

        // Four tellers on four threads serve alice at once. Each command is
        // loaded, decided and appended in one transaction, so none of them
        // sees a conflict, and her balance never goes below zero.
        let tellers: Vec<_> = (0..4u64)
            .map(|teller| {
                let varve = varve.clone();
                std::thread::spawn(move || -> Result<u32, ExecuteError<Refusal>> {
                    let mut refused = 0;
                    for round in 0..50 {
                        let command = if (teller + round) % 3 == 0 {
                            Command::Deposit { cents: 100 }
                        } else {
                            Command::Withdraw { cents: 150 }
                        };
                        match varve.execute::<Account>(ALICE, &command) {
                            Ok(_) => {}
                            Err(ExecuteError::Rejected(Refusal::Overdraft { .. })) => refused += 1,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(refused)
                })
            })
            .collect();
        let mut refused = 0;
        for teller in tellers {
            refused += teller.join().map_err(|_| "a teller panicked")??;
        }
        let alice = varve.load::<Account>(ALICE)?;
        println!(
            "after the tellers: alice has {} cents at version {} ({refused} overdrafts refused)",
            alice.state.balance,
            show(alice.version)
        );

        // An HTTP-style client read bob's account a while ago; meanwhile a
        // teller deposited. Its withdrawal, decided on the stale version, is
        // refused with a version conflict, and goes through after a reload.
        let seen = varve.load::<Account>(BOB)?;
        varve.execute::<Account>(BOB, &Command::Deposit { cents: 100 })?;
        let withdraw = Command::Withdraw { cents: 500 };
        match varve.execute_expected::<Account>(BOB, &withdraw, seen.expected()) {
            Err(ExecuteError::Store(Error::VersionConflict {
                expected, actual, ..
            })) => println!(
                "stale client refused: it expected {expected}, the account is at version {}",
                show(actual)
            ),
            other => return Err(format!("expected a conflict, got {other:?}").into()),
        }
        let fresh = varve.load::<Account>(BOB)?;
        varve.execute_expected::<Account>(BOB, &withdraw, fresh.expected())?;

        [ALICE, BOB].map(|id| {
            varve
                .load::<Account>(id)
                .map(|l| (l.state.balance, l.version))
        })
    };

    // Reopen the store: the balances come back from the events stored.
    let varve = open()?;
    for (id, before) in [ALICE, BOB].into_iter().zip(balances_before) {
        let before = before?;
        let loaded = varve.load::<Account>(id)?;
        let owner = loaded.state.owner.as_deref().unwrap_or("nobody");
        let how = match (loaded.snapshot, loaded.version) {
            (Some(s), Some(v)) => format!("its snapshot at {s} plus {} events", v.0 - s.0),
            _ => "all its events".to_string(),
        };
        println!(
            "reopened: {owner} has {} cents at version {}, rebuilt from {how}",
            loaded.state.balance,
            show(loaded.version),
        );
        assert_eq!((loaded.state.balance, loaded.version), before);
    }
    // Bob: 2500 deposited, +100, −500.
    assert_eq!(varve.load::<Account>(BOB)?.state.balance, 2_100);
    assert_eq!(varve.load::<Account>(BOB)?.version, Some(StreamSequence(3)));
    Ok(())
}
