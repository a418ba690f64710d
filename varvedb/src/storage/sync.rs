//! The synchronization primitives of the concurrent parts of `storage` (the
//! map gate, group commit, commit notification), in one place so that a
//! `cfg(loom)` build swaps them for loom's model-checked ones.
//!
//! The normal build uses `parking_lot` and `std` directly. The loom build wraps
//! loom's `Mutex` and `Condvar` in the same (parking_lot-like) API, and stops
//! the clock: [`Instant::now`] never advances, so a timed wait whose deadline
//! lies ahead is an untimed wait (a lost wake-up shows as a deadlock loom
//! reports), and one whose deadline has passed (a zero timeout) returns at
//! once, which is how a model reaches the timeout paths.

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
pub(crate) use std::time::Instant;

/// Runs `f` with the mutex of `guard` unlocked, then locks it again.
#[cfg(not(loom))]
pub(crate) fn unlocked<T, R>(guard: &mut MutexGuard<'_, T>, f: impl FnOnce() -> R) -> R {
    MutexGuard::unlocked(guard, f)
}

#[cfg(loom)]
pub(crate) use self::model::{unlocked, Condvar, Instant, Mutex};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};

#[cfg(loom)]
mod model {
    use std::ops::{Add, Deref, DerefMut};
    use std::sync::PoisonError;
    use std::time::Duration;

    /// A point of the model's clock, which stands still: see the module docs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct Instant(Duration);

    impl Instant {
        pub(crate) fn now() -> Instant {
            Instant(Duration::ZERO)
        }

        pub(crate) fn checked_add(self, d: Duration) -> Option<Instant> {
            self.0.checked_add(d).map(Instant)
        }
    }

    impl Add<Duration> for Instant {
        type Output = Instant;

        fn add(self, d: Duration) -> Instant {
            Instant(self.0 + d)
        }
    }

    /// loom's mutex with parking_lot's API (no poisoning).
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// A held [`Mutex`]; `None` only while a condition variable waits with it.
    pub(crate) struct MutexGuard<'a, T> {
        inner: Option<loom::sync::MutexGuard<'a, T>>,
        mutex: &'a loom::sync::Mutex<T>,
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard {
                inner: Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)),
                mutex: &self.0,
            }
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }

    impl<T> std::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            self.inner
                .as_deref()
                .expect("a guard is held outside a wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.inner
                .as_deref_mut()
                .expect("a guard is held outside a wait")
        }
    }

    pub(crate) fn unlocked<T, R>(guard: &mut MutexGuard<'_, T>, f: impl FnOnce() -> R) -> R {
        drop(guard.inner.take());
        let out = f();
        guard.inner = Some(guard.mutex.lock().unwrap_or_else(PoisonError::into_inner));
        out
    }

    /// Whether a timed wait ended because its deadline passed.
    pub(crate) struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(&self) -> bool {
            self.0
        }
    }

    /// loom's condition variable with parking_lot's API.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let held = guard.inner.take().expect("a guard is held outside a wait");
            guard.inner = Some(self.0.wait(held).unwrap_or_else(PoisonError::into_inner));
        }

        /// An untimed wait if `deadline` lies ahead (the clock stands still),
        /// an immediate timeout otherwise.
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            deadline: Instant,
        ) -> WaitTimeoutResult {
            if deadline <= Instant::now() {
                return WaitTimeoutResult(true);
            }
            self.wait(guard);
            WaitTimeoutResult(false)
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

/// Runs a loom model of `f`, bounding preemptions to 3 unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise (bugs of this code's kind need
/// one or two; the bound keeps CI's run to seconds).
#[cfg(all(test, loom))]
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}
