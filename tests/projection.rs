//! A projection applies each event of the log to its read model exactly once,
//! in global order: incrementally or rebuilt from the start it gives the same
//! model; a failing handler stops it at the failing event (or retries or skips
//! it, as chosen) and never moves the checkpoint past it silently; an external
//! projection's checkpoint follows the sink's acknowledgements.

use std::collections::BTreeMap;
use std::thread;

use varvedb::{
    Error, ExternalProjection, Filter, GlobalEvent, GlobalSequence, HandlerError, OnError,
    Projection, ReadModel, StreamId, Varve, VarveConfig,
};
use varvedb_suite::{product, temp_store, Order, Sales};

type Model = Vec<(Vec<u8>, Vec<u8>)>;

fn model(varve: &Varve, name: &str) -> (GlobalSequence, Model) {
    varve
        .read_model(name)
        .expect("name")
        .entries()
        .expect("readable")
}

/// The model `Sales` should reach, folded independently from the log.
fn expected_units(varve: &Varve) -> BTreeMap<String, u64> {
    let mut units = BTreeMap::new();
    for event in varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .expect("log")
    {
        let event = event.expect("readable");
        if event.stream_name() == "orders" {
            let order = event.archived_plain::<Order>().expect("an order");
            *units.entry(product(order.id.to_native())).or_insert(0) +=
                u64::from(order.quantity.to_native());
        }
    }
    units
}

fn units(varve: &Varve, name: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    varve
        .read_model(name)
        .expect("name")
        .for_each(b"units/", |k, v| {
            let key = String::from_utf8_lossy(&k[6..]).into_owned();
            out.insert(key, u64::from_le_bytes(v.try_into().expect("a u64")));
        })
        .expect("readable");
    out
}

/// Appends `count` orders from `threads` threads, plus some events of another stream.
fn append_orders(varve: &Varve, threads: u64, count: u64, first: u64) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let varve = varve.clone();
            thread::spawn(move || {
                let mut orders = varve.stream::<Order, 128>("orders").expect("open");
                let mut other = varve.stream::<Order, 128>("audit").expect("open");
                for n in (first + t..first + count).step_by(threads as usize) {
                    orders
                        .append(StreamId(n % 11), &Order::numbered(n))
                        .expect("append");
                    if n % 4 == 0 {
                        other
                            .append(StreamId(1), &Order::numbered(n))
                            .expect("append");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer");
    }
}

#[test]
fn a_projection_rebuilt_from_the_start_equals_the_incrementally_maintained_one() {
    let (_dir, varve) = temp_store();
    let mut incremental = varve.projector("sales", Sales).expect("name").batch_size(7);
    for round in 0..5 {
        append_orders(&varve, 3, 120, round * 1_000);
        incremental.catch_up().expect("applies");
    }
    // Followed live for a while too.
    let running = varve
        .projector("sales", Sales)
        .expect("name")
        .batch_size(13)
        .spawn()
        .expect("thread");
    append_orders(&varve, 3, 200, 10_000);
    let (_, outcome) = running.stop();
    outcome.expect("no handler error");
    let end = incremental.catch_up().expect("applies");
    assert_eq!(end, varve.global_reader().end().expect("end"));

    let mut rebuilt = varve.projector("sales_rebuilt", Sales).expect("name");
    assert_eq!(rebuilt.rebuild().expect("rebuilds"), end);
    assert_eq!(model(&varve, "sales"), model(&varve, "sales_rebuilt"));
    assert_eq!(units(&varve, "sales"), expected_units(&varve));

    // Rebuilding in place (batches of another size) changes nothing either.
    let before = model(&varve, "sales");
    incremental.rebuild().expect("rebuilds");
    assert_eq!(model(&varve, "sales"), before);
}

#[test]
fn a_spawned_projector_keeps_up_with_appends_from_other_threads() {
    let (_dir, varve) = temp_store();
    let running = varve
        .projector("sales", Sales)
        .expect("name")
        .spawn()
        .expect("thread");
    append_orders(&varve, 4, 400, 0);
    let (mut projector, outcome) = running.stop();
    outcome.expect("no handler error");
    projector.catch_up().expect("applies");
    assert_eq!(units(&varve, "sales"), expected_units(&varve));
    let mut reader = projector.model();
    assert_eq!(reader.get_u64(b"orders").expect("readable"), Some(400));
    assert_eq!(
        reader.checkpoint().expect("readable"),
        varve.global_reader().end().expect("end")
    );
}

#[test]
fn two_projectors_of_one_name_never_apply_an_event_twice() {
    let (_dir, varve) = temp_store();
    append_orders(&varve, 2, 600, 0);
    let racers: Vec<_> = (0..3)
        .map(|_| {
            let varve = varve.clone();
            thread::spawn(move || {
                let mut projector = varve.projector("sales", Sales).expect("name").batch_size(5);
                projector.catch_up().expect("applies")
            })
        })
        .collect();
    for r in racers {
        r.join().expect("racer");
    }
    assert_eq!(
        varve
            .read_model("sales")
            .expect("name")
            .get_u64(b"orders")
            .expect("readable"),
        Some(600)
    );
    assert_eq!(units(&varve, "sales"), expected_units(&varve));
}

/// `Sales`, failing on the orders listed in `poison`, each for `failures` tries.
struct Flaky {
    poison: Vec<u64>,
    failures: u32,
    tries: u32,
}

impl Projection for Flaky {
    fn filter(&self) -> Filter {
        Sales.filter()
    }

    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        // Write first, so a failure has something to roll back.
        Sales.apply(event, model)?;
        let id = event.archived_plain::<Order>()?.id.to_native();
        if self.poison.contains(&id) && self.tries < self.failures {
            self.tries += 1;
            return Err(format!("order {id} is poison").into());
        }
        Ok(())
    }
}

fn append_sequential(varve: &Varve, range: std::ops::Range<u64>) {
    let mut orders = varve.stream::<Order, 128>("orders").expect("open");
    for n in range {
        orders
            .append(StreamId(1), &Order::numbered(n))
            .expect("append");
    }
}

#[test]
fn a_failing_handler_stops_at_the_failing_event_with_everything_before_it_applied() {
    let (_dir, varve) = temp_store();
    append_sequential(&varve, 0..100);
    let flaky = Flaky {
        poison: vec![42],
        failures: u32::MAX,
        tries: 0,
    };
    let mut projector = varve
        .projector("sales", flaky)
        .expect("name")
        .batch_size(30);

    match projector.catch_up() {
        Err(Error::Projection {
            projection,
            at,
            source,
        }) => {
            assert_eq!((projection.as_str(), at), ("sales", GlobalSequence(42)));
            assert!(source.to_string().contains("poison"), "{source}");
        }
        other => panic!("expected a projection error, got {other:?}"),
    }
    assert_eq!(
        projector.checkpoint().expect("readable"),
        GlobalSequence(42)
    );
    // Exactly the 42 events before it, none of the failed batch after it.
    let mut reader = projector.model();
    assert_eq!(reader.get_u64(b"orders").expect("readable"), Some(42));
    assert_eq!(reader.get_u64(b"last").expect("readable"), Some(41));

    // Running again retries the same event; once it passes, all goes on.
    assert!(matches!(
        projector.catch_up(),
        Err(Error::Projection {
            at: GlobalSequence(42),
            ..
        })
    ));
    projector.projection_mut().poison.clear();
    assert_eq!(projector.catch_up().expect("applies"), GlobalSequence(100));
    assert_eq!(reader.get_u64(b"orders").expect("readable"), Some(100));
    assert!(projector.skipped().expect("readable").is_empty());
}

#[test]
fn the_skip_policy_records_the_failing_event_and_goes_on_after_it() {
    let (_dir, varve) = temp_store();
    append_sequential(&varve, 0..50);
    let flaky = Flaky {
        poison: vec![10, 30],
        failures: u32::MAX,
        tries: 0,
    };
    let mut projector = varve
        .projector("sales", flaky)
        .expect("name")
        .on_error(OnError::Skip);
    assert_eq!(projector.catch_up().expect("skips"), GlobalSequence(50));
    let skipped = projector.skipped().expect("readable");
    let at: Vec<u64> = skipped.iter().map(|s| s.at.0).collect();
    assert_eq!(at, [10, 30]);
    assert!(skipped[0].error.contains("order 10 is poison"));
    assert_eq!(
        projector.model().get_u64(b"orders").expect("readable"),
        Some(48)
    );

    // A reset forgets the model, the checkpoint and the skips.
    projector.reset().expect("resets");
    assert_eq!(projector.checkpoint().expect("readable"), GlobalSequence(0));
    assert!(projector.skipped().expect("readable").is_empty());
    assert_eq!(model(&varve, "sales").1, []);
}

#[test]
fn the_retry_policy_tries_the_failing_event_again_and_stops_when_out_of_tries() {
    let (_dir, varve) = temp_store();
    append_sequential(&varve, 0..20);
    let retry = OnError::Retry {
        attempts: 3,
        backoff: std::time::Duration::from_millis(1),
    };

    let flaky = Flaky {
        poison: vec![7],
        failures: 2,
        tries: 0,
    };
    let mut projector = varve
        .projector("recovers", flaky)
        .expect("name")
        .on_error(retry);
    assert_eq!(projector.catch_up().expect("recovers"), GlobalSequence(20));
    assert_eq!(projector.projection().tries, 2);
    assert_eq!(
        varve
            .read_model("recovers")
            .expect("name")
            .get_u64(b"orders")
            .expect("readable"),
        Some(20)
    );

    let flaky = Flaky {
        poison: vec![7],
        failures: 10,
        tries: 0,
    };
    let mut projector = varve
        .projector("gives_up", flaky)
        .expect("name")
        .on_error(retry);
    assert!(matches!(
        projector.catch_up(),
        Err(Error::Projection {
            at: GlobalSequence(7),
            ..
        })
    ));
    assert_eq!(projector.projection().tries, 4, "one try and three retries");
    assert_eq!(projector.checkpoint().expect("readable"), GlobalSequence(7));
}

#[test]
fn a_projection_keeps_working_while_its_writes_grow_the_map() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = VarveConfig {
        map_size: 1 << 20,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).expect("open");
    append_sequential(&varve, 0..400);

    /// Writes 4 KiB of model per event: far more than the initial map.
    struct Bulky;
    impl Projection for Bulky {
        fn apply(
            &mut self,
            event: &GlobalEvent,
            model: &mut ReadModel<'_, '_>,
        ) -> Result<(), HandlerError> {
            let key = event.global_sequence().0.to_be_bytes();
            model.put(&key, &[7; 4096])?;
            Ok(())
        }
    }
    let mut projector = varve
        .projector("bulky", Bulky)
        .expect("name")
        .batch_size(64);
    assert_eq!(
        projector.catch_up().expect("grows and applies"),
        GlobalSequence(400)
    );
    let (_, entries) = model(&varve, "bulky");
    assert_eq!(entries.len(), 400);
    assert!(entries.iter().all(|(_, v)| v.len() == 4096));
}

/// A sink that records what it was given, failing on one global sequence.
#[derive(Default)]
struct Recorder {
    delivered: Vec<u64>,
    fail_at: Option<u64>,
    resets: u32,
}

impl ExternalProjection for Recorder {
    fn filter(&self) -> Filter {
        Filter::all().plain_type::<Order>()
    }

    fn deliver(&mut self, event: &GlobalEvent) -> Result<(), HandlerError> {
        let at = event.global_sequence().0;
        if self.fail_at == Some(at) {
            return Err("the sink is down".into());
        }
        self.delivered.push(at);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), HandlerError> {
        self.delivered.clear();
        self.resets += 1;
        Ok(())
    }
}

#[test]
fn an_external_projection_checkpoints_only_what_the_sink_acknowledged() {
    let (_dir, varve) = temp_store();
    append_sequential(&varve, 0..60);
    let sink = Recorder {
        fail_at: Some(25),
        ..Recorder::default()
    };
    let mut projector = varve
        .external_projector("mirror", sink)
        .expect("name")
        .checkpoint_every(1_000);

    assert!(matches!(
        projector.catch_up(),
        Err(Error::Projection {
            at: GlobalSequence(25),
            ..
        })
    ));
    // Written at the failure, though fewer than `checkpoint_every` were acknowledged.
    assert_eq!(
        projector.checkpoint().expect("readable"),
        GlobalSequence(25)
    );
    assert_eq!(projector.sink().delivered, (0..25).collect::<Vec<_>>());

    projector.sink_mut().fail_at = None;
    assert_eq!(projector.catch_up().expect("delivers"), GlobalSequence(60));
    assert_eq!(projector.sink().delivered, (0..60).collect::<Vec<_>>());

    // Live, then stopped: the checkpoint covers everything delivered.
    let running = projector.spawn().expect("thread");
    append_sequential(&varve, 60..90);
    let (mut projector, outcome) = running.stop();
    outcome.expect("no sink error");
    let end = projector.catch_up().expect("delivers");
    assert_eq!(end, GlobalSequence(90));
    assert_eq!(projector.sink().delivered, (0..90).collect::<Vec<_>>());

    // A new projector of the same name resumes at the checkpoint.
    let mut resumed = varve
        .external_projector("mirror", Recorder::default())
        .expect("name");
    append_sequential(&varve, 90..95);
    resumed.catch_up().expect("delivers");
    assert_eq!(resumed.sink().delivered, (90..95).collect::<Vec<_>>());

    // Rebuilding empties the sink and delivers everything again.
    resumed.rebuild().expect("rebuilds");
    assert_eq!(resumed.sink().resets, 1);
    assert_eq!(resumed.sink().delivered, (0..95).collect::<Vec<_>>());
}

#[test]
fn an_external_projection_can_skip_what_its_sink_refuses() {
    let (_dir, varve) = temp_store();
    append_sequential(&varve, 0..10);
    let sink = Recorder {
        fail_at: Some(3),
        ..Recorder::default()
    };
    let mut projector = varve
        .external_projector("mirror", sink)
        .expect("name")
        .on_error(OnError::Skip);
    assert_eq!(projector.catch_up().expect("skips"), GlobalSequence(10));
    assert_eq!(projector.sink().delivered, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    let skipped = projector.skipped().expect("readable");
    assert_eq!((skipped.len(), skipped[0].at), (1, GlobalSequence(3)));
}

#[test]
fn projection_names_are_checked() {
    let (_dir, varve) = temp_store();
    for bad in ["", "a/b", "spaces here", &"n".repeat(65)] {
        assert!(
            matches!(
                varve.projector(bad, Sales),
                Err(Error::InvalidProjectionName { .. })
            ),
            "{bad:?}"
        );
        assert!(varve.read_model(bad).is_err());
    }
}
