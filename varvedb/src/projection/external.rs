//! [`ExternalProjector`]: runs an [`ExternalProjection`], at least once per event.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::namespace::{Namespace, Skipped};
use super::thread::{self, ProjectionThread, Run};
use super::{backoff, failed_at, ExternalProjection, OnError};
use crate::error::{Error, Result};
use crate::global::GlobalEvent;
use crate::position::GlobalSequence;
use crate::storage::Store;
use crate::subscription::{Filter, Follower, GlobalPager, Step, StopHandle};

/// The default number of acknowledged events between checkpoint writes.
pub(crate) const DEFAULT_CHECKPOINT_EVERY: usize = 256;

/// Runs an [`ExternalProjection`]: delivers each event to the sink, and writes
/// the checkpoint once the sink acknowledged the events before it. Made by
/// [`Varve::external_projector`](crate::Varve::external_projector).
///
/// Delivery is at least once: after a crash, up to
/// [`checkpoint_every`](ExternalProjector::checkpoint_every) events since the
/// last checkpoint are delivered again. Run one projector per name at a time:
/// the checkpoint is written only if it is still the one this projector last
/// read or wrote, so a second one fails with
/// [`Error::CheckpointMoved`](crate::Error::CheckpointMoved) rather than
/// move the checkpoint back or past events.
pub struct ExternalProjector<S> {
    store: Arc<Store>,
    ns: Namespace,
    sink: S,
    filter: Filter,
    policy: OnError,
    every: usize,
    stop: Arc<AtomicBool>,
}

/// A checkpoint to write: acknowledged up to `next`, plus events skipped.
struct Progress {
    next: u64,
    saved: u64,
    /// The checkpoint's generation when `saved` was read or written.
    generation: u64,
    skipped: Vec<(u64, String)>,
}

impl Progress {
    fn pending(&self) -> usize {
        (self.next - self.saved) as usize + self.skipped.len()
    }
}

impl<S: ExternalProjection> ExternalProjector<S> {
    pub(crate) fn new(store: Arc<Store>, ns: Namespace, sink: S) -> Self {
        let filter = sink.filter();
        ExternalProjector {
            store,
            ns,
            sink,
            filter,
            policy: OnError::Stop,
            every: DEFAULT_CHECKPOINT_EVERY,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets what happens when delivery fails (default [`OnError::Stop`]).
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how many acknowledged events may go between checkpoint writes
    /// (default 256, at least 1): the most a crash can redeliver. The
    /// checkpoint is also written whenever the projector catches up or stops.
    pub fn checkpoint_every(mut self, events: usize) -> Self {
        self.every = events.max(1);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Gives the sink back.
    pub fn into_inner(self) -> S {
        self.sink
    }

    /// The global sequence of the next event to deliver: every event before
    /// it was acknowledged (or filtered out or skipped).
    pub fn checkpoint(&self) -> Result<GlobalSequence> {
        self.ns.checkpoint(&self.store).map(GlobalSequence)
    }

    /// The events skipped under [`OnError::Skip`], with their errors.
    pub fn skipped(&self) -> Result<Vec<Skipped>> {
        self.ns.skipped(&self.store)
    }

    /// A handle that stops [`ExternalProjector::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle::new(Arc::clone(&self.stop), &self.store)
    }

    /// Delivers every event committed before the call; returns the new
    /// checkpoint.
    ///
    /// # Errors
    /// [`Error::Projection`](crate::Error::Projection) when delivery fails on
    /// an event (and the policy does not skip it): the checkpoint is written
    /// just before it. Storage errors as themselves.
    pub fn catch_up(&mut self) -> Result<GlobalSequence> {
        let target = self.store.snapshot()?.end_global()?;
        self.follow(Some(target)).map(GlobalSequence)
    }

    /// Delivers events as they are committed, until stopped through
    /// [`ExternalProjector::stop_handle`].
    ///
    /// # Errors
    /// As [`ExternalProjector::catch_up`]; the projector stops at the error.
    pub fn run(&mut self) -> Result<()> {
        let result = self.follow(None).map(drop);
        self.stop.store(false, Ordering::Release);
        result
    }

    /// Runs the projection on a thread of its own (see [`ExternalProjector::run`]).
    ///
    /// # Errors
    /// If the operating system cannot start a thread.
    pub fn spawn(self) -> std::io::Result<ProjectionThread<Self>>
    where
        S: Send + 'static,
    {
        thread::spawn(self)
    }

    /// Deletes the checkpoint and skip records, then empties the sink
    /// ([`ExternalProjection::reset`]). In that order: a crash in between
    /// redelivers everything to a sink not yet emptied, which at-least-once
    /// delivery allows, rather than leave a checkpoint over an empty sink.
    ///
    /// # Errors
    /// Storage errors; [`Error::Projection`](crate::Error::Projection) (at
    /// global sequence 0) if the sink's reset fails.
    pub fn reset(&mut self) -> Result<()> {
        let ns = &self.ns;
        self.store.write(|w| ns.clear(w))?;
        self.sink
            .reset()
            .map_err(|source| failed_at(self.ns.name(), 0, source))
    }

    /// [`ExternalProjector::reset`], then [`ExternalProjector::catch_up`].
    ///
    /// # Errors
    /// As both.
    pub fn rebuild(&mut self) -> Result<GlobalSequence> {
        self.reset()?;
        self.catch_up()
    }

    /// Delivers from the checkpoint until `target` (or until stopped, for
    /// `None`), saving progress as it goes and when it ends, error or not.
    fn follow(&mut self, target: Option<u64>) -> Result<u64> {
        let (from, generation) = self.ns.position(&self.store)?;
        let pager = GlobalPager::new(GlobalSequence(from), self.filter.clone());
        let mut events =
            Follower::with_stop(Arc::clone(&self.store), pager, Arc::clone(&self.stop));
        let mut progress = Progress {
            next: from,
            saved: from,
            generation,
            skipped: Vec::new(),
        };
        let outcome = self.deliver_all(&mut events, &mut progress, target);
        events.release();
        let saved = if progress.pending() > 0 {
            self.save(&mut progress)
        } else {
            Ok(())
        };
        // A delivery error matters more than failing to save the progress before it.
        outcome.and(saved).map(|()| progress.next)
    }

    fn deliver_all(
        &mut self,
        events: &mut Follower<GlobalPager>,
        progress: &mut Progress,
        target: Option<u64>,
    ) -> Result<()> {
        loop {
            // Everything before the position was delivered, skipped or filtered out.
            progress.next = events.pager().position().0;
            if progress.pending() >= self.every {
                self.save(progress)?;
            }
            if events.is_stopped() || target.is_some_and(|t| progress.next >= t) {
                return Ok(());
            }
            match events.step() {
                Step::Item(event) => {
                    if let Some(error) = self.deliver(&event)? {
                        progress.skipped.push((event.global_sequence().0, error));
                    }
                }
                Step::Failed(e) => return Err(e),
                Step::Yield => {}
                Step::CaughtUp(seen) => {
                    progress.next = events.pager().position().0;
                    if progress.pending() > 0 {
                        self.save(progress)?;
                    }
                    if target.is_some() {
                        return Ok(());
                    }
                    self.store.wait_for_commit(seen, Duration::MAX, &self.stop);
                }
            }
        }
    }

    /// Delivers one event under the policy: `Some(error)` if it was skipped.
    fn deliver(&mut self, event: &GlobalEvent) -> Result<Option<String>> {
        let mut tries = 0;
        loop {
            let source = match self.sink.deliver(event) {
                Ok(()) => return Ok(None),
                Err(source) => source,
            };
            let at = event.global_sequence().0;
            match self.policy {
                OnError::Skip => return Ok(Some(source.to_string())),
                OnError::Retry {
                    attempts,
                    backoff: pause,
                } if tries < attempts => {
                    tries += 1;
                    backoff(&self.store, pause, &self.stop);
                    if self.stop.load(Ordering::Acquire) {
                        return Err(failed_at(self.ns.name(), at, source));
                    }
                }
                _ => return Err(failed_at(self.ns.name(), at, source)),
            }
        }
    }

    /// Writes the checkpoint (and skip records) if the store's checkpoint is
    /// still the one this projector last read or wrote, at the same
    /// generation: a compare-and-set, so another projector of the name (or a
    /// reset, even one that brought the checkpoint back to the same value) is
    /// never overwritten, which would move the checkpoint back or skip events.
    fn save(&self, progress: &mut Progress) -> Result<()> {
        let (ns, next, skipped) = (&self.ns, progress.next, &progress.skipped);
        let (expected, generation) = (progress.saved, progress.generation);
        let written = self.store.write(|w| {
            let (found, found_generation) = ns.position_in(w)?;
            if found != expected || found_generation != generation {
                return Err(Error::CheckpointMoved {
                    projection: ns.name().to_owned(),
                    expected: GlobalSequence(expected),
                    found: GlobalSequence(found),
                });
            }
            for (at, error) in skipped {
                ns.record_skip(w, *at, error)?;
            }
            ns.write_checkpoint(w, next)?;
            Ok(generation.wrapping_add(1))
        })?;
        super::trace_progress(&self.store, &self.ns, "external", progress.saved, next);
        progress.saved = next;
        progress.generation = written;
        progress.skipped.clear();
        Ok(())
    }
}

impl<S: ExternalProjection + Send + 'static> Run for ExternalProjector<S> {
    fn run(&mut self) -> Result<()> {
        ExternalProjector::run(self)
    }

    fn stop_handle(&self) -> StopHandle {
        ExternalProjector::stop_handle(self)
    }

    fn name(&self) -> &str {
        self.ns.name()
    }
}

impl<S> fmt::Debug for ExternalProjector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalProjector")
            .field("name", &self.ns.name())
            .field("policy", &self.policy)
            .field("checkpoint_every", &self.every)
            .finish_non_exhaustive()
    }
}
