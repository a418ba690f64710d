//! With feature `tracing`, the store tells the application's subscriber
//! what it does: opens, commits (group size, bytes, time), map growth,
//! backups, exports and restores, migrations, projection progress and
//! subscription lag, each event with the fields operators read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use varvedb::{
    GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId, Varve, VarveConfig,
};

/// A span opened or an event emitted, with its fields as text.
#[derive(Debug, Clone)]
struct Seen {
    span: bool,
    name: String,
    fields: BTreeMap<String, String>,
}

impl Seen {
    fn u64(&self, field: &str) -> u64 {
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("{} has no field {field}: {self:?}", self.name))
            .parse()
            .unwrap_or_else(|_| panic!("{} field {field} is not a number: {self:?}", self.name))
    }

    fn text(&self, field: &str) -> &str {
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("{} has no field {field}: {self:?}", self.name))
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Records every span and event, with its fields.
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            span: true,
            name: attrs.metadata().name().to_owned(),
            fields,
        });
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            span: false,
            name: event.metadata().name().to_owned(),
            fields,
        });
    }
}

/// Runs `f` with a capturing subscriber on this thread; what it saw.
fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&seen)));
    let result = tracing::subscriber::with_default(subscriber, f);
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

fn events<'a>(seen: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| !s.span && s.name == name).collect()
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Noted {
    n: u64,
    note: String,
}

fn noted(n: u64) -> Noted {
    Noted {
        n,
        note: "x".repeat(100),
    }
}

#[test]
fn an_open_reports_the_store_format_and_map_and_whether_it_created_it() {
    let dir = tempfile::tempdir().unwrap();
    let (varve, seen) = capture(|| Varve::new(dir.path()).unwrap());
    let open = events(&seen, "varvedb.open");
    assert_eq!(open.len(), 1, "{seen:?}");
    assert_eq!(open[0].text("created"), "true");
    assert_eq!(open[0].text("read_only"), "false");
    assert_eq!(
        open[0].u64("format"),
        u64::from(varve.info().unwrap().format)
    );
    assert!(open[0].u64("map_size") >= 64 << 20);
    assert_eq!(open[0].text("store_id"), varve.store_id().to_string());
    drop(varve);
    let (varve, seen) = capture(|| Varve::open_read_only(dir.path()).unwrap());
    let open = events(&seen, "varvedb.open");
    assert_eq!(open[0].text("created"), "false");
    assert_eq!(open[0].text("read_only"), "true");
    let format = u64::from(varve.info().unwrap().format);
    assert_eq!(open[0].u64("found_format"), format);
    assert_eq!(open[0].text("upgraded"), "false");
}

#[test]
fn a_commit_reports_its_group_size_bytes_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut stream = varve.stream::<Noted, 256>("noted").unwrap();
    let batch: Vec<Noted> = (0..5).map(noted).collect();
    let (_, seen) = capture(|| {
        stream.append_batch(StreamId(1), &batch).unwrap();
        stream.append(StreamId(2), &noted(5)).unwrap();
    });
    let commits = events(&seen, "varvedb.commit");
    assert_eq!(commits.len(), 2, "{seen:?}");
    assert_eq!(
        (commits[0].u64("appends"), commits[0].u64("events")),
        (1, 5)
    );
    // Five slots of more than 100 bytes each, in one block with its header.
    assert!(commits[0].u64("bytes") > 5 * 100, "{:?}", commits[0]);
    assert_eq!(commits[0].text("ok"), "true");
    assert!(commits[0].fields.contains_key("duration_us"));
    assert_eq!(
        (commits[1].u64("appends"), commits[1].u64("events")),
        (1, 1)
    );
    assert!(commits[1].u64("bytes") < commits[0].u64("bytes"));
    // Each transaction's commit and sync, timed.
    let syncs = events(&seen, "varvedb.sync");
    assert_eq!(syncs.len(), 2, "{seen:?}");
    assert_eq!(syncs[0].text("appended"), "true");
    assert!(syncs[1].u64("txn_id") > syncs[0].u64("txn_id"));
    assert!(syncs[0].fields.contains_key("sync_us"));
}

#[test]
fn map_growth_is_reported_with_the_old_and_new_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        map_size: 64 << 10,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let mut stream = varve.stream::<Noted, 256>("noted").unwrap();
    let (_, seen) = capture(|| {
        for chunk in 0..20u64 {
            let batch: Vec<Noted> = (0..50).map(|i| noted(chunk * 50 + i)).collect();
            stream.append_batch(StreamId(chunk), &batch).unwrap();
        }
    });
    let grown = events(&seen, "varvedb.map_resize");
    assert!(!grown.is_empty(), "no growth reported: {seen:?}");
    let first = grown[0];
    assert_eq!(first.u64("old_size"), 64 << 10);
    assert_eq!(first.u64("new_size"), 128 << 10);
    assert_eq!((first.text("adopted"), first.text("ok")), ("false", "true"));
    for pair in grown.windows(2) {
        assert_eq!(pair[1].u64("old_size"), pair[0].u64("new_size"));
    }
    assert_eq!(
        varve.info().unwrap().map_size,
        grown.last().unwrap().u64("new_size")
    );
}

#[test]
fn backups_exports_and_restores_report_events_bytes_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path().join("store")).unwrap();
    let mut stream = varve.stream::<Noted, 256>("noted").unwrap();
    let batch: Vec<Noted> = (0..7).map(noted).collect();
    stream.append_batch(StreamId(1), &batch).unwrap();
    let (report, seen) = capture(|| varve.backup(dir.path().join("full")).unwrap());
    assert!(seen.iter().any(|s| s.span && s.name == "varvedb.backup"));
    let backup = events(&seen, "varvedb.backup");
    assert_eq!(backup.len(), 1, "{seen:?}");
    assert_eq!(backup[0].u64("events"), 7);
    assert_eq!(backup[0].u64("bytes"), report.bytes);
    assert!(backup[0].fields.contains_key("duration_us"));

    stream.append(StreamId(2), &noted(7)).unwrap();
    let segment = dir.path().join("1.seg");
    let (_, seen) = capture(|| {
        varve
            .export_after(dir.path().join("full"), &segment)
            .unwrap()
    });
    let export = events(&seen, "varvedb.export");
    assert_eq!((export[0].u64("from"), export[0].u64("to")), (7, 8));
    assert_eq!(export[0].u64("events"), 1);

    let (_, seen) = capture(|| {
        Varve::restore(
            dir.path().join("full"),
            [&segment],
            dir.path().join("restored"),
            None,
        )
        .unwrap()
    });
    let restore = events(&seen, "varvedb.restore");
    assert_eq!(restore.len(), 1, "{seen:?}");
    assert_eq!(restore[0].u64("events"), 8);
    assert_eq!(restore[0].u64("segments"), 1);
}

struct Count;

impl Projection for Count {
    fn apply(
        &mut self,
        _: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let n = model.get_u64(b"n")?.unwrap_or(0);
        Ok(model.put_u64(b"n", n + 1)?)
    }
}

#[test]
fn projection_progress_reports_each_checkpoint_with_its_batch_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut stream = varve.stream::<Noted, 256>("noted").unwrap();
    let batch: Vec<Noted> = (0..10).map(noted).collect();
    stream.append_batch(StreamId(1), &batch).unwrap();
    let mut projector = varve.projector("count", Count).unwrap().batch_size(4);
    let (_, seen) = capture(|| projector.catch_up().unwrap());
    let progress: Vec<(u64, u64, u64)> = events(&seen, "varvedb.projection")
        .iter()
        .map(|e| {
            assert_eq!((e.text("name"), e.text("kind")), ("count", "in-store"));
            (e.u64("checkpoint"), e.u64("batch"), e.u64("lag"))
        })
        .collect();
    assert_eq!(progress, [(4, 4, 6), (8, 4, 2), (10, 2, 0)]);
    // Caught up: a run with nothing to apply reports nothing.
    let (_, seen) = capture(|| projector.catch_up().unwrap());
    assert!(events(&seen, "varvedb.projection").is_empty());

    // An external projector reports each checkpoint it writes.
    let mut feed = varve
        .external_projector("feed", Sink)
        .unwrap()
        .checkpoint_every(6);
    let (_, seen) = capture(|| feed.catch_up().unwrap());
    let progress: Vec<(u64, u64, u64)> = events(&seen, "varvedb.projection")
        .iter()
        .map(|e| {
            assert_eq!((e.text("name"), e.text("kind")), ("feed", "external"));
            (e.u64("checkpoint"), e.u64("batch"), e.u64("lag"))
        })
        .collect();
    assert_eq!(progress, [(6, 6, 4), (10, 4, 0)]);
}

struct Sink;

impl varvedb::ExternalProjection for Sink {
    fn deliver(&mut self, _: &GlobalEvent) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[test]
fn a_subscription_reports_its_lag_behind_the_head_when_it_reads_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut stream = varve.stream::<Noted, 256>("noted").unwrap();
    let batch: Vec<Noted> = (0..10).map(noted).collect();
    stream.append_batch(StreamId(1), &batch).unwrap();
    let mut subscription = varve.subscribe(GlobalSequence(2));
    let (first, seen) = capture(|| subscription.next().unwrap().unwrap());
    assert_eq!(first.global_sequence().0, 2);
    let pages = events(&seen, "varvedb.subscription");
    assert_eq!(pages.len(), 1, "{seen:?}");
    assert_eq!(
        (
            pages[0].u64("cursor"),
            pages[0].u64("head"),
            pages[0].u64("lag")
        ),
        (2, 10, 8)
    );
}

#[test]
fn a_migration_reports_what_it_rewrote() {
    mod v1 {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        #[event(name = "Deposited", stream = "accounts")]
        pub struct Deposited {
            pub cents: u32,
        }
    }
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Deposited", stream = "accounts", version = 2, upcast_from = v1::Deposited)]
    struct Deposited {
        cents: u64,
    }
    impl varvedb::Upcast<v1::Deposited> for Deposited {
        fn upcast(old: &v1::ArchivedDeposited) -> Self {
            Deposited {
                cents: u64::from(old.cents.to_native()),
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let old = [v1::Deposited { cents: 1 }, v1::Deposited { cents: 2 }];
    varve
        .events::<v1::Deposited>()
        .unwrap()
        .append_batch(StreamId(1), &old)
        .unwrap();
    let (_, seen) = capture(|| varve.migrate::<Deposited>().unwrap());
    assert!(seen.iter().any(|s| s.span && s.name == "varvedb.migrate"));
    let migrated = events(&seen, "varvedb.migrate");
    assert_eq!(
        (migrated[0].u64("events"), migrated[0].u64("blocks")),
        (2, 1)
    );
    assert_eq!(migrated[0].text("stream"), "accounts");
}

#[test]
fn a_snapshot_a_load_could_not_store_is_reported_and_the_load_still_succeeds() {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Grown", stream = "bulky")]
    struct Grown;

    /// 100 kB of state per event: a snapshot of three events needs the
    /// 256 KiB map to grow.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default)]
    struct Bulky {
        bytes: Vec<u8>,
    }
    impl varvedb::Aggregate for Bulky {
        type Event = Grown;
        type Command = ();
        type Error = std::convert::Infallible;
        const STREAM: &'static str = "bulky";
        fn apply(&mut self, _: &ArchivedGrown) {
            self.bytes.extend(std::iter::repeat_n(7, 100_000));
        }
        fn handle(&self, _: &()) -> Result<Vec<Grown>, Self::Error> {
            Ok(Vec::new())
        }
        fn snapshots() -> varvedb::Snapshots<Self> {
            varvedb::Snapshots::every(2).on_load()
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        map_size: 256 << 10,
        resize_wait: std::time::Duration::from_millis(50),
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    varve
        .events::<Grown>()
        .unwrap()
        .append_batch(StreamId(4), &[Grown, Grown, Grown])
        .unwrap();
    // A held snapshot keeps the map from growing: the snapshot write fails.
    let held = varve.global_reader().snapshot().unwrap();
    let (loaded, seen) = capture(|| varve.load::<Bulky>(StreamId(4)).unwrap());
    assert_eq!((loaded.state.bytes.len(), loaded.snapshot), (300_000, None));
    let skipped = events(&seen, "varvedb.snapshot_skipped");
    assert_eq!(skipped.len(), 1, "{seen:?}");
    assert_eq!(skipped[0].text("stream"), "bulky");
    assert_eq!((skipped[0].u64("id"), skipped[0].u64("version")), (4, 2));
    assert!(
        skipped[0].text("error").contains("map"),
        "{:?}",
        skipped[0].fields
    );
    drop(held);
    // With the map free to grow, the next load stores it and reports nothing.
    let (_, seen) = capture(|| varve.load::<Bulky>(StreamId(4)).unwrap());
    assert!(events(&seen, "varvedb.snapshot_skipped").is_empty());
    assert_eq!(
        varve.load::<Bulky>(StreamId(4)).unwrap().snapshot,
        Some(varvedb::StreamSequence(2))
    );
}
