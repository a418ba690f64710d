//! The map gate: counts the transactions this process has open, so the memory
//! map is only remapped (grown) when none is.
//!
//! LMDB allows `mdb_env_set_mapsize` on an open environment only while the
//! calling process has no active transaction: remapping moves the map, and every
//! pointer a reader holds into it would dangle. Every snapshot and every write
//! transaction holds a [`GateGuard`]; [`MapGate::exclusive_within`] stops new entries,
//! waits for the count to reach zero, and runs the resize.

use std::sync::Arc;
use std::time::Duration;

use super::sync::{unlocked, AtomicBool, Condvar, Instant, Mutex, Ordering};

#[derive(Debug, Default)]
struct State {
    active: usize,
    resizing: bool,
}

#[derive(Debug, Default)]
pub(crate) struct MapGate {
    state: Mutex<State>,
    /// Mirrors `state.resizing` for the lock-free check readers make on every call.
    pending: AtomicBool,
    changed: Condvar,
    /// How many times [`MapGate::exclusive_within`] gave up waiting (for tests that
    /// count resize waits instead of timing them).
    #[cfg(test)]
    pub(crate) timeouts: std::sync::atomic::AtomicUsize,
}

/// Proof that the holder may use the memory map. Dropping it lets a pending
/// resize proceed.
#[derive(Debug)]
pub(crate) struct GateGuard {
    gate: Arc<MapGate>,
}

impl MapGate {
    /// Enters the gate, waiting while a resize is in progress.
    pub(crate) fn enter(self: &Arc<Self>) -> GateGuard {
        let mut state = self.state.lock();
        while state.resizing {
            self.changed.wait(&mut state);
        }
        state.active += 1;
        GateGuard {
            gate: Arc::clone(self),
        }
    }

    /// Enters the gate unless a resize is pending or running (`None`): for
    /// a thread that must never wait here (the commit poller, which holds
    /// a lock a task's drop waits for, on a thread that may hold the
    /// snapshot the resize waits for).
    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<GateGuard> {
        let mut state = self.state.lock();
        if state.resizing {
            return None;
        }
        state.active += 1;
        Some(GateGuard {
            gate: Arc::clone(self),
        })
    }

    /// Enters the gate without waiting for a pending resize. Only for a thread
    /// that already holds a guard (a write transaction's): no remap can be
    /// running or start while it does, and waiting here would deadlock with a
    /// resize that waits for that guard.
    pub(crate) fn enter_nested(self: &Arc<Self>) -> GateGuard {
        let mut state = self.state.lock();
        debug_assert!(state.active > 0, "enter_nested without a held guard");
        state.active += 1;
        GateGuard {
            gate: Arc::clone(self),
        }
    }

    /// Whether a writer is waiting to resize (readers drop cached snapshots).
    pub(crate) fn resize_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// [`MapGate::exclusive_within`] waiting at most `wait` (for tests).
    #[cfg(test)]
    pub(crate) fn exclusive<R>(
        &self,
        wait: Duration,
        release_idle: impl FnMut(),
        f: impl FnOnce() -> R,
    ) -> Result<R, usize> {
        self.exclusive_within(Some(wait), release_idle, f)
    }

    /// Runs `f` while no other transaction of this process is active, waiting
    /// at most `wait` for open ones to close. On timeout returns the number of
    /// transactions still open.
    ///
    /// While transactions are open it calls `release_idle` (with the gate
    /// unlocked) every few milliseconds, so that idle holders (snapshots that
    /// readers cache between calls) can be closed.
    ///
    /// With `wait` `None` it never waits: not for another thread's resize,
    /// nor for open transactions (after asking `release_idle` once to close
    /// idle ones). For a thread holding what a holder of a transaction may
    /// be waiting for (the commit poller).
    pub(crate) fn exclusive_within<R>(
        &self,
        wait: Option<Duration>,
        mut release_idle: impl FnMut(),
        f: impl FnOnce() -> R,
    ) -> Result<R, usize> {
        let deadline = Instant::now() + wait.unwrap_or(Duration::ZERO);
        let mut state = self.state.lock();
        while state.resizing {
            if wait.is_none() {
                return Err(state.active);
            }
            // Another thread is resizing; wait for it, then do our own check.
            self.changed.wait(&mut state);
        }
        state.resizing = true;
        self.pending.store(true, Ordering::Relaxed);
        while state.active > 0 {
            unlocked(&mut state, &mut release_idle);
            if state.active == 0 {
                break;
            }
            let step = deadline.min(Instant::now() + Duration::from_millis(2));
            self.changed.wait_until(&mut state, step);
            if Instant::now() >= deadline && state.active > 0 {
                let held = state.active;
                #[cfg(test)]
                self.timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                state.resizing = false;
                self.pending.store(false, Ordering::Relaxed);
                self.changed.notify_all();
                return Err(held);
            }
        }
        let out = f();
        state.resizing = false;
        self.pending.store(false, Ordering::Relaxed);
        self.changed.notify_all();
        Ok(out)
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        state.active -= 1;
        if state.active == 0 && state.resizing {
            self.gate.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_runs_when_nobody_is_inside() {
        let gate = Arc::new(MapGate::default());
        assert_eq!(
            gate.exclusive(Duration::from_millis(10), || (), || 7),
            Ok(7)
        );
    }

    #[test]
    fn exclusive_times_out_while_a_guard_is_held() {
        let gate = Arc::new(MapGate::default());
        let g = gate.enter();
        assert_eq!(
            gate.exclusive(Duration::from_millis(20), || (), || ()),
            Err(1)
        );
        drop(g);
        assert_eq!(
            gate.exclusive(Duration::from_millis(20), || (), || ()),
            Ok(())
        );
    }

    #[test]
    fn exclusive_closes_the_idle_holders_it_is_handed() {
        let gate = Arc::new(MapGate::default());
        let idle = Mutex::new(Some(gate.enter()));
        let release = || drop(idle.lock().take());
        assert_eq!(
            gate.exclusive(Duration::from_secs(10), release, || 3),
            Ok(3)
        );
    }

    #[test]
    fn exclusive_waits_for_guards_released_by_other_threads() {
        let gate = Arc::new(MapGate::default());
        let g = gate.enter();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(g);
        });
        assert_eq!(gate.exclusive(Duration::from_secs(10), || (), || 1), Ok(1));
        t.join().unwrap();
    }
}

/// loom models of the gate: run with `RUSTFLAGS="--cfg loom" cargo test -p
/// varvedb --release --lib loom`. The model's clock stands still (see
/// `storage/sync`): a nonzero wait never times out, a zero wait times out at
/// its first check.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::cell::UnsafeCell;
    use loom::thread;

    use super::*;
    use crate::storage::sync::model;

    /// Stands in for the memory map: loom fails the model if a read (under
    /// a guard) and a remap (under `exclusive`) are not ordered.
    struct Map(UnsafeCell<u32>);

    // SAFETY: sharing the cell unsynchronized is the point: loom tracks every
    // access and reports any read/write pair the gate does not order.
    unsafe impl Sync for Map {}

    impl Map {
        fn read(&self) -> u32 {
            // SAFETY: loom checks this read is ordered against every write.
            self.0.with(|p| unsafe { *p })
        }

        fn remap(&self) {
            // SAFETY: loom checks this write is ordered against every access.
            self.0.with_mut(|p| unsafe { *p += 1 })
        }
    }

    #[test]
    fn a_resize_never_runs_while_a_guard_is_live_and_never_deadlocks() {
        model(|| {
            let gate = Arc::new(MapGate::default());
            let map = Arc::new(Map(UnsafeCell::new(0)));
            let reader = {
                let (gate, map) = (Arc::clone(&gate), Arc::clone(&map));
                thread::spawn(move || {
                    let guard = gate.enter();
                    let seen = map.read();
                    assert_eq!(map.read(), seen, "the map moved under a guard");
                    drop(guard);
                })
            };
            let grown = gate.exclusive(Duration::from_secs(1), || (), || map.remap());
            assert_eq!(grown, Ok(()));
            reader.join().unwrap();
            // Entering after a resize works, and sees the remapped map.
            let _guard = gate.enter();
            assert_eq!(map.read(), 1);
        });
    }

    #[test]
    fn two_resizes_and_a_nested_guard_never_overlap() {
        model(|| {
            let gate = Arc::new(MapGate::default());
            let map = Arc::new(Map(UnsafeCell::new(0)));
            let other = {
                let (gate, map) = (Arc::clone(&gate), Arc::clone(&map));
                thread::spawn(move || {
                    gate.exclusive(Duration::from_secs(1), || (), || map.remap())
                        .unwrap();
                })
            };
            {
                // A write transaction's guard and a snapshot taken inside it.
                let outer = gate.enter();
                let inner = gate.enter_nested();
                map.read();
                drop(outer);
                map.read();
                drop(inner);
            }
            gate.exclusive(Duration::from_secs(1), || (), || map.remap())
                .unwrap();
            other.join().unwrap();
            assert_eq!(map.read(), 2);
        });
    }

    #[test]
    fn a_resize_that_times_out_lets_waiting_readers_in() {
        model(|| {
            let gate = Arc::new(MapGate::default());
            let held = gate.enter();
            let newcomer = {
                let gate = Arc::clone(&gate);
                thread::spawn(move || drop(gate.enter()))
            };
            // Held open: the held guard, and the newcomer's if it came first.
            let held_open = gate.exclusive(Duration::ZERO, || (), || ()).unwrap_err();
            assert!((1..=2).contains(&held_open), "{held_open}");
            newcomer.join().unwrap();
            drop(held);
            assert!(!gate.resize_pending());
        });
    }

    #[test]
    fn a_resize_closes_the_idle_holders_it_is_handed() {
        model(|| {
            let gate = Arc::new(MapGate::default());
            let idle = Arc::new(Mutex::new(Some(gate.enter())));
            let reader = {
                let (gate, idle) = (Arc::clone(&gate), Arc::clone(&idle));
                // A reader that reopens its cached snapshot concurrently.
                thread::spawn(move || {
                    let fresh = gate.enter();
                    drop(fresh);
                    drop(idle.lock().take());
                })
            };
            let release = || drop(idle.lock().take());
            assert_eq!(gate.exclusive(Duration::from_secs(1), release, || 3), Ok(3));
            reader.join().unwrap();
        });
    }
}
