//! Projections: keep a read model up to date from the global log, with a
//! durable checkpoint.
//!
//! - An **in-store** [`Projection`] keeps its read model in the store itself
//!   (a [`ReadModel`] of keys and values). Its [`Projector`] applies events in
//!   batches, each batch's model writes and the checkpoint in **one**
//!   transaction: after a crash the model reflects exactly the events before
//!   the checkpoint, each applied **exactly once**.
//! - An [`ExternalProjection`] feeds a sink outside the store (a search index,
//!   another database, a message bus). Its [`ExternalProjector`] writes the
//!   checkpoint only after the sink acknowledged the events before it, so
//!   delivery is **at least once**: after a crash the events since the last
//!   checkpoint are delivered again, and the sink deduplicates them by
//!   [`GlobalEvent::global_sequence`].
//!
//! A projection can be run to the end of the log ([`Projector::catch_up`]),
//! followed live on the current thread ([`Projector::run`]) or on its own
//! ([`Projector::spawn`]), stopped, [reset](Projector::reset) and
//! [rebuilt](Projector::rebuild) from the start. When its handler fails, the
//! [`OnError`] policy decides: stop at that event (the default), retry it, or
//! skip it on the record. The checkpoint never moves past an event silently.

mod external;
mod model;
mod namespace;
mod projector;
pub(crate) mod status;
mod thread;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::global::GlobalEvent;
use crate::position::GlobalSequence;
use crate::storage::Store;
use crate::subscription::Filter;

pub use external::ExternalProjector;
pub use model::{ModelReader, ReadModel};
pub use namespace::Skipped;
pub(crate) use namespace::{Kind, Namespace};
pub use projector::Projector;
pub use status::{ProjectionKind, ProjectionReset, ProjectionStatus};
pub use thread::ProjectionThread;

/// What a projection handler returns on failure: any error.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A read model kept in the store, updated exactly once per event.
///
/// `apply` folds one event into the [`ReadModel`]. Keep everything the
/// projection knows in the model: `apply` may run again for an event whose
/// transaction was rolled back (a failure later in the same batch, or map
/// growth), so state kept in the projection's own fields could see an event
/// twice. Do not keep the event (or references into it) past `apply`, and do
/// not append to the store from it: `apply` runs inside the store's write
/// transaction, which an append would wait for forever.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{GlobalEvent, HandlerError, Projection, ReadModel, StreamId, Varve};
///
/// #[derive(Archive, Serialize)]
/// struct Sold { product: String, units: u32 }
///
/// /// Units sold per product.
/// struct UnitsSold;
///
/// impl Projection for UnitsSold {
///     fn apply(&mut self, event: &GlobalEvent, model: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
///         let sold = event.archived_plain::<Sold>()?;
///         let key = sold.product.as_bytes();
///         let units = model.get_u64(key)?.unwrap_or(0) + u64::from(sold.units.to_native());
///         model.put_u64(key, units)?;
///         Ok(())
///     }
/// }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::new(dir.path())?;
/// let mut sales = varve.stream::<Sold, 64>("sales")?;
/// sales.append(StreamId(1), &Sold { product: "tea".into(), units: 2 })?;
/// sales.append(StreamId(2), &Sold { product: "tea".into(), units: 3 })?;
///
/// let mut projector = varve.projector("units_sold", UnitsSold)?;
/// projector.catch_up()?;
/// assert_eq!(projector.model().get_u64(b"tea")?, Some(5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Projection {
    /// Which events to apply; the others only move the checkpoint. All by default.
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Applies `event` to `model`. An error rolls back this event's writes and
    /// is handled by the projector's [`OnError`] policy.
    ///
    /// # Errors
    /// Whatever the handler decides. When `model` returned a storage error
    /// and the handler then fails, the store's error ends the batch as
    /// itself, not as a handler failure, whatever the handler returned (the
    /// error passed on with `?`, wrapped, or replaced). A full memory map is
    /// grown and the batch applied again even if the handler swallowed the
    /// error and returned `Ok`.
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError>;
}

/// A projection into a sink outside the store, delivered at least once.
///
/// `deliver` returns `Ok` only once the sink has acknowledged the event; the
/// checkpoint is written after that, every few hundred events and whenever
/// the projector catches up or stops. After a crash, events since the last
/// checkpoint are delivered again: deduplicate them with
/// [`GlobalEvent::global_sequence`] (store the last one applied in the sink,
/// in the same sink transaction as the effect, for exactly-once).
///
/// ```
/// use std::collections::BTreeMap;
/// use varvedb::{ExternalProjection, GlobalEvent, GlobalSequence, HandlerError};
///
/// /// Counts events per stream in memory, ignoring redeliveries.
/// #[derive(Default)]
/// struct Counts { per_stream: BTreeMap<String, u64>, next: u64 }
///
/// impl ExternalProjection for Counts {
///     fn deliver(&mut self, event: &GlobalEvent) -> Result<(), HandlerError> {
///         if event.global_sequence().0 < self.next {
///             return Ok(()); // seen before a crash
///         }
///         *self.per_stream.entry(event.stream_name().to_owned()).or_default() += 1;
///         self.next = event.global_sequence().0 + 1;
///         Ok(())
///     }
///
///     fn reset(&mut self) -> Result<(), HandlerError> {
///         *self = Counts::default();
///         Ok(())
///     }
/// }
///
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Ping;
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// varve.stream::<Ping, 16>("pings")?.append(varvedb::StreamId(1), &Ping)?;
/// let mut projector = varve.external_projector("counts", Counts::default())?;
/// assert_eq!(projector.catch_up()?, GlobalSequence(1));
/// assert_eq!(projector.sink().per_stream["pings"], 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ExternalProjection {
    /// Which events to deliver; the others only move the checkpoint. All by default.
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Delivers `event` to the sink, returning once the sink acknowledged it.
    ///
    /// # Errors
    /// Whatever the sink reports; the projector's [`OnError`] policy decides.
    fn deliver(&mut self, event: &GlobalEvent) -> Result<(), HandlerError>;

    /// Empties the sink, for [`ExternalProjector::reset`] and
    /// [`ExternalProjector::rebuild`]. Does nothing by default.
    ///
    /// # Errors
    /// Whatever the sink reports.
    fn reset(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// What a projector does when its handler fails on an event.
///
/// ```
/// use std::time::Duration;
/// use varvedb::OnError;
/// let patient = OnError::Retry { attempts: 5, backoff: Duration::from_millis(200) };
/// assert_ne!(patient, OnError::default());
/// assert_eq!(OnError::default(), OnError::Stop);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnError {
    /// Stop with [`Error::Projection`] naming the event; the checkpoint stays
    /// on it, so the next run tries it again. The default.
    #[default]
    Stop,
    /// Try the event again up to `attempts` more times, `backoff` apart, then
    /// stop as [`OnError::Stop`] does.
    Retry {
        /// How many more times to try.
        attempts: u32,
        /// How long to wait before each new try.
        backoff: Duration,
    },
    /// Record the event and the error (see [`Projector::skipped`]) and go on
    /// after it.
    Skip,
}

/// A handler failure at `at`, as the error a projector returns.
pub(crate) fn failed_at(name: &str, at: u64, source: HandlerError) -> Error {
    Error::Projection {
        projection: name.to_owned(),
        at: GlobalSequence(at),
        source,
    }
}

/// Reports a committed checkpoint (feature `tracing`): the projection
/// moved from `from` to `next`; its lag is the distance to the log's end as
/// this process last saw it.
pub(crate) fn trace_progress(store: &Store, ns: &Namespace, kind: &str, from: u64, next: u64) {
    if next <= from {
        return;
    }
    crate::trace::event!(
        DEBUG,
        "varvedb.projection",
        "projection checkpoint written",
        name = ns.name(),
        kind = kind,
        checkpoint = next,
        batch = next.saturating_sub(from),
        lag = store.log_end().saturating_sub(next),
    );
}

/// Waits `pause` (for a retry's backoff), or less if `stop` is set.
pub(crate) fn backoff(store: &Arc<Store>, pause: Duration, stop: &std::sync::atomic::AtomicBool) {
    let start = Instant::now();
    let deadline = start
        .checked_add(pause)
        .unwrap_or_else(|| start + Duration::from_secs(60 * 60 * 24 * 365));
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // Returns early on a new event; look at the clock again.
        store.wait_for_commit(store.log_end(), deadline - now, stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;
    impl Projection for Noop {
        fn apply(
            &mut self,
            _: &GlobalEvent,
            _: &mut ReadModel<'_, '_>,
        ) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn projectors_move_between_threads() {
        fn send<T: Send>() {}
        send::<Projector<Noop>>();
        send::<ProjectionThread<Projector<Noop>>>();
        send::<ModelReader>();
    }
}
