//! The spec's "Basic Usage" program, compiled and run unchanged against this crate:
//! the public API keeps the contract of the original README.
#![allow(unused_mut)]

use rkyv::{Archive, Deserialize, Serialize};
use tempfile::tempdir;
use varvedb::{StreamId, StreamSequence, Varve};

// Define your event schema
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
#[rkyv(derive(Debug))]
struct OrderPlaced {
    order_id: u64,
    product: String,
    quantity: u32,
    amount: u64,
}

#[allow(unused_imports)]
use StreamSequence as _;

fn main_from_the_spec() -> Result<(), Box<dyn std::error::Error>> {
    // Initialize the database
    let dir = tempdir()?;
    let mut varve = Varve::new(dir.path())?;

    let mut stream = varve.stream::<OrderPlaced, 1024>("orders")?;

    let event = OrderPlaced {
        order_id: 12345,
        product: "Laptop".to_string(),
        quantity: 1,
        amount: 99900, // cents
    };

    let (stream_seq, global_seq) = stream.append(StreamId(1), &event)?;
    println!(
        "✓ Appended event at stream sequence {}, global sequence {}",
        stream_seq.0, global_seq.0
    );

    let mut reader = stream.reader();

    if let Some(archived_event) = reader.get_archived(StreamId(1), stream_seq)? {
        println!(
            "✓ Read event: Order #{}, Product: {}",
            archived_event.order_id, archived_event.product
        );
    }

    let more_events: Vec<OrderPlaced> = (0..100)
        .map(|i| OrderPlaced {
            order_id: 12346 + i,
            product: format!("Product-{}", i),
            quantity: 1,
            amount: 1000 * (i + 1),
        })
        .collect();

    let results = stream.append_batch(StreamId(2), &more_events)?;
    println!("✓ Batch appended {} events", results.len());

    let iter = reader.iter_stream(StreamId(2), None)?;
    let events = iter.collect_bytes()?;
    println!("✓ Stream contains {} events", events.len());
    assert_eq!(events.len(), 100);
    assert_eq!((stream_seq.0, global_seq.0), (0, 0));
    assert_eq!(results.last().map(|(s, g)| (s.0, g.0)), Some((99, 100)));

    Ok(())
}

#[test]
fn the_spec_basic_usage_program_runs_unchanged() {
    main_from_the_spec().expect("the spec's program succeeds");
}
