//! A projection keeping sales totals per product while orders are appended
//! from another thread, and a subscription watching the same log live.
//!
//! ```sh
//! cargo run --example sales_projection
//! ```

use std::collections::BTreeMap;
use std::thread;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Filter, GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId, Varve,
};

#[derive(Archive, Serialize, Deserialize, Debug)]
struct OrderPlaced {
    product: String,
    units: u32,
    cents_each: u64,
}

/// Units sold and revenue per product: `units/<product>` and `cents/<product>`.
struct SalesByProduct;

fn add(model: &mut ReadModel<'_, '_>, key: &str, n: u64) -> Result<(), HandlerError> {
    let total = model.get_u64(key.as_bytes())?.unwrap_or(0);
    model.put_u64(key.as_bytes(), total + n)?;
    Ok(())
}

impl Projection for SalesByProduct {
    fn filter(&self) -> Filter {
        Filter::all().stream("orders")
    }

    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let order = event.archived_plain::<OrderPlaced>()?;
        let units = u64::from(order.units.to_native());
        add(model, &format!("units/{}", order.product), units)?;
        add(
            model,
            &format!("cents/{}", order.product),
            units * order.cents_each.to_native(),
        )?;
        Ok(())
    }
}

const PRODUCTS: [(&str, u64); 4] = [
    ("kettle", 3_499),
    ("mug", 899),
    ("teapot", 2_450),
    ("tray", 1_200),
];
const ORDERS: u64 = 2_000;

/// Reads the model: product -> (units, cents).
fn totals(varve: &Varve) -> varvedb::Result<BTreeMap<String, (u64, u64)>> {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut model = varve.read_model("sales_by_product")?;
    model.for_each(b"", |key, value| {
        let key = String::from_utf8_lossy(key);
        let value = value.try_into().map_or(0, u64::from_le_bytes);
        if let Some((kind, product)) = key.split_once('/') {
            let entry = totals.entry(product.to_owned()).or_default();
            if kind == "units" {
                entry.0 = value;
            } else {
                entry.1 = value;
            }
        }
    })?;
    Ok(totals)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let varve = Varve::new(dir.path())?;
    let mut orders = varve.stream::<OrderPlaced, 256>("orders")?;

    // The projection follows the log on its own thread from the start.
    let projector = varve
        .projector("sales_by_product", SalesByProduct)?
        .spawn()?;

    // A live subscription: every order, as it is committed (it waits for them).
    let watch = varve
        .subscribe(GlobalSequence(0))
        .with_filter(Filter::all().stream("orders"));
    let watcher = thread::spawn(move || -> varvedb::Result<u64> {
        let mut seen = 0;
        for event in watch.take(ORDERS as usize) {
            let event = event?;
            seen += 1;
            if seen % 500 == 0 {
                let order = event.archived_plain::<OrderPlaced>()?;
                println!(
                    "watcher: order #{} at global {}: {} x {}",
                    seen,
                    event.global_sequence(),
                    order.units,
                    order.product
                );
            }
        }
        Ok(seen)
    });

    // Orders arrive from another thread, in batches.
    let writer = thread::spawn(move || -> varvedb::Result<()> {
        let mut n = 0;
        while n < ORDERS {
            let batch: Vec<OrderPlaced> = (n..(n + 10).min(ORDERS))
                .map(|i| {
                    let (product, cents_each) = PRODUCTS[(i * 7 % 4) as usize];
                    OrderPlaced {
                        product: product.into(),
                        units: 1 + (i % 3) as u32,
                        cents_each,
                    }
                })
                .collect();
            orders.append_batch(StreamId(n / 10), &batch)?;
            n += batch.len() as u64;
        }
        Ok(())
    });
    writer.join().expect("the writer does not panic")?;

    // Stop the projector, then apply whatever it had not reached yet.
    let (mut projector, outcome) = projector.stop();
    outcome?;
    let checkpoint = projector.catch_up()?;
    let watched = watcher.join().expect("the watcher does not panic")?;
    println!("projection checkpoint: {checkpoint}; the watcher saw {watched} orders live\n");

    let totals = totals(&varve)?;
    println!("{:<8} {:>6} {:>12}", "product", "units", "revenue");
    for (product, (units, cents)) in &totals {
        println!(
            "{product:<8} {units:>6} {:>9}.{:02}",
            cents / 100,
            cents % 100
        );
    }

    // The same totals folded straight from the log, and from a rebuild.
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let snap = varve.snapshot()?;
    for event in snap.iter_from(GlobalSequence(0))? {
        let event = event?;
        let order = event.archived_plain::<OrderPlaced>()?;
        let entry = expected.entry(order.product.to_string()).or_default();
        entry.0 += u64::from(order.units.to_native());
        entry.1 += u64::from(order.units.to_native()) * order.cents_each.to_native();
    }
    drop(snap); // a held snapshot would block the map from growing
    assert_eq!(totals, expected);
    projector.rebuild()?;
    assert_eq!(self::totals(&varve)?, expected);
    println!("\nrebuilt from scratch: the same totals");
    Ok(())
}
