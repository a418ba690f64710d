//! Entity keys: a key (string, bytes, UUID) maps to one stream id per
//! stream, allocated inside the transaction of its first append or command,
//! resolvable both ways; no race (threads or processes) allocates two ids
//! for one key, and a refused append allocates nothing.
#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Barrier;

use varvedb::{
    Append, Error, EventId, ExpectedVersion, StreamId, StreamSequence, Varve, MAX_ENTITY_KEY,
};
use varvedb_suite::{temp_store, Order};

const CHILD: &str = "VARVEDB_KEYS_CHILD";
const CHILD_TEST: &str = "a_child_process_appends_to_keys";
const KEYS: usize = 30;

fn key(k: usize) -> String {
    format!("order-{k:04x}")
}

#[test]
fn keys_resolve_both_ways_and_are_stream_local() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let first = orders
        .append_keyed("order-9f3c", &Order::numbered(1))
        .unwrap();
    let again = orders
        .append_keyed("order-9f3c", &Order::numbered(2))
        .unwrap();
    let uuid_key = [0xab; 16];
    orders.append_keyed(uuid_key, &Order::numbered(3)).unwrap();
    let mut reader = orders.reader();
    let id = reader.entity_id("order-9f3c").unwrap().unwrap();
    assert!(id.0 >= 1 << 63, "allocated from the top half");
    assert_eq!(first.first().unwrap().0, StreamSequence(0));
    assert_eq!(again.first().unwrap().0, StreamSequence(1));
    assert_eq!(reader.version(id).unwrap(), Some(StreamSequence(1)));
    assert_eq!(
        reader.entity_key(id).unwrap().as_deref(),
        Some(&b"order-9f3c"[..])
    );
    let other = reader.entity_id(uuid_key).unwrap().unwrap();
    assert_ne!(other, id);
    assert_eq!(
        reader.entity_key(other).unwrap().as_deref(),
        Some(&uuid_key[..])
    );
    assert_eq!(reader.entity_id("never").unwrap(), None);
    assert_eq!(reader.entity_key(StreamId(5)).unwrap(), None);
    // Another stream has its own keys.
    let mut returns = varve.stream::<Order, 256>("returns").unwrap();
    assert_eq!(returns.reader().entity_id("order-9f3c").unwrap(), None);
    returns
        .append_keyed("order-9f3c", &Order::numbered(4))
        .unwrap();
    assert_eq!(returns.reader().entity_id("order-9f3c").unwrap(), Some(id));
    // Bad keys are typed errors.
    assert!(matches!(
        orders.append_keyed("", &Order::numbered(1)),
        Err(Error::InvalidEntityKey { len: 0, .. })
    ));
    assert!(matches!(
        orders.append_keyed(vec![b'x'; MAX_ENTITY_KEY + 1], &Order::numbered(1)),
        Err(Error::InvalidEntityKey { .. })
    ));
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn an_allocated_id_skips_ids_chosen_by_hand_and_a_refused_append_allocates_nothing() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    orders
        .append(StreamId(1 << 63), &Order::numbered(0))
        .unwrap();
    let commit = varve.last_commit_id();
    let refused = orders.append_keyed_with(
        "k",
        &Order::numbered(1),
        Append::new().expected(ExpectedVersion::StreamExists),
    );
    assert!(matches!(refused, Err(Error::VersionConflict { .. })));
    assert_eq!(varve.last_commit_id(), commit);
    assert_eq!(orders.reader().entity_id("k").unwrap(), None);
    orders
        .append_keyed_with(
            "k",
            &Order::numbered(1),
            Append::new().expected(ExpectedVersion::NoStream),
        )
        .unwrap();
    assert_eq!(
        orders.reader().entity_id("k").unwrap(),
        Some(StreamId((1 << 63) + 1))
    );
    // An append whose id is stored elsewhere allocates nothing either.
    orders
        .append_with(
            StreamId(3),
            &Order::numbered(2),
            Append::new().event_id(EventId::from_u128(9)),
        )
        .unwrap();
    let stolen = orders.append_keyed_with(
        "fresh",
        &Order::numbered(2),
        Append::new().event_id(EventId::from_u128(9)),
    );
    assert!(
        matches!(stolen, Err(Error::EventIdConflict { .. })),
        "{stolen:?}"
    );
    assert_eq!(orders.reader().entity_id("fresh").unwrap(), None);
}

#[test]
fn a_keyed_append_or_command_retried_with_its_ids_is_idempotent() {
    use rkyv::{Archive, Serialize};
    use varvedb::{Aggregate, CommandId, Execute};

    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let ids = [EventId::from_u128(1), EventId::from_u128(2)];
    let options = Append::new()
        .expected(ExpectedVersion::NoStream)
        .event_ids(&ids);
    let events = [Order::numbered(1), Order::numbered(2)];
    let first = orders
        .append_batch_keyed_with("k-1", &events, options)
        .unwrap();
    let retry = orders
        .append_batch_keyed_with("k-1", &events, options)
        .unwrap();
    assert!(retry.is_idempotent());
    assert_eq!(retry.positions(), first.positions());
    assert_eq!(retry.stream_id(), first.stream_id());
    assert_eq!(first.stream_id(), orders.reader().entity_id("k-1").unwrap());
    // Under another key, the ids are stored elsewhere.
    assert!(matches!(
        orders.append_batch_keyed_with("k-2", &events, options),
        Err(Error::EventIdConflict { .. })
    ));
    assert_eq!(orders.reader().entity_id("k-2").unwrap(), None);

    #[derive(Archive, Serialize, varvedb::Event)]
    struct Added(u64);
    #[derive(Default)]
    struct Cart(u64);
    impl Aggregate for Cart {
        type Event = Added;
        type Command = u64;
        type Error = std::convert::Infallible;
        const STREAM: &'static str = "carts";
        fn apply(&mut self, e: &ArchivedAdded) {
            self.0 += e.0.to_native();
        }
        fn handle(&self, n: &u64) -> Result<Vec<Added>, Self::Error> {
            Ok(vec![Added(*n)])
        }
    }
    let once = Execute::new().command_id(CommandId::from_u128(3));
    let done = varve.execute_keyed::<Cart>("cart-1", &4, once).unwrap();
    let again = varve.execute_keyed::<Cart>("cart-1", &4, once).unwrap();
    assert!(again.idempotent && !done.idempotent);
    assert_eq!((again.positions, again.state.0), (done.positions, 4));
    assert_eq!(varve.load_keyed::<Cart>("cart-1").unwrap().state.0, 4);
}

#[test]
fn threads_racing_on_new_keys_get_one_id_per_key() {
    const THREADS: usize = 6;
    let (_dir, varve) = temp_store();
    let start = Barrier::new(THREADS);
    let seen: Vec<Vec<StreamId>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (varve, start) = (&varve, &start);
                s.spawn(move || {
                    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
                    start.wait();
                    (0..KEYS)
                        .map(|k| {
                            orders
                                .append_keyed(key(k), &Order::numbered(t as u64))
                                .unwrap();
                            orders.reader().entity_id(key(k)).unwrap().unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for ids in &seen[1..] {
        assert_eq!(ids, &seen[0]);
    }
    let mut reader = varve.stream::<Order, 256>("orders").unwrap().reader();
    for (k, id) in seen[0].iter().enumerate() {
        assert_eq!(
            reader.version(*id).unwrap(),
            Some(StreamSequence(THREADS as u64 - 1))
        );
        assert_eq!(reader.entity_key(*id).unwrap(), Some(key(k).into_bytes()));
    }
    let distinct: std::collections::HashSet<_> = seen[0].iter().collect();
    assert_eq!(distinct.len(), KEYS);
}

#[test]
fn two_processes_racing_on_new_keys_get_one_id_per_key() {
    let (dir, varve) = temp_store();
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    // This process races too.
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    for k in (0..KEYS).rev() {
        orders.append_keyed(key(k), &Order::numbered(99)).unwrap();
    }
    let mut reports: Vec<HashMap<String, u64>> = Vec::new();
    for mut child in children {
        let out = child.stdout.take().unwrap();
        let map = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let at = l.find("@@ ")?;
                let (k, id) = l[at + 3..].split_once(' ')?;
                Some((k.to_string(), id.parse().ok()?))
            })
            .collect();
        assert!(child.wait().unwrap().success());
        reports.push(map);
    }
    let mut reader = orders.reader();
    for k in 0..KEYS {
        let id = reader.entity_id(key(k)).unwrap().unwrap();
        for report in &reports {
            assert_eq!(report.get(&key(k)), Some(&id.0), "{}", key(k));
        }
        // Each of three processes appended once to the key's one id.
        assert_eq!(reader.version(id).unwrap(), Some(StreamSequence(2)));
    }
    assert!(varve.verify().unwrap().is_ok());
}

/// The child of [`two_processes_racing_on_new_keys_get_one_id_per_key`].
#[test]
#[ignore = "run by its parent test"]
fn a_child_process_appends_to_keys() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let varve = Varve::new(dir).unwrap();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let mut reader = orders.reader();
    for k in 0..KEYS {
        orders
            .append_keyed(key(k), &Order::numbered(k as u64))
            .unwrap();
        let id = reader.entity_id(key(k)).unwrap().unwrap();
        println!("@@ {} {}", key(k), id.0);
    }
}

/// Runs `damage` on the store's `keys` database, with no varvedb handle open.
fn damage_keys(
    dir: &std::path::Path,
    damage: impl FnOnce(&mut heed::RwTxn<'_>, heed::Database<heed::types::Bytes, heed::types::Bytes>),
) {
    use heed::types::Bytes;
    // SAFETY: the test owns the store directory and no varvedb handle is open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let db = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let db = opener
                .database_options()
                .types::<Bytes, Bytes>()
                .name("keys")
                .create(wtxn)?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    damage(&mut wtxn, db);
    wtxn.commit().unwrap();
}

#[test]
fn verify_finds_a_key_whose_reverse_entry_is_gone_or_points_elsewhere() {
    for case in ["delete the reverse entry", "flip a forward value"] {
        let (dir, varve) = temp_store();
        let mut orders = varve.stream::<Order, 64>("orders").unwrap();
        orders.append_keyed("order-a", &Order::numbered(1)).unwrap();
        orders.append_keyed("order-b", &Order::numbered(2)).unwrap();
        assert!(varve.verify().unwrap().is_ok());
        drop((orders, varve));
        damage_keys(dir.path(), |wtxn, db| {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = db
                .iter(wtxn)
                .unwrap()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect();
            let (prefix, flip) = match case {
                "delete the reverse entry" => (b'r', false),
                _ => (b'k', true),
            };
            let (k, v) = entries.iter().find(|(k, _)| k[0] == prefix).unwrap();
            if flip {
                let mut v = v.clone();
                v[0] ^= 1;
                db.put(wtxn, k, &v).unwrap();
            } else {
                assert!(db.delete(wtxn, k).unwrap());
            }
        });
        let report = Varve::new(dir.path()).unwrap().verify().unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.detail.contains("map") || p.detail.contains("checksum")),
            "{case}: {report:?}"
        );
    }
}
