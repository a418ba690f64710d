//! [`ProjectionThread`]: a projector running on a thread of its own.

use std::fmt;
use std::thread::JoinHandle;

use crate::error::Result;
use crate::subscription::StopHandle;

/// A projector that can run until stopped (both kinds of projector).
pub(crate) trait Run: Send + 'static {
    fn run(&mut self) -> Result<()>;
    fn stop_handle(&self) -> StopHandle;
    fn name(&self) -> &str;
}

/// A projector ([`Projector`](crate::Projector) or
/// [`ExternalProjector`](crate::ExternalProjector)) following the log on a
/// thread of its own, made by its `spawn`. Stopping it gives the projector
/// back with the outcome of its run.
///
/// Dropping it without [`ProjectionThread::stop`] asks the thread to stop
/// and lets it finish on its own. Until it has, that thread owns a handle
/// of the store: the store stays open (its files in use) after the caller's
/// last [`Varve`](crate::Varve) is dropped, and closes on that thread. Call
/// [`ProjectionThread::stop`] to wait for it.
pub struct ProjectionThread<R> {
    thread: Option<JoinHandle<(R, Result<()>)>>,
    stop: StopHandle,
}

/// Starts `runner` on a thread of its own.
pub(crate) fn spawn<R: Run>(mut runner: R) -> std::io::Result<ProjectionThread<R>> {
    let stop = runner.stop_handle();
    let thread = std::thread::Builder::new()
        .name(format!("varvedb-projection-{}", runner.name()))
        .spawn(move || {
            let outcome = runner.run();
            (runner, outcome)
        })?;
    Ok(ProjectionThread {
        thread: Some(thread),
        stop,
    })
}

impl<R> ProjectionThread<R> {
    /// A handle that stops the projector from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Whether the run ended (it ends by itself only on an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the projector and waits for its thread: returns the projector
    /// and how its run ended (`Ok` when stopped, the error that ended it
    /// otherwise). The projector keeps what it applied and can run again.
    ///
    /// # Panics
    /// If the projection's handler panicked, the panic goes on here.
    pub fn stop(mut self) -> (R, Result<()>) {
        self.stop.stop();
        let thread = self.thread.take();
        match thread.map(JoinHandle::join) {
            Some(Ok(out)) => out,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("the thread is only taken here, by value"),
        }
    }
}

impl<R> Drop for ProjectionThread<R> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
        }
    }
}

impl<R> fmt::Debug for ProjectionThread<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionThread")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}
