//! The lock of the workload's file-system state: the page cache
//! (`pagecache.rs`: descriptors, LRU, statistics, buffer heads) and the vfs
//! (`vfs.rs`: dentries, inodes and their page indexes, the shrinker), one
//! lock for both because each calls the other with its own state in use
//! (an allocation in the vfs may reclaim page cache, which runs the vfs
//! shrinker and writes back through inodes; the vfs teardown drops pages).
//!
//! It is a [`RecLock`]: the CPU that holds it may take it again, which
//! those nested calls need (on one CPU they are the only "concurrency").
//! Lock order: this lock, then the allocators' (vmalloc, slab, runtime,
//! buddy): the page cache and the vfs allocate with it held, the
//! allocators never call back into the workload. A task never yields
//! while it holds the lock (the owner is the CPU, not the task).
//! Counters and set-once state live outside it (atomics, `mod.rs`,
//! `mem.rs`); the job's own objects (ASTs, tokens) need no lock.
use core::cell::UnsafeCell;
use guest_boot::smp::{RecGuard, RecLock};

static FS: RecLock = RecLock::new();

/// Take the lock (again, if this CPU holds it).
#[inline]
pub fn lock() -> RecGuard<'static> {
    FS.lock()
}

/// State guarded by the lock: `static` instead of `static mut`.
pub struct FsCell<T>(UnsafeCell<T>);

// SAFETY: the contents are only reached through `get`, whose callers hold
// the lock: one CPU at a time.
unsafe impl<T> Sync for FsCell<T> {}

impl<T> FsCell<T> {
    pub const fn new(v: T) -> Self {
        FsCell(UnsafeCell::new(v))
    }

    /// The contents.
    ///
    /// # Safety
    ///
    /// This CPU holds the lock, and the reference is not kept across a call
    /// that may take it again (the nested calls described above), as with
    /// a `static mut` on one CPU.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        debug_assert!(FS.held(), "workload fs state without its lock");
        // SAFETY: the caller holds the lock (the contract above).
        unsafe { &mut *self.0.get() }
    }
}
