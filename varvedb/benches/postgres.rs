//! VarveDB on PostgreSQL beside a raw `tokio-postgres` baseline on the same
//! server (issue 14): batch appends, single appends from 1 and 16 concurrent
//! clients, a stream scan, a global scan and an aggregate load.
//!
//! ```sh
//! cargo bench -p varvedb --features postgres --bench postgres
//! VARVEDB_BENCH_POSTGRES_URL=postgres://me@db.example/postgres \
//!   cargo bench -p varvedb --features postgres --bench postgres
//! VARVEDB_BENCH_SCALE=0.25 VARVEDB_BENCH_ROUNDS=3 cargo bench -p varvedb --features postgres --bench postgres
//! VARVEDB_BENCH_ONLY=raw cargo bench -p varvedb --features postgres --bench postgres   # the baseline alone
//! ```
//!
//! The server: `VARVEDB_BENCH_POSTGRES_URL` (a user allowed to create
//! databases), else a temporary cluster started with `initdb`/`pg_ctl` (see
//! `tests/support/pg.rs`, included here), fsync on. Each engine gets a
//! database of its own on that server, created fresh for every round.
//!
//! The baseline is what an application would write by hand: one `INSERT`
//! per event into a table with a `bigserial` and a unique `(stream, id,
//! sequence)` index, the events of a batch in one transaction. It gives no
//! ordering guarantee (a reader may see sequence 7 before 6 commits, and a
//! rolled-back insert leaves a hole); VarveDB's appends serialize on one head
//! row to keep the global sequence dense and commit-ordered, and batch
//! concurrent appends into one transaction (group commit). The targets
//! (issue 14): batches at least 0.8x the baseline; 16 clients at least 3x
//! one client.
//!
//! Rounds are interleaved (every workload of every engine once per round)
//! and the table shows the median over rounds, in operations per second.

// The harness module serves the tests too: what only they use is unused here.
#[allow(dead_code)]
#[path = "../../tests/support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use varvedb::{Aggregate, StreamId, Varve};

/// The benchmark's event: a deposit with a short note.
#[derive(Archive, Serialize, Clone, varvedb::Event)]
#[event(stream = "accounts")]
struct Deposited {
    cents: u64,
    note: String,
}

fn event(n: u64) -> Deposited {
    Deposited {
        cents: n % 1000,
        note: format!("deposit number {n}"),
    }
}

/// The balance of an account: the aggregate the load workload folds.
#[derive(Default)]
struct Balance(u64);

impl Aggregate for Balance {
    type Event = Deposited;
    type Command = ();
    type Error = std::convert::Infallible;

    fn apply(&mut self, event: &ArchivedDeposited) {
        self.0 += event.cents.to_native();
    }

    fn handle(&self, _: &()) -> Result<Vec<Deposited>, Self::Error> {
        Ok(Vec::new())
    }
}

fn scale() -> f64 {
    std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(1)
}

const BATCH: u64 = 100;
const CLIENTS: u64 = 16;
/// The events of the scanned stream id and of the aggregate loaded.
const LONG_STREAM: u64 = 1_000;

/// What one engine must do for each workload. Each call runs the whole
/// workload and returns the operations it did and how long they took.
trait Engine {
    const NAME: &'static str;
    fn batches(&self, count: u64) -> (u64, Duration);
    fn singles(&self, clients: u64, each: u64) -> (u64, Duration);
    fn seed_long_stream(&self);
    fn stream_scan(&self, times: u64) -> (u64, Duration);
    fn global_scan(&self) -> (u64, Duration);
    fn aggregate_load(&self, times: u64) -> (u64, Duration);
}

// ---------------------------------------------------------------------------
// The raw baseline

struct Raw {
    runtime: tokio::runtime::Runtime,
    url: String,
    payloads: Vec<Vec<u8>>,
}

const SCHEMA: &str = "CREATE TABLE raw_events (
    global bigserial PRIMARY KEY,
    stream text NOT NULL,
    stream_id bigint NOT NULL,
    seq bigint NOT NULL,
    payload bytea NOT NULL,
    UNIQUE (stream, stream_id, seq)
)";

const INSERT: &str =
    "INSERT INTO raw_events (stream, stream_id, seq, payload) VALUES ($1, $2, $3, $4)";

impl Raw {
    fn open(url: &str) -> Raw {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let raw = Raw {
            runtime,
            url: url.to_string(),
            payloads: (0..BATCH)
                .map(|n| {
                    rkyv::to_bytes::<rkyv::rancor::Error>(&event(n))
                        .expect("serialize")
                        .to_vec()
                })
                .collect(),
        };
        raw.runtime.block_on(async {
            raw.client()
                .await
                .batch_execute(SCHEMA)
                .await
                .expect("schema");
        });
        raw
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    fn payload(&self, n: u64) -> &[u8] {
        &self.payloads[(n % BATCH) as usize]
    }
}

impl Engine for Raw {
    const NAME: &'static str = "raw tokio-postgres";

    fn batches(&self, count: u64) -> (u64, Duration) {
        self.runtime.block_on(async {
            let mut client = self.client().await;
            let insert = client.prepare(INSERT).await.expect("prepare");
            let started = Instant::now();
            for b in 0..count {
                let tx = client.transaction().await.expect("begin");
                for i in 0..BATCH {
                    let seq = (b * BATCH + i) as i64;
                    tx.execute(&insert, &[&"batches", &1i64, &seq, &self.payload(i)])
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
            }
            (count * BATCH, started.elapsed())
        })
    }

    fn singles(&self, clients: u64, each: u64) -> (u64, Duration) {
        self.runtime.block_on(async {
            let mut connected = Vec::new();
            for _ in 0..clients {
                let client = self.client().await;
                let insert = client.prepare(INSERT).await.expect("prepare");
                connected.push((client, insert));
            }
            let stream = format!("singles{clients}");
            let started = Instant::now();
            let tasks: Vec<_> = connected
                .into_iter()
                .enumerate()
                .map(|(c, (client, insert))| {
                    let stream = stream.clone();
                    let payload = self.payload(c as u64).to_vec();
                    tokio::spawn(async move {
                        for seq in 0..each as i64 {
                            client
                                .execute(&insert, &[&stream, &(c as i64), &seq, &payload])
                                .await
                                .expect("insert");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("client");
            }
            (clients * each, started.elapsed())
        })
    }

    fn seed_long_stream(&self) {
        self.runtime.block_on(async {
            let mut client = self.client().await;
            let insert = client.prepare(INSERT).await.expect("prepare");
            let tx = client.transaction().await.expect("begin");
            for seq in 0..LONG_STREAM {
                tx.execute(
                    &insert,
                    &[&"accounts", &7i64, &(seq as i64), &self.payload(seq)],
                )
                .await
                .expect("insert");
            }
            tx.commit().await.expect("commit");
        })
    }

    fn stream_scan(&self, times: u64) -> (u64, Duration) {
        self.runtime.block_on(async {
            let client = self.client().await;
            let select = client
                .prepare(
                    "SELECT seq, payload FROM raw_events \
                     WHERE stream = $1 AND stream_id = $2 ORDER BY seq",
                )
                .await
                .expect("prepare");
            let started = Instant::now();
            let mut read = 0;
            for _ in 0..times {
                let rows = client
                    .query(&select, &[&"accounts", &7i64])
                    .await
                    .expect("scan");
                read += rows
                    .iter()
                    .filter(|r| !r.get::<_, &[u8]>(1).is_empty())
                    .count() as u64;
            }
            (read, started.elapsed())
        })
    }

    fn global_scan(&self) -> (u64, Duration) {
        self.runtime.block_on(async {
            let client = self.client().await;
            let started = Instant::now();
            let rows = client
                .query(
                    "SELECT global, payload FROM raw_events ORDER BY global",
                    &[],
                )
                .await
                .expect("scan");
            let bytes: usize = rows.iter().map(|r| r.get::<_, &[u8]>(1).len()).sum();
            assert!(bytes > 0);
            (rows.len() as u64, started.elapsed())
        })
    }

    fn aggregate_load(&self, times: u64) -> (u64, Duration) {
        self.runtime.block_on(async {
            let client = self.client().await;
            let select = client
                .prepare(
                    "SELECT payload FROM raw_events \
                     WHERE stream = $1 AND stream_id = $2 ORDER BY seq",
                )
                .await
                .expect("prepare");
            let started = Instant::now();
            for _ in 0..times {
                let mut balance = Balance::default();
                let mut aligned = rkyv::util::AlignedVec::<16>::new();
                for row in client
                    .query(&select, &[&"accounts", &7i64])
                    .await
                    .expect("load")
                {
                    aligned.clear();
                    aligned.extend_from_slice(row.get::<_, &[u8]>(0));
                    let archived = rkyv::access::<ArchivedDeposited, rkyv::rancor::Error>(&aligned)
                        .expect("valid");
                    balance.apply(archived);
                }
                assert!(balance.0 > 0);
            }
            (times, started.elapsed())
        })
    }
}

// ---------------------------------------------------------------------------
// VarveDB on PostgreSQL

struct VarveOnPg(Varve);

impl Engine for VarveOnPg {
    const NAME: &'static str = "varvedb postgres";

    fn batches(&self, count: u64) -> (u64, Duration) {
        let mut accounts = self.0.events::<Deposited>().expect("open");
        let events: Vec<Deposited> = (0..BATCH).map(event).collect();
        let started = Instant::now();
        for _ in 0..count {
            accounts.append_batch(StreamId(1), &events).expect("append");
        }
        (count * BATCH, started.elapsed())
    }

    fn singles(&self, clients: u64, each: u64) -> (u64, Duration) {
        let barrier = Arc::new(Barrier::new(clients as usize + 1));
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let varve = self.0.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut accounts = varve.events::<Deposited>().expect("open");
                    let e = event(c);
                    barrier.wait();
                    for _ in 0..each {
                        accounts.append(StreamId(1_000 + c), &e).expect("append");
                    }
                })
            })
            .collect();
        // Opening the streams is done once every thread waits at the barrier.
        std::thread::sleep(Duration::from_millis(100));
        let trips = varvedb::__pg::round_trips(&self.0).unwrap_or(0);
        let stats = self.0.commit_stats();
        barrier.wait();
        let started = Instant::now();
        for t in threads {
            t.join().expect("client");
        }
        let elapsed = started.elapsed();
        let trips = varvedb::__pg::round_trips(&self.0).unwrap_or(0) - trips;
        let commits = self.0.commit_stats().commits - stats.commits;
        let appends = clients * each;
        eprintln!(
            "  {clients} client(s): {:.2} round trips per append, {:.1} appends per commit",
            trips as f64 / appends as f64,
            appends as f64 / commits.max(1) as f64
        );
        (appends, elapsed)
    }

    fn seed_long_stream(&self) {
        let mut accounts = self.0.events::<Deposited>().expect("open");
        let events: Vec<Deposited> = (0..LONG_STREAM).map(event).collect();
        accounts.append_batch(StreamId(7), &events).expect("append");
    }

    fn stream_scan(&self, times: u64) -> (u64, Duration) {
        let reader = self.0.events::<Deposited>().expect("open").reader();
        let started = Instant::now();
        let mut read = 0;
        for _ in 0..times {
            reader
                .iter_stream(StreamId(7), None)
                .expect("scan")
                .for_each(|_, bytes| read += u64::from(!bytes.is_empty()))
                .expect("scan");
        }
        (read, started.elapsed())
    }

    fn global_scan(&self) -> (u64, Duration) {
        let started = Instant::now();
        let mut read = 0u64;
        self.0
            .global_reader()
            .iter_from(varvedb::GlobalSequence(0))
            .expect("scan")
            .for_each(|e| read += u64::from(!e.payload.is_empty()))
            .expect("scan");
        (read, started.elapsed())
    }

    fn aggregate_load(&self, times: u64) -> (u64, Duration) {
        let started = Instant::now();
        for _ in 0..times {
            let loaded = self.0.load::<Balance>(StreamId(7)).expect("load");
            assert!(loaded.state.0 > 0);
        }
        (times, started.elapsed())
    }
}

// ---------------------------------------------------------------------------
// Rounds and the table

type Results = BTreeMap<(&'static str, &'static str), Vec<f64>>;

fn rate((ops, took): (u64, Duration)) -> f64 {
    ops as f64 / took.as_secs_f64().max(1e-9)
}

fn run<E: Engine>(engine: &E, results: &mut Results) {
    let mut record = |workload: &'static str, sample: (u64, Duration)| {
        results
            .entry((workload, E::NAME))
            .or_default()
            .push(rate(sample));
    };
    record(
        "batch appends (100 events), events/s",
        engine.batches(scaled(20)),
    );
    record(
        "single appends, 1 client, events/s",
        engine.singles(1, scaled(300)),
    );
    record(
        "single appends, 16 clients, events/s",
        engine.singles(CLIENTS, scaled(100)),
    );
    engine.seed_long_stream();
    record(
        "stream scan (1,000 events), events/s",
        engine.stream_scan(scaled(20)),
    );
    record("global scan, events/s", engine.global_scan());
    record(
        "aggregate load (1,000 events), loads/s",
        engine.aggregate_load(scaled(20)),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The server's admin URL, and the cluster to keep alive while it is used.
fn server() -> (String, Option<pg::Cluster>) {
    if let Some(url) = std::env::var("VARVEDB_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return (url, None);
    }
    let cluster = pg::Cluster::start().unwrap_or_else(|e| {
        panic!("no server: set VARVEDB_BENCH_POSTGRES_URL, or install initdb/pg_ctl ({e})")
    });
    (cluster.url("postgres"), Some(cluster))
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("VARVEDB_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("VARVEDB_BENCH_ONLY").unwrap_or_default();
    let (admin, _cluster) = server();
    let mut results = Results::new();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        let raw_db = pg::TestDatabase::create(&admin, "bench_raw").expect("a database");
        run(&Raw::open(raw_db.url()), &mut results);
        if only != "raw" {
            let varve_db = pg::TestDatabase::create(&admin, "bench_varve").expect("a database");
            let varve = Varve::connect(varve_db.url()).expect("connect");
            run(&VarveOnPg(varve), &mut results);
        }
    }
    let workloads: Vec<&str> = results
        .keys()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "\n| workload | {} | {} | ratio |",
        Raw::NAME,
        VarveOnPg::NAME
    );
    println!("| --- | ---: | ---: | ---: |");
    for w in workloads {
        let raw = results.get(&(w, Raw::NAME)).cloned().map(median);
        let varve = results.get(&(w, VarveOnPg::NAME)).cloned().map(median);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let ratio = match (raw, varve) {
            (Some(r), Some(v)) => format!("{:.2}x", v / r),
            _ => "-".into(),
        };
        println!("| {w} | {} | {} | {ratio} |", cell(raw), cell(varve));
    }
    for engine in [Raw::NAME, VarveOnPg::NAME] {
        let one = results.get(&("single appends, 1 client, events/s", engine));
        let many = results.get(&("single appends, 16 clients, events/s", engine));
        if let (Some(one), Some(many)) = (one, many) {
            println!(
                "{engine}: 16 clients / 1 client = {:.2}x",
                median(many.clone()) / median(one.clone())
            );
        }
    }
}
