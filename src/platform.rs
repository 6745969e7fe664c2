//! What the runtime needs from the kernel that hosts it (not the arch):
//! a console, the current task, stack traces, symbols, and the slab's
//! page-to-cache lookup for reports.

use crate::cache::CacheId;

/// The slab a direct-map address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabRef {
    /// The cache that owns the slab.
    pub cache: CacheId,
    /// The slab's first slot: its first page plus the cache's `slab_offset`.
    pub base: usize,
}

/// A resolved code address.
#[derive(Clone, Copy, Debug)]
pub struct Symbol<'a> {
    /// Function name, already reduced to `[A-Za-z0-9_]+`.
    pub name: &'a str,
    /// Offset of the address inside the function.
    pub offset: usize,
    /// Size of the function.
    pub size: usize,
}

/// Services of the hosting kernel.
pub trait Platform {
    /// Write text to the console (reports go here).
    fn write_str(&self, s: &str);
    /// The pid of the current task.
    fn current_pid(&self) -> u32;
    /// Write the name of the current task.
    fn write_task_name(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result;
    /// Fill `out` with return addresses of the current call stack, skipping
    /// the runtime's own frames as far as it can; returns how many.
    fn stack_trace(&self, out: &mut [usize]) -> usize;
    /// Resolve a code address and pass the symbol to `f`; false if unknown.
    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool;
    /// The slab containing `addr`, if it is a slab page.
    fn slab_of(&self, addr: usize) -> Option<SlabRef>;
    /// Stop the kernel after a report under `kasan.fault=panic`.
    fn panic(&self, msg: &str) -> !;
    /// The CPU running the caller: a number that no other CPU running at
    /// the same moment has. The runtime serializes reports per CPU with it
    /// (a report in progress on this CPU lets this CPU's checks pass, so
    /// the printing code cannot report into its own report, while other
    /// CPUs keep checking and wait to print theirs). The default, 0, is
    /// right for a kernel on one CPU only; a kernel on several CPUs must
    /// give each its own number, or checks on every CPU pass while any
    /// CPU prints a report, and a bug found on another CPU meanwhile is
    /// taken for one found inside the report and not printed.
    fn cpu(&self) -> usize {
        0
    }
    /// What a CPU runs between tries while it waits for the runtime's
    /// lock (see [`crate::lock`]): by default a pause. A kernel whose TLB
    /// shootdowns wait for every CPU returns a function that serves this
    /// CPU's pending shootdowns, so a CPU that waits with interrupts off
    /// does not block the holder, which may be waiting for it.
    fn lock_wait(&self) -> fn() {
        core::hint::spin_loop
    }
    /// The direct-map address of the RAM byte mapped at vmalloc address
    /// `addr`, if any (Linux's `vmalloc_to_page`). KMSAN uses it: a vmalloc
    /// (or vmap) address has the metadata of the frame mapped there, so
    /// what is initialized through one mapping is initialized through the
    /// other. Without it (the default) vmalloc memory reads as initialized.
    fn vmalloc_to_ram(&self, addr: usize) -> Option<usize> {
        let _ = addr;
        None
    }
}
