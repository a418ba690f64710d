//! The flagship example: an order log on an embedded store.
//!
//! Appends one event, reads it back zero-copy, appends a batch of 100 atomically,
//! scans a stream, and walks the global log. Uses exactly the calls of the
//! original "Basic Usage" so programs written against it keep working.
//!
//! Run it with `cargo run --example quickstart`.

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{GlobalSequence, StreamId, Varve};

/// An event: past tense, one fact.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
#[rkyv(derive(Debug))]
struct OrderPlaced {
    order_id: u64,
    product: String,
    quantity: u32,
    amount: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let varve = Varve::new(dir.path())?;

    // A typed stream: the name binds the stream to `OrderPlaced`; 1024 is the
    // initial serialization buffer (larger events still work, on the heap).
    let mut stream = varve.stream::<OrderPlaced, 1024>("orders")?;

    let event = OrderPlaced {
        order_id: 12345,
        product: "Laptop".into(),
        quantity: 1,
        amount: 99_900,
    };
    let (stream_seq, global_seq) = stream.append(StreamId(1), &event)?;
    println!(
        "appended at stream sequence {}, global sequence {}",
        stream_seq.0, global_seq.0
    );

    // Zero-copy read: `archived` points into the memory-mapped file.
    let mut reader = stream.reader();
    if let Some(archived) = reader.get_archived(StreamId(1), stream_seq)? {
        println!(
            "read back order #{} for {}",
            archived.order_id, archived.product
        );
    }

    // One transaction, one durable commit, 100 events.
    let batch: Vec<OrderPlaced> = (0..100)
        .map(|i| OrderPlaced {
            order_id: 12_346 + i,
            product: format!("Product-{i}"),
            quantity: 1,
            amount: 1_000 * (i + 1),
        })
        .collect();
    let positions = stream.append_batch(StreamId(2), &batch)?;
    println!("batch appended {} events", positions.len());

    // Lazy scan of one stream id: a plain loop over a snapshot, each event
    // borrowed from the map. The snapshot blocks map growth while it lives.
    let snap = reader.snapshot()?;
    let (mut events, mut revenue) = (0, 0u64);
    for order in snap.iter_stream(StreamId(2), None)? {
        events += 1;
        revenue += order?.amount.to_native();
    }
    drop(snap);
    println!("stream 2 holds {events} events worth {revenue} cents");

    // Every stream, in commit order.
    let log = varve.snapshot()?;
    let first = log.get(GlobalSequence(0))?.ok_or("the log starts at 0")?;
    let mut total = 0;
    for event in log.iter_from(GlobalSequence(0))? {
        event?;
        total += 1;
    }
    println!(
        "global #0 is {:?} id {} sequence {}; the log holds {total} events",
        first.stream_name(),
        first.stream_id().0,
        first.stream_sequence().0,
    );
    Ok(())
}
