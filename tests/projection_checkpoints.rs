//! A projection's checkpoint moves only forward and only under the projector
//! that owns it, and a storage failure under a handler is the store's: a full
//! map grows whatever the handler made of the error.

use varvedb::{
    Durability, Error, ExternalProjection, ExternalProjector, GlobalEvent, GlobalSequence,
    HandlerError, OnError, Projection, ReadModel, StreamId, Varve, VarveConfig,
};
use varvedb_suite::{temp_store, Order};

fn append(varve: &Varve, count: u64) {
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    for n in 0..count {
        orders.append(StreamId(n), &Order::numbered(n)).unwrap();
    }
}

/// A store whose 64 KiB map a projection's writes outgrow at once.
fn tiny() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        map_size: 64 * 1024,
        durability: Durability::NoSync,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    (dir, varve)
}

/// What a handler does with the error of its `put`.
#[derive(Clone, Copy)]
enum Handling {
    /// Turns it into a string error of its own.
    Wrap,
    /// Ignores it and reports success.
    Swallow,
    /// Drops it and reports an unrelated error instead.
    Replace,
}

/// Writes a 16 KiB value per event (or, with `long_key`, a key LMDB refuses).
struct Bulky {
    handling: Handling,
    long_key: bool,
}

impl Projection for Bulky {
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let key = if self.long_key {
            vec![b'k'; 600]
        } else {
            event.global_sequence().0.to_be_bytes().to_vec()
        };
        let written = model.put(&key, &[7; 16 * 1024]);
        match (self.handling, written) {
            (_, Ok(())) => Ok(()),
            (Handling::Wrap, Err(e)) => Err(format!("could not write the model: {e}").into()),
            (Handling::Swallow, Err(_)) => Ok(()),
            (Handling::Replace, Err(_)) => Err("the handler's own error".into()),
        }
    }
}

#[test]
fn a_handler_that_wraps_a_full_map_error_still_lets_the_map_grow() {
    let (_dir, varve) = tiny();
    append(&varve, 40);
    let bulky = Bulky {
        handling: Handling::Wrap,
        long_key: false,
    };
    let mut projector = varve.projector("bulky", bulky).unwrap();
    assert_eq!(projector.catch_up().unwrap(), GlobalSequence(40));
    let (_, entries) = projector.model().entries().unwrap();
    assert_eq!(entries.len(), 40);
}

#[test]
fn a_handler_that_swallows_a_full_map_error_still_lets_the_map_grow() {
    let (_dir, varve) = tiny();
    append(&varve, 40);
    let bulky = Bulky {
        handling: Handling::Swallow,
        long_key: false,
    };
    let mut projector = varve.projector("bulky", bulky).unwrap();
    assert_eq!(projector.catch_up().unwrap(), GlobalSequence(40));
    let (_, entries) = projector.model().entries().unwrap();
    assert_eq!(entries.len(), 40, "no write lost to the retry");
}

#[test]
fn a_store_error_under_a_handler_is_the_stores_whatever_the_handler_returns() {
    let (_dir, varve) = temp_store();
    append(&varve, 5);
    let bulky = Bulky {
        handling: Handling::Replace,
        long_key: true,
    };
    // Skipping would record the store's failure as the handler's and move on.
    let mut projector = varve
        .projector("bulky", bulky)
        .unwrap()
        .on_error(OnError::Skip);
    let err = projector.catch_up().unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert_eq!(projector.checkpoint().unwrap(), GlobalSequence(0));
    assert!(projector.skipped().unwrap().is_empty());
}

/// A sink that counts deliveries; on its first one it runs `interloper`
/// (another projector of the same name) to its end.
#[derive(Default)]
struct Sink {
    delivered: u64,
    interloper: Option<Box<ExternalProjector<Sink>>>,
    reset_instead: bool,
}

impl ExternalProjection for Sink {
    fn deliver(&mut self, _: &GlobalEvent) -> Result<(), HandlerError> {
        if let Some(mut other) = self.interloper.take() {
            if self.reset_instead {
                other.reset()?;
            } else {
                other.catch_up()?;
            }
        }
        self.delivered += 1;
        Ok(())
    }
}

#[test]
fn a_second_external_projector_of_one_name_never_moves_the_checkpoint_back() {
    let (_dir, varve) = temp_store();
    append(&varve, 10);
    let ahead = varve.external_projector("mirror", Sink::default()).unwrap();
    let sink = Sink {
        interloper: Some(Box::new(ahead)),
        ..Sink::default()
    };
    let mut behind = varve
        .external_projector("mirror", sink)
        .unwrap()
        .checkpoint_every(1);
    let err = behind.catch_up().unwrap_err();
    assert!(
        matches!(
            err,
            Error::CheckpointMoved {
                expected: GlobalSequence(0),
                found: GlobalSequence(10),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(behind.checkpoint().unwrap(), GlobalSequence(10));
}

#[test]
fn an_external_projector_reset_by_another_never_skips_what_the_reset_undid() {
    let (_dir, varve) = temp_store();
    append(&varve, 10);
    let mut first = varve.external_projector("mirror", Sink::default()).unwrap();
    assert_eq!(first.catch_up().unwrap(), GlobalSequence(10));
    append(&varve, 5);
    let resetter = varve.external_projector("mirror", Sink::default()).unwrap();
    first.sink_mut().interloper = Some(Box::new(resetter));
    first.sink_mut().reset_instead = true;
    let err = first.catch_up().unwrap_err();
    assert!(
        matches!(
            err,
            Error::CheckpointMoved {
                expected: GlobalSequence(10),
                found: GlobalSequence(0),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(first.checkpoint().unwrap(), GlobalSequence(0));
}

struct Noop;

impl Projection for Noop {
    fn apply(&mut self, _: &GlobalEvent, _: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[test]
fn an_in_store_and_an_external_projection_of_one_name_never_share_a_checkpoint() {
    let (_dir, varve) = temp_store();
    append(&varve, 5);
    varve.projector("shared", Noop).unwrap().catch_up().unwrap();
    let mut external = varve.external_projector("shared", Sink::default()).unwrap();
    let err = external.catch_up().unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProjectionKindMismatch {
                stored: "in-store",
                requested: "external",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(external.sink().delivered, 0);
    assert!(external.reset().is_err(), "nor clear the other's");

    varve
        .external_projector("other", Sink::default())
        .unwrap()
        .catch_up()
        .unwrap();
    let err = varve
        .projector("other", Noop)
        .unwrap()
        .catch_up()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProjectionKindMismatch {
                stored: "external",
                requested: "in-store",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(varve.read_model("other").unwrap().checkpoint().is_err());
}
