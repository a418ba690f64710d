//! [`Projector`]: runs an in-store [`Projection`], exactly once per event.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::model::{ModelReader, ReadModel};
use super::namespace::{Namespace, Skipped};
use super::thread::{self, ProjectionThread, Run};
use super::{backoff, failed_at, HandlerError, OnError, Projection};
use crate::error::{Error, Result};
use crate::global::GlobalIter;
use crate::position::GlobalSequence;
use crate::storage::Store;
use crate::subscription::{FilterCache, StopHandle};

/// The default number of events applied per transaction.
pub(crate) const DEFAULT_BATCH: usize = 512;

/// Runs an in-store [`Projection`]: applies the log to its [`ReadModel`] in
/// batches, each batch and the checkpoint after it in one transaction.
/// Made by [`Varve::projector`](crate::Varve::projector).
///
/// Because the checkpoint is read and written inside the same transaction
/// as the model, a batch is applied exactly once even across crashes, and
/// two projectors of the same name (threads or processes) never apply an
/// event twice. While a batch is applied the store's writer lock is held:
/// appends wait for at most one batch ([`Projector::batch_size`]).
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Sold { units: u32 }
/// use varvedb::{GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId};
///
/// struct Total;
/// impl Projection for Total {
///     fn apply(&mut self, event: &GlobalEvent, model: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
///         let units = u64::from(event.archived_plain::<Sold>()?.units.to_native());
///         let total = model.get_u64(b"total")?.unwrap_or(0);
///         Ok(model.put_u64(b"total", total + units)?)
///     }
/// }
///
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut sales = varve.stream::<Sold, 16>("sales")?;
/// sales.append_batch(StreamId(1), &[Sold { units: 1 }, Sold { units: 2 }])?;
///
/// // Follow the log on a thread of its own.
/// let running = varve.projector("total", Total)?.spawn()?;
/// sales.append(StreamId(2), &Sold { units: 4 })?;
///
/// let (mut projector, outcome) = running.stop();
/// outcome?;
/// projector.catch_up()?; // whatever the thread had not applied yet
/// assert_eq!(projector.checkpoint()?, GlobalSequence(3));
/// assert_eq!(projector.model().get_u64(b"total")?, Some(7));
///
/// // A rebuild from scratch gives the same model.
/// projector.rebuild()?;
/// assert_eq!(projector.model().get_u64(b"total")?, Some(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Projector<P> {
    store: Arc<Store>,
    ns: Namespace,
    projection: P,
    filter: FilterCache,
    policy: OnError,
    batch: usize,
    stop: Arc<AtomicBool>,
    key: Vec<u8>,
}

/// Why a batch did not commit.
enum Failure {
    /// The handler failed on the event at `.0`; the batch was rolled back.
    Handler(u64, HandlerError),
    /// The store failed.
    Store(Error),
}

impl<P: Projection> Projector<P> {
    pub(crate) fn new(store: Arc<Store>, ns: Namespace, projection: P) -> Self {
        let filter = FilterCache::new(projection.filter());
        Projector {
            store,
            ns,
            projection,
            filter,
            policy: OnError::Stop,
            batch: DEFAULT_BATCH,
            stop: Arc::new(AtomicBool::new(false)),
            key: Vec::new(),
        }
    }

    /// Sets what happens when the handler fails (default [`OnError::Stop`]).
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how many events are applied per transaction (default 512, at
    /// least 1). Larger batches sync less often; smaller ones hold the writer
    /// lock for less time.
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The projection, mutably.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// Gives the projection back.
    pub fn into_inner(self) -> P {
        self.projection
    }

    /// The global sequence of the next event to apply: every event before it
    /// is reflected in the model (or was filtered out or skipped).
    pub fn checkpoint(&self) -> Result<GlobalSequence> {
        self.ns.checkpoint(&self.store).map(GlobalSequence)
    }

    /// A reader of the projection's model.
    pub fn model(&self) -> ModelReader {
        ModelReader::new(Arc::clone(&self.store), self.ns.clone())
    }

    /// The events skipped under [`OnError::Skip`], with their errors.
    pub fn skipped(&self) -> Result<Vec<Skipped>> {
        self.ns.skipped(&self.store)
    }

    /// A handle that stops [`Projector::run`] (or a spawned projector) from
    /// another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle::new(Arc::clone(&self.stop), &self.store)
    }

    /// Applies every event committed before the call; returns the new
    /// checkpoint.
    ///
    /// # Errors
    /// [`Error::Projection`] when the handler fails on an event (under
    /// [`OnError::Stop`], or after the retries of [`OnError::Retry`]): every
    /// event before it is applied and checkpointed, none after it. Storage
    /// errors as themselves, with the checkpoint at the last committed batch.
    pub fn catch_up(&mut self) -> Result<GlobalSequence> {
        let target = self.store.snapshot()?.end_global()?;
        self.advance_to(target).map(GlobalSequence)
    }

    /// Applies events as they are committed, until stopped through
    /// [`Projector::stop_handle`]: catches up, then waits for commits (with no
    /// snapshot open) and applies each new one.
    ///
    /// # Errors
    /// As [`Projector::catch_up`]; the projector stops at the error.
    pub fn run(&mut self) -> Result<()> {
        let result = self.run_until_stopped();
        // Ready for another run; a stop requested after this point stops it.
        self.stop.store(false, Ordering::Release);
        result
    }

    fn run_until_stopped(&mut self) -> Result<()> {
        while !self.stop.load(Ordering::Acquire) {
            let mut view = self.store.snapshot()?;
            let end = view.end_global()?;
            let checkpoint = self.ns.checkpoint_in_view(&mut view)?;
            drop(view);
            if checkpoint < end {
                self.advance_to(end)?;
            } else {
                // Woken by new events only, not by checkpoints (ours or others').
                self.store.wait_for_commit(end, Duration::MAX, &self.stop);
            }
        }
        Ok(())
    }

    /// Runs the projection on a thread of its own (see [`Projector::run`]).
    ///
    /// # Errors
    /// If the operating system cannot start a thread.
    pub fn spawn(self) -> std::io::Result<ProjectionThread<Self>>
    where
        P: Send + 'static,
    {
        thread::spawn(self)
    }

    /// Deletes the model, the checkpoint and the skip records, in one
    /// transaction: the projection starts over from the first event.
    pub fn reset(&mut self) -> Result<()> {
        let ns = &self.ns;
        self.store.write(|w| ns.clear(w))
    }

    /// [`Projector::reset`], then [`Projector::catch_up`]. Readers of the
    /// model see it rebuilt batch by batch.
    ///
    /// # Errors
    /// As [`Projector::catch_up`].
    pub fn rebuild(&mut self) -> Result<GlobalSequence> {
        self.reset()?;
        self.catch_up()
    }

    /// Applies batches until the checkpoint reaches `target` or a run is stopped.
    fn advance_to(&mut self, target: u64) -> Result<u64> {
        let mut checkpoint = self.ns.checkpoint(&self.store)?;
        while checkpoint < target {
            let next = match self.batch(target) {
                Ok(next) => next,
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Handler(at, source)) => self.recover(at, source)?,
            };
            if next <= checkpoint {
                break; // stopped while retrying, or another projector of this name is ahead
            }
            checkpoint = next;
        }
        Ok(checkpoint)
    }

    /// Handles a failure at `at` by the policy, after committing the events before it.
    fn recover(&mut self, mut at: u64, mut source: HandlerError) -> Result<u64> {
        // Commit the events before the failure (the failed batch was rolled back).
        loop {
            match self.batch(at) {
                Ok(next) if next >= at => break,
                Ok(_) => {}
                Err(Failure::Store(e)) => return Err(e),
                // A handler that failed earlier this time: that is the failure now.
                Err(Failure::Handler(earlier, s)) => (at, source) = (earlier, s),
            }
        }
        match self.policy {
            OnError::Stop => Err(failed_at(self.ns.name(), at, source)),
            OnError::Skip => {
                let (ns, message) = (&self.ns, source.to_string());
                self.store.write(|w| {
                    // Only if no other projector of this name moved on meanwhile.
                    if ns.checkpoint_in(w)? == at {
                        ns.record_skip(w, at, &message)?;
                        ns.write_checkpoint(w, at + 1)?;
                    }
                    Ok(())
                })?;
                Ok(at + 1)
            }
            OnError::Retry {
                attempts,
                backoff: pause,
            } => {
                for _ in 0..attempts {
                    backoff(&self.store, pause, &self.stop);
                    if self.stop.load(Ordering::Acquire) {
                        return Ok(at);
                    }
                    match self.batch(at + 1) {
                        Ok(next) => return Ok(next),
                        Err(Failure::Handler(again, s)) if again == at => source = s,
                        Err(Failure::Handler(other, s)) => {
                            return Err(failed_at(self.ns.name(), other, s))
                        }
                        Err(Failure::Store(e)) => return Err(e),
                    }
                }
                Err(failed_at(self.ns.name(), at, source))
            }
        }
    }

    /// One transaction: reads the checkpoint, applies events from it up to
    /// `limit` (at most one batch), writes the new checkpoint, commits.
    fn batch(&mut self, limit: u64) -> std::result::Result<u64, Failure> {
        let Projector {
            store,
            ns,
            projection,
            filter,
            batch,
            key,
            ..
        } = self;
        let mut failure = None;
        let mut started = 0;
        let written = store.write(|w| {
            failure = None;
            let from = ns.checkpoint_in(w)?;
            started = from;
            let end = limit.min(from.saturating_add(*batch as u64));
            if from >= end {
                return Ok(from);
            }
            let mut events = GlobalIter::from_view(w.snapshot(store)?, from);
            let mut next = from;
            while next < end {
                let Some(event) = events.next() else { break };
                let event = match event {
                    Ok(event) => event,
                    // An erased entity's event is passed over (docs/security.md).
                    Err(Error::Erased { at, .. }) => {
                        next = at.0 + 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if filter.matches(&event) {
                    // Forget failures of reads before this event.
                    w.take_failure();
                    let applied = projection.apply(&event, &mut ReadModel::new(w, ns, key));
                    if let Err(source) = applied {
                        // If the store failed under the handler, that is the
                        // failure, as itself, whatever the handler returned
                        // (wrapped, or an error of its own): a full map is
                        // then grown and the batch retried by `Store::write`.
                        if let Some(store_error) = w.take_failure() {
                            return Err(store_error);
                        }
                        let at = event.global_sequence().0;
                        failure = Some((at, source));
                        // Roll back the batch; the caller commits what came before `at`.
                        return Err(failed_at(ns.name(), at, "rolled back".into()));
                    }
                }
                next = event.global_sequence().0 + 1;
            }
            drop(events);
            if next > from {
                ns.write_checkpoint(w, next)?;
            }
            Ok(next)
        });
        match (written, failure) {
            (Ok(next), _) => {
                super::trace_progress(store, ns, "in-store", started, next);
                Ok(next)
            }
            (Err(_), Some((at, source))) => Err(Failure::Handler(at, source)),
            (Err(e), None) => Err(Failure::Store(e)),
        }
    }
}

impl<P: Projection + Send + 'static> Run for Projector<P> {
    fn run(&mut self) -> Result<()> {
        Projector::run(self)
    }

    fn stop_handle(&self) -> StopHandle {
        Projector::stop_handle(self)
    }

    fn name(&self) -> &str {
        self.ns.name()
    }
}

impl<P> fmt::Debug for Projector<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projector")
            .field("name", &self.ns.name())
            .field("policy", &self.policy)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}
