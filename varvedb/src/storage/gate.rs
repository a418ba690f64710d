//! The map gate: counts the transactions this process has open, so the memory
//! map is only remapped (grown) when none is.
//!
//! LMDB allows `mdb_env_set_mapsize` on an open environment only while the
//! calling process has no active transaction: remapping moves the map, and every
//! pointer a reader holds into it would dangle. Every snapshot and every write
//! transaction holds a [`GateGuard`]; [`MapGate::exclusive`] stops new entries,
//! waits for the count to reach zero, and runs the resize.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    active: usize,
    resizing: bool,
}

#[derive(Debug, Default)]
pub(crate) struct MapGate {
    state: Mutex<State>,
    changed: Condvar,
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

    /// Whether a writer is waiting to resize (readers drop cached snapshots).
    pub(crate) fn resize_pending(&self) -> bool {
        self.state.lock().resizing
    }

    /// Runs `f` while no other transaction of this process is active, waiting
    /// at most `wait` for open ones to close. On timeout returns the number of
    /// transactions still open.
    pub(crate) fn exclusive<R>(&self, wait: Duration, f: impl FnOnce() -> R) -> Result<R, usize> {
        let deadline = Instant::now() + wait;
        let mut state = self.state.lock();
        while state.resizing {
            // Another thread is resizing; wait for it, then do our own check.
            self.changed.wait(&mut state);
        }
        state.resizing = true;
        while state.active > 0 {
            if self.changed.wait_until(&mut state, deadline).timed_out() && state.active > 0 {
                let held = state.active;
                state.resizing = false;
                self.changed.notify_all();
                return Err(held);
            }
        }
        let out = f();
        state.resizing = false;
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
        assert_eq!(gate.exclusive(Duration::from_millis(10), || 7), Ok(7));
    }

    #[test]
    fn exclusive_times_out_while_a_guard_is_held() {
        let gate = Arc::new(MapGate::default());
        let g = gate.enter();
        assert_eq!(gate.exclusive(Duration::from_millis(20), || ()), Err(1));
        drop(g);
        assert_eq!(gate.exclusive(Duration::from_millis(20), || ()), Ok(()));
    }

    #[test]
    fn exclusive_waits_for_guards_released_by_other_threads() {
        let gate = Arc::new(MapGate::default());
        let g = gate.enter();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(g);
        });
        assert_eq!(gate.exclusive(Duration::from_secs(10), || 1), Ok(1));
        t.join().unwrap();
    }
}
