//! Opens racing the last handle's drop, and
//! deletion racing opens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use varvedb::{Error, StreamId, Varve};
use varvedb_suite::Order;

/// Threads that each open the same store, append once and drop their
/// handle: every open of a path nobody deleted must succeed. When one
/// thread drops the last handle while another opens, the registry no longer
/// finds the store (its `Weak` is dead) but heed still lists the environment
/// (its `Drop` has not run yet), so the open fails with `Error::Open`
/// "already open in this process outside varvedb".
#[test]
fn an_open_racing_the_last_handles_drop_always_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        Varve::with_config(
            dir.path(),
            varvedb::VarveConfig {
                durability: varvedb::Durability::NoSync,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let deadline = Instant::now() + Duration::from_secs(3);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = dir.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let (mut ok, mut failures) = (0u64, Vec::new());
                while Instant::now() < deadline && failures.len() < 3 {
                    match Varve::with_config(
                        &path,
                        varvedb::VarveConfig {
                            durability: varvedb::Durability::NoSync,
                            ..Default::default()
                        },
                    )
                    .and_then(|v| {
                        let mut s = v.stream::<Order, 256>("orders")?;
                        s.append(StreamId(t as u64), &Order::numbered(ok))
                    }) {
                        Ok(_) => ok += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut acked = 0;
    for h in handles {
        let (ok, failures) = h.join().unwrap();
        acked += ok;
        all.extend(failures);
    }
    eprintln!("{acked} opens and appends succeeded");
    assert!(
        all.is_empty(),
        "{} opens failed, e.g. {:#?}",
        all.len(),
        &all[..all.len().min(3)]
    );
    // Every acknowledged append is there.
    let varve = Varve::new(dir.path()).unwrap();
    assert_eq!(varve.verify().unwrap().events, acked);
}

/// Many threads open one path while another deletes and recreates it:
/// errors are fine (typed), panics are not, and a store that opens works.
#[test]
fn opens_racing_delete_and_recreate_never_panic() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("store");
    let stop = Arc::new(AtomicBool::new(false));
    let deleter = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_dir_all(&path);
                std::thread::sleep(Duration::from_micros(300));
                n += 1;
            }
            n
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let openers: Vec<_> = (0..3)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut kinds = std::collections::BTreeMap::<String, u64>::new();
                while Instant::now() < deadline {
                    let r = Varve::new(&path).and_then(|v| {
                        let mut s = v.stream::<Order, 256>("orders")?;
                        s.append(StreamId(t), &Order::numbered(1))?;
                        Ok(v)
                    });
                    let kind = match &r {
                        Ok(_) => "ok".to_string(),
                        Err(e) => {
                            let d = format!("{e:?}");
                            d.split([' ', '{', '(']).next().unwrap().to_string()
                                + if matches!(e, Error::Open { .. }) {
                                    if e.to_string().contains("outside varvedb") {
                                        "/already-open"
                                    } else {
                                        ""
                                    }
                                } else {
                                    ""
                                }
                        }
                    };
                    *kinds.entry(kind).or_default() += 1;
                }
                kinds
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::<String, u64>::new();
    for o in openers {
        for (k, v) in o.join().expect("an opener panicked") {
            *total.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let deletes = deleter.join().unwrap();
    eprintln!("{deletes} deletes; outcomes {total:?}");
}
