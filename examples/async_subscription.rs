//! Async subscriptions under tokio: follow the global log and one stream id
//! as `futures::Stream`s while a plain thread appends.
//!
//! ```sh
//! cargo run --example async_subscription
//! ```

use std::thread;

use futures_util::StreamExt;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{GlobalSequence, StreamId, StreamSequence, Varve};

#[derive(Archive, Serialize, Deserialize, Debug)]
struct Measured {
    sensor: u64,
    celsius: f32,
}

const READINGS: u64 = 300;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let varve = Varve::new(dir.path())?;
    let mut readings = varve.stream::<Measured, 64>("readings")?;

    // Subscribe before anything is written: both streams wait for commits
    // without blocking the (single) executor thread.
    let mut everything = varve.subscribe(GlobalSequence(0)).into_async();
    let mut sensor_two = readings
        .reader()
        .subscribe(StreamId(2), StreamSequence(0))
        .into_async();

    let writer = thread::spawn(move || -> varvedb::Result<()> {
        for n in 0..READINGS {
            let sensor = n % 3;
            readings.append(
                StreamId(sensor),
                &Measured {
                    sensor,
                    celsius: 20.0 + (n % 10) as f32 / 2.0,
                },
            )?;
        }
        Ok(())
    });

    let count_all = async {
        let mut n = 0;
        while n < READINGS {
            everything.next().await.ok_or("stopped")??;
            n += 1;
        }
        Ok::<_, Box<dyn std::error::Error>>(n)
    };
    let average_two = async {
        let (mut sum, mut n) = (0.0, 0);
        while n < READINGS / 3 {
            let reading = sensor_two.next().await.ok_or("stopped")??;
            sum += reading.celsius.to_native();
            n += 1;
        }
        Ok::<_, Box<dyn std::error::Error>>(sum / n as f32)
    };
    let (all, average) = tokio::try_join!(count_all, average_two)?;
    writer.join().expect("the writer does not panic")?;

    println!("{all} readings followed live; sensor 2 averaged {average:.2} °C");
    Ok(())
}
