//! The runtime's lock: a spin lock whose waiters run the kernel's wait
//! hook ([`Platform::lock_wait`]) between tries.
//!
//! ```text
//!  CPU A: lock ─► remap shadow ─► TLB shootdown: IPI, wait for every CPU's ack
//!  CPU B: (interrupts off) lock? busy ─► wait hook: serve A's pending shootdown ─► try again
//! ```
//!
//! A kernel whose shootdowns wait for every CPU must let a CPU that waits
//! for this lock with interrupts off serve them, or holder and waiter wait
//! for each other for ever. Under KMSAN every instrumented access may take
//! the lock (a store that makes metadata private), so waiting with
//! interrupts off is common there: inside the page allocator, the
//! scheduler, any code under an interrupt-disabling lock.
//!
//! [`Platform::lock_wait`]: crate::platform::Platform::lock_wait

/// A spin lock around the runtime's state (see the module docs).
pub struct RuntimeLock<T> {
    inner: spin::Mutex<T>,
    wait: fn(),
}

impl<T> RuntimeLock<T> {
    /// `value` behind a lock whose waiters call `wait` between tries.
    pub const fn new(value: T, wait: fn()) -> Self {
        RuntimeLock { inner: spin::Mutex::new(value), wait }
    }

    /// Take the lock, running the wait hook while another CPU holds it.
    #[inline]
    pub fn lock(&self) -> spin::MutexGuard<'_, T> {
        loop {
            if let Some(g) = self.inner.try_lock() {
                return g;
            }
            (self.wait)();
        }
    }

    /// Take the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<spin::MutexGuard<'_, T>> {
        self.inner.try_lock()
    }
}

#[cfg(test)]
mod tests {
    use super::RuntimeLock;
    use std::boxed::Box;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static WAITS: AtomicUsize = AtomicUsize::new(0);

    fn count_wait() {
        WAITS.fetch_add(1, Relaxed);
        std::thread::yield_now();
    }

    #[test]
    fn a_waiter_runs_the_hook_until_the_holder_lets_go() {
        let lock: &'static RuntimeLock<u32> = Box::leak(Box::new(RuntimeLock::new(0, count_wait)));
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        let waiter = std::thread::spawn(move || *lock.lock() + 1);
        while WAITS.load(Relaxed) < 3 {
            std::thread::yield_now();
        }
        drop(held);
        assert_eq!(waiter.join().unwrap(), 1);
        assert!(WAITS.load(Relaxed) >= 3, "the waiter ran the hook while the lock was held");
    }
}
