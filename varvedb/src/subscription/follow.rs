//! The engine under every subscription: reads forward in short snapshot
//! pages, and waits for a commit when caught up.
//!
//! A page is one read snapshot, kept for at most [`PAGE_EVENTS`] events or
//! about [`PAGE_AGE`] (looked at every few events), dropped as soon as a
//! writer waiting to grow the map is noticed, and when the snapshot is read to
//! its end. So a subscription never keeps LMDB from reusing pages for long,
//! and holds no snapshot at all while it waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::stop::StopHandle;
use crate::error::{Error, Result};
use crate::storage::{Store, View};

/// The most events read from one snapshot before it is replaced by a newer one.
pub(crate) const PAGE_EVENTS: usize = 512;
/// The longest one snapshot is kept (a slow consumer gets a fresh one after it).
pub(crate) const PAGE_AGE: Duration = Duration::from_millis(100);
/// How often (in events read) a page looks at its age and for a pending resize.
const CHECK_EVERY: usize = 8;

/// What a subscription reads: opens an iterator at its position, and moves
/// the position past each item read.
pub(crate) trait Pager {
    type Item;
    type Page: Iterator<Item = Result<Self::Item>>;

    /// An iterator over `view` from the current position.
    fn open(&mut self, view: View) -> Self::Page;

    /// Moves the position past `item`; returns whether the item is wanted
    /// (it passes the filter).
    fn accept(&mut self, item: &Self::Item) -> bool;

    /// The position as a global sequence, for a pager of the global log
    /// (its lag behind the log's end is reported with feature `tracing`).
    fn log_position(&self) -> Option<u64> {
        None
    }

    /// Whether the last item accepted is still in `view`'s log, as it was
    /// delivered; a typed error if not ([`Error::CommitsLost`]). Asked when
    /// the server may have lost commits since ([`Store::rewinds`]).
    fn check_delivered(&mut self, _view: &mut View, _end: u64) -> Result<()> {
        Ok(())
    }
}

struct Page<I> {
    items: I,
    /// The log's end in the page's snapshot.
    end: u64,
    read: usize,
    opened: Instant,
}

/// The outcome of one [`Follower::step`].
pub(crate) enum Step<T> {
    /// The next wanted item.
    Item(T),
    /// Reading failed; the position stays on the item that failed.
    Failed(Error),
    /// A page ended early (size, age, or a pending map resize); the next step
    /// goes on at once. An async caller yields to its executor here.
    Yield,
    /// Everything before this log end was read, and the log has not grown
    /// past it yet.
    CaughtUp(u64),
}

/// Reads a [`Pager`] forward, page by page, across commits.
pub(crate) struct Follower<P: Pager> {
    store: Arc<Store>,
    pager: P,
    page: Option<Page<P::Page>>,
    /// The log's end in the last snapshot read to its end.
    seen: Option<u64>,
    /// [`Store::rewinds`] when the pager's position was last known good: if
    /// it moved, the next snapshot first checks the last item delivered.
    rewinds: u64,
    stop: Arc<AtomicBool>,
}

/// `now + timeout`, saturating (for `Duration::MAX`).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365))
}

impl<P: Pager> Follower<P> {
    pub(crate) fn new(store: Arc<Store>, pager: P) -> Self {
        Self::with_stop(store, pager, Arc::new(AtomicBool::new(false)))
    }

    /// A follower stopped by `stop` (shared with its owner).
    pub(crate) fn with_stop(store: Arc<Store>, pager: P, stop: Arc<AtomicBool>) -> Self {
        Follower {
            rewinds: store.rewinds(),
            store,
            pager,
            page: None,
            seen: None,
            stop,
        }
    }

    pub(crate) fn pager(&self) -> &P {
        &self.pager
    }

    /// Changes the pager's settings; the current page is dropped so the
    /// change applies from the current position.
    pub(crate) fn pager_mut(&mut self) -> &mut P {
        self.page = None;
        &mut self.pager
    }

    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn stop_handle(&self) -> StopHandle {
        StopHandle::new(Arc::clone(&self.stop), &self.store)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Drops the current snapshot, if any (the position is kept).
    pub(crate) fn release(&mut self) {
        self.page = None;
        self.seen = None;
    }

    /// Reads on until a wanted item, an error, the end of a page or the end
    /// of the log. Never waits for a commit.
    pub(crate) fn step(&mut self) -> Step<P::Item> {
        loop {
            // The clock and the gate are looked at every few events only:
            // they would cost as much as reading the event.
            let expired = self.page.as_ref().is_some_and(|p| {
                p.read >= PAGE_EVENTS
                    || (p.read % CHECK_EVERY == CHECK_EVERY - 1
                        && (p.opened.elapsed() >= PAGE_AGE || self.store.resize_pending()))
            });
            if expired {
                self.release();
                return Step::Yield;
            }
            let page = match self.page {
                Some(ref mut page) => page,
                None => {
                    // Keyed on the log's end, not on any commit: commits that
                    // only write state (checkpoints, snapshots) do not make
                    // a caught-up subscription read a page.
                    let rewinds = self.store.rewinds();
                    if let Some(seen) = self.seen.filter(|_| rewinds == self.rewinds) {
                        if self.store.current_end() <= seen {
                            // Asked again after the look: a rewind noticed
                            // meanwhile (the commit listener reconnecting)
                            // must not be waited past.
                            if self.store.rewinds() == self.rewinds {
                                return Step::CaughtUp(seen);
                            }
                        }
                    }
                    let mut view = match self.store.snapshot() {
                        Ok(view) => view,
                        Err(e) => return Step::Failed(e),
                    };
                    let end = match view.end_global() {
                        Ok(end) => end,
                        Err(e) => return Step::Failed(e),
                    };
                    // The server lost commits since the last item was read
                    // (PostgreSQL; never on LMDB): the item must still be
                    // there, or later events may reuse its sequence.
                    // Read after the snapshot opened, which notices a new
                    // epoch itself.
                    let rewinds = self.store.rewinds();
                    if rewinds != self.rewinds {
                        if let Err(e) = self.pager.check_delivered(&mut view, end) {
                            return Step::Failed(e);
                        }
                        self.rewinds = rewinds;
                        self.seen = None;
                    }
                    crate::trace::event!(
                        TRACE,
                        "varvedb.subscription",
                        "subscription reads a page",
                        cursor = self.pager.log_position(),
                        head = end,
                        lag = self.pager.log_position().map(|at| end.saturating_sub(at)),
                    );
                    self.page.insert(Page {
                        items: self.pager.open(view),
                        end,
                        read: 0,
                        opened: Instant::now(),
                    })
                }
            };
            match page.items.next() {
                Some(Ok(item)) => {
                    page.read += 1;
                    if self.pager.accept(&item) {
                        return Step::Item(item);
                    }
                }
                // An erased entity's event is passed over: erasure is not
                // damage, and a follower must not stop at it
                // (docs/security.md, "Erasure").
                Some(Err(Error::Erased { .. })) => page.read += 1,
                Some(Err(e)) => {
                    self.release();
                    return Step::Failed(e);
                }
                None => {
                    self.seen = Some(page.end);
                    self.page = None;
                }
            }
        }
    }

    /// The next wanted item, waiting up to `timeout` for it to be committed.
    /// `Ok(None)` when the time is up or the follower was stopped.
    pub(crate) fn next_timeout(&mut self, timeout: Duration) -> Result<Option<P::Item>> {
        // Set at the first wait: reading what is already committed is not waiting.
        let mut deadline = None;
        loop {
            if self.is_stopped() {
                self.release();
                return Ok(None);
            }
            match self.step() {
                Step::Item(item) => return Ok(Some(item)),
                Step::Failed(e) => return Err(e),
                Step::Yield => {}
                Step::CaughtUp(seen) => {
                    let deadline = *deadline.get_or_insert_with(|| deadline_after(timeout));
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.store.wait_for_commit(seen, deadline - now, &self.stop);
                }
            }
        }
    }

    /// The async form of [`Follower::next_timeout`] with no timeout: when
    /// caught up, registers the task's waker under `key` and returns
    /// `Pending`. `Ready(None)` once stopped.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        key: u64,
    ) -> Poll<Option<Result<P::Item>>> {
        loop {
            if self.is_stopped() {
                self.release();
                return Poll::Ready(None);
            }
            match self.step() {
                Step::Item(item) => return Poll::Ready(Some(Ok(item))),
                Step::Failed(e) => return Poll::Ready(Some(Err(e))),
                Step::Yield => {
                    // Catching up: let the executor run other tasks between pages.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Step::CaughtUp(seen) => {
                    self.store.register_waker(key, cx.waker());
                    // Look again after registering, so a commit in between is
                    // not missed (the poller thread looks for other processes').
                    if self.store.log_end() <= seen && !self.is_stopped() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}
