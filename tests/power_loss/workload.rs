//! The recorded workloads: what a process does to a store while the recorder
//! watches, acknowledging each append on a marker file as soon as it returns.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rkyv::{rancor, Archive, Deserialize, Serialize};
use varvedb::{
    Aggregate, Durability, Filter, GlobalEvent, HandlerError, Projection, ReadModel, Snapshots,
    StreamId, Varve, VarveConfig,
};

use super::replay::Rng;

/// Every event written: its bytes are a pure function of `(nonce, index,
/// count)`, so the checker regenerates what an acknowledgement promised.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, varvedb::Event)]
pub struct Written {
    pub nonce: u64,
    pub index: u32,
    pub count: u32,
    pub body: Vec<u8>,
}

/// Body sizes: `big` makes multi-page events (and map growth).
pub fn written(nonce: u64, index: u32, count: u32, big: bool) -> Written {
    let mut rng = Rng(nonce ^ (u64::from(index) << 40) ^ 0x90_1055);
    let len = if big {
        300 + rng.below(6_000)
    } else {
        match rng.below(10) {
            0 => 1_000 + rng.below(5_000),
            1..=3 => rng.below(700),
            _ => rng.below(60),
        }
    };
    let body = (0..len).map(|_| rng.next() as u8).collect();
    Written {
        nonce,
        index,
        count,
        body,
    }
}

pub fn archived_bytes(event: &Written) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(event)
        .expect("serialize an event")
        .to_vec()
}

/// Whether a workload's events are big (from the nonce's workload bits).
pub fn big_events(workload: &str) -> bool {
    workload == "growth"
}

pub const WORKLOADS: [&str; 6] = [
    "single",
    "batch",
    "group",
    "growth",
    "aggregate",
    "projection",
];

pub fn durability(name: &str) -> Durability {
    match name {
        "full" => Durability::Full,
        "no-meta-sync" => Durability::NoMetaSync,
        "no-sync" => Durability::NoSync,
        other => panic!("unknown durability {other:?}"),
    }
}

pub fn config(workload: &str, durability: Durability) -> VarveConfig {
    VarveConfig {
        durability,
        map_size: if workload == "growth" {
            64 * 1024
        } else {
            VarveConfig::default().map_size
        },
        ..VarveConfig::default()
    }
}

/// The acknowledgement file, shared by writer threads.
#[derive(Clone)]
pub struct Acks(Arc<Mutex<File>>);

impl Acks {
    pub fn create(path: &Path) -> Acks {
        Acks(Arc::new(Mutex::new(
            File::create(path).expect("create the ack file"),
        )))
    }

    /// One `write()` of one line, after the append returned Ok.
    pub fn ack(&self, nonce: u64, stream: &str, id: u64, count: usize, first_global: u64) {
        let line = format!("ack {nonce} {stream} {id} {count} {first_global}\n");
        let mut file = self.0.lock().expect("the ack file");
        file.write_all(line.as_bytes()).expect("write an ack");
    }
}

/// An acknowledgement, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub nonce: u64,
    pub stream: String,
    pub id: u64,
    pub count: u32,
    pub first_global: u64,
}

impl Ack {
    pub fn parse(line: &str) -> Ack {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f.len(), f[0]), (6, "ack"), "an ack line: {line:?}");
        Ack {
            nonce: f[1].parse().expect("nonce"),
            stream: f[2].to_string(),
            id: f[3].parse().expect("id"),
            count: f[4].parse().expect("count"),
            first_global: f[5].parse().expect("global"),
        }
    }
}

/// The aggregate of the `aggregate` workload: a count and a checksum of its
/// events, stored as a snapshot every 3 events.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    pub events: u64,
    pub sum: u64,
}

impl Tally {
    pub fn fold(&mut self, nonce: u64, index: u32, body_len: usize) {
        self.events += 1;
        self.sum = self
            .sum
            .wrapping_mul(31)
            .wrapping_add(nonce ^ u64::from(index) ^ body_len as u64);
    }
}

impl Aggregate for Tally {
    type Event = Written;
    type Command = Vec<Written>;
    type Error = std::convert::Infallible;
    const STREAM: &'static str = "tallies";

    fn apply(&mut self, event: &ArchivedWritten) {
        self.fold(
            event.nonce.to_native(),
            event.index.to_native(),
            event.body.len(),
        );
    }

    fn handle(&self, command: &Vec<Written>) -> Result<Vec<Written>, Self::Error> {
        Ok(command.clone())
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(3)
    }
}

/// The in-store projection of the `projection` workload: how many events it
/// applied and the last one, so a lost, repeated or skipped event shows.
pub struct Counts;

impl Projection for Counts {
    fn filter(&self) -> Filter {
        Filter::all()
    }

    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let events = model.get_u64(b"events")?.unwrap_or(0);
        let global = event.global_sequence().0;
        if events != global {
            return Err(format!("event {global} applied after {events} events").into());
        }
        model.put_u64(b"events", events + 1)?;
        model.put_u64(b"last", global)?;
        Ok(())
    }
}

const STREAMS: [&str; 3] = ["ledger", "orders", "audit"];

/// Runs `workload` with `ops` appends against a new store in `store`.
pub fn run(workload: &str, durability: Durability, store: &Path, acks: &Acks, ops: u64, seed: u64) {
    let config = config(workload, durability);
    let big = big_events(workload);
    let mut varve = Varve::with_config(store, config.clone()).expect("open the store");
    let mut rng = Rng(seed);
    match workload {
        "single" | "batch" | "growth" => {
            for n in 0..ops {
                if workload == "single" && n == ops / 2 {
                    // Close and reopen: the open's own commit is recorded too.
                    drop(varve);
                    varve = Varve::with_config(store, config.clone()).expect("reopen");
                }
                let count = match workload {
                    "single" => 1,
                    _ => 1 + rng.below(8) as u32,
                };
                append(&varve, acks, &mut rng, n, count, big);
            }
        }
        "group" => {
            let threads: Vec<_> = (0..3u64)
                .map(|t| {
                    let varve = varve.clone();
                    let acks = acks.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(seed ^ ((t + 1) * 0x1234_5678));
                        for n in 0..ops.div_ceil(3) {
                            let count = 1 + rng.below(3) as u32;
                            append(&varve, &acks, &mut rng, (t << 16) | n, count, false);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("a writer thread");
            }
        }
        "aggregate" => {
            for n in 0..ops {
                let id = rng.below(2);
                let count = 1 + rng.below(4) as u32;
                let nonce = nonce_of(n);
                let events: Vec<Written> = (0..count)
                    .map(|i| written(nonce, i, count, false))
                    .collect();
                let done = varve
                    .execute::<Tally>(StreamId(id), &events)
                    .expect("execute a command");
                acks.ack(
                    nonce,
                    Tally::STREAM,
                    id,
                    events.len(),
                    done.positions[0].1 .0,
                );
            }
        }
        "projection" => {
            let mut projector = varve.projector("counts", Counts).expect("a projector");
            for n in 0..ops {
                let count = 1 + rng.below(3) as u32;
                append(&varve, acks, &mut rng, n, count, false);
                if n % 2 == 1 {
                    projector.catch_up().expect("catch up");
                }
            }
        }
        other => panic!("unknown workload {other:?}"),
    }
}

fn nonce_of(n: u64) -> u64 {
    n + 1
}

fn append(varve: &Varve, acks: &Acks, rng: &mut Rng, n: u64, count: u32, big: bool) {
    let s = STREAMS[rng.below(STREAMS.len() as u64) as usize];
    let id = rng.below(4);
    let nonce = nonce_of(n);
    let mut stream = varve.stream::<Written, 1024>(s).expect("open a stream");
    let events: Vec<Written> = (0..count).map(|i| written(nonce, i, count, big)).collect();
    let global = if count == 1 {
        stream
            .append(StreamId(id), &events[0])
            .expect("append")
            .1
             .0
    } else {
        stream
            .append_batch(StreamId(id), &events)
            .expect("append a batch")[0]
            .1
             .0
    };
    acks.ack(nonce, s, id, events.len(), global);
}
