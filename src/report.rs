//! Reports in Linux's KASAN format, so syzkaller's parser gets a clean title.
//!
//! ```text
//! ==================================================================
//! BUG: KASAN: <bug type> in <func>+0x<off>/0x<size>
//! Read of size N at addr <addr> by task <name>/<pid>      (or "Free of addr ...")
//!
//! Call Trace:
//!  <func>+0x<off>/0x<size>
//!
//! Allocated by task <pid>:          (slab objects)
//!  ...  or  (stack is not available)
//! Freed by task <pid>:
//!
//! The buggy address belongs to the object at <obj>
//!  which belongs to the cache <name> of size <n>
//! The buggy address is located <k> bytes inside of / to the right of
//!  allocated <n>-byte region [<obj>, <obj+n>)
//!
//! Memory state around the buggy address:
//!  <row>: 00 00 ...
//! ><row>: 00 03 fc ...
//!             ^
//! ==================================================================
//! ```
//!
//! The memory state shows the *effective* shadow (CONSULT resolved from the
//! per-page shadow), so `full` and `hybrid` print the same bytes.

use core::fmt::{self, Write};
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::cache::{read_meta, ObjState};
use crate::config::FaultAction;
use crate::depot::{StackHandle, MAX_FRAMES, NO_STACK};
use crate::mapper::ShadowMapper;
use crate::page_state::{PageKind, PageState};
use crate::platform::Platform;
use crate::runtime::Kasan;
use crate::stats::Stats;

/// Kinds of bug, named as Linux names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BugType {
    /// Access to a slab redzone or past a large kmalloc.
    SlabOutOfBounds,
    /// Access to a freed slab object.
    SlabUseAfterFree,
    /// Access to a free page.
    UseAfterFree,
    /// Access to a global's redzone.
    GlobalOutOfBounds,
    /// Access to a stack redzone.
    StackOutOfBounds,
    /// Access to a dynamically sized stack buffer's redzone.
    AllocaOutOfBounds,
    /// Access to vmalloc space outside a live area.
    VmallocOutOfBounds,
    /// Range that wraps around the address space, or unclassifiable.
    OutOfBounds,
    /// Free of an object already freed.
    DoubleFree,
    /// Free of a pointer that is not an allocated object's start.
    InvalidFree,
    /// Access within the first page.
    NullPtrDeref,
    /// Access to a kernel address without shadow.
    WildMemoryAccess,
    /// Access to a user-space address.
    UserMemoryAccess,
    /// Poison the runtime does not know.
    UnknownCrash,
    /// KMSAN: use of an uninitialized value.
    UninitValue,
    /// KMSAN: uninitialized bytes copied out to user space.
    KernelInfoleak,
}

impl BugType {
    /// Every bug type, in declaration order.
    pub const ALL: [BugType; 16] = [
        BugType::SlabOutOfBounds,
        BugType::SlabUseAfterFree,
        BugType::UseAfterFree,
        BugType::GlobalOutOfBounds,
        BugType::StackOutOfBounds,
        BugType::AllocaOutOfBounds,
        BugType::VmallocOutOfBounds,
        BugType::OutOfBounds,
        BugType::DoubleFree,
        BugType::InvalidFree,
        BugType::NullPtrDeref,
        BugType::WildMemoryAccess,
        BugType::UserMemoryAccess,
        BugType::UnknownCrash,
        BugType::UninitValue,
        BugType::KernelInfoleak,
    ];

    /// The bug type whose report name (see [`BugType::name`]) is `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<BugType> {
        BugType::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The name in `BUG: KASAN: <name> in ...`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            BugType::SlabOutOfBounds => "slab-out-of-bounds",
            BugType::SlabUseAfterFree => "slab-use-after-free",
            BugType::UseAfterFree => "use-after-free",
            BugType::GlobalOutOfBounds => "global-out-of-bounds",
            BugType::StackOutOfBounds => "stack-out-of-bounds",
            BugType::AllocaOutOfBounds => "alloca-out-of-bounds",
            BugType::VmallocOutOfBounds => "vmalloc-out-of-bounds",
            BugType::OutOfBounds => "out-of-bounds",
            BugType::DoubleFree => "double-free",
            BugType::InvalidFree => "invalid-free",
            BugType::NullPtrDeref => "null-ptr-deref",
            BugType::WildMemoryAccess => "wild-memory-access",
            BugType::UserMemoryAccess => "user-memory-access",
            BugType::UnknownCrash => "unknown-crash",
            BugType::UninitValue => "uninit-value",
            BugType::KernelInfoleak => "kernel-infoleak",
        }
    }

    /// Free bugs print "Free of addr", access bugs "Read/Write of size".
    #[must_use]
    pub const fn is_free(self) -> bool {
        matches!(self, BugType::DoubleFree | BugType::InvalidFree)
    }
}

impl fmt::Display for BugType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A bug the runtime found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bug {
    /// Its type.
    pub kind: BugType,
    /// The accessed (or freed) address.
    pub addr: usize,
    /// Whether a report was printed (false: one-shot mode already reported).
    pub printed: bool,
}

/// A `fmt::Write` into the platform's console.
pub struct ConsoleWriter<'a, P: Platform>(&'a P);

impl<'a, P: Platform> ConsoleWriter<'a, P> {
    /// A writer to `p`'s console.
    pub fn new(p: &'a P) -> Self {
        ConsoleWriter(p)
    }
}

impl<P: Platform> Write for ConsoleWriter<'_, P> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s);
        Ok(())
    }
}

/// The console belongs to one report at a time: a report waits for the
/// one another CPU is printing, so no two interleave. Holds the CPU
/// ([`Platform::cpu`]) printing, plus one; 0 when none is.
#[derive(Default)]
pub(crate) struct ReportLock(AtomicUsize);

/// A held [`ReportLock`]; dropping it lets the next report print.
pub(crate) struct ReportGuard<'a>(&'a ReportLock);

impl Drop for ReportGuard<'_> {
    fn drop(&mut self) {
        (self.0).0.store(0, Release);
    }
}

impl ReportLock {
    /// The lock's value for CPU `cpu` (CPU numbers are below `usize::MAX`).
    fn token(cpu: usize) -> usize {
        cpu.wrapping_add(1).max(1)
    }

    /// Whether CPU `cpu` is printing a report (its checks then pass: the
    /// code printing may be instrumented, and must not report into it).
    #[inline]
    pub(crate) fn held_by(&self, cpu: usize) -> bool {
        self.0.load(Relaxed) == Self::token(cpu)
    }

    /// Take the console for a report on CPU `cpu`, waiting while another
    /// CPU prints one. `None` when this CPU is printing one already (a
    /// free hook called from the printing code, an interrupt): that
    /// nested report must not be printed into the first.
    pub(crate) fn lock(&self, cpu: usize) -> Option<ReportGuard<'_>> {
        let me = Self::token(cpu);
        loop {
            match self.0.compare_exchange_weak(0, me, Acquire, Relaxed) {
                Ok(_) => return Some(ReportGuard(self)),
                Err(cur) if cur == me => return None,
                Err(_) => core::hint::spin_loop(),
            }
        }
    }
}

const RULE: &str = "==================================================================\n";

/// Print the frame at `pc` as `func+0xoff/0xsize` (or the raw address).
pub(crate) fn write_frame<P: Platform>(p: &P, out: &mut dyn Write, pc: usize) -> fmt::Result {
    let mut r = Ok(());
    let known = p.symbolize(pc, &mut |s| {
        r = write!(out, "{}+{:#x}/{:#x}", s.name, s.offset, s.size);
    });
    if !known {
        r = write!(out, "{pc:#x}");
    }
    r
}

/// Print a stack, one frame per line, or "(stack is not available)".
pub(crate) fn write_stack<P: Platform>(p: &P, out: &mut dyn Write, frames: &[usize]) -> fmt::Result {
    if frames.is_empty() {
        return out.write_str(" (stack is not available)\n");
    }
    for &pc in frames {
        out.write_str(" ")?;
        write_frame(p, out, pc)?;
        out.write_str("\n")?;
    }
    Ok(())
}

/// Index of the frame whose return address is `from` (the runtime's entry
/// point was called from there), or 0 when `from` is 0 or not on the stack.
pub(crate) fn first_frame(frames: &[usize], from: usize) -> usize {
    if from == 0 {
        return 0;
    }
    frames.iter().position(|&pc| pc == from).unwrap_or(0)
}

/// Rust's allocator shims, which only forward to the global allocator:
/// never the function a report is about.
fn is_alloc_shim(name: &str) -> bool {
    ["__rust_alloc", "__rust_dealloc", "__rust_realloc", "__rust_alloc_zeroed", "__rg_", "__rdl_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The stack of the code a report is about, and the address its title
/// names: the code at `ip`, or where that has no symbol (no return address
/// available), the innermost frame that has one.
pub(crate) struct UseStack {
    frames: [usize; MAX_FRAMES],
    n: usize,
    /// The address the title names.
    pub(crate) title_pc: usize,
}

impl UseStack {
    /// The current stack (just `ip` when the platform gives none),
    /// starting at `ip`'s frame when `ip` is on it: the frames above it
    /// are the runtime's own.
    pub(crate) fn capture<P: Platform>(p: &P, ip: usize) -> Self {
        let mut frames = [0usize; MAX_FRAMES];
        let mut n = p.stack_trace(&mut frames).min(MAX_FRAMES);
        let first = first_frame(&frames[..n], ip);
        frames.copy_within(first..n, 0);
        n -= first;
        if n == 0 {
            frames[0] = ip;
            n = 1;
        }
        // The title names the innermost frame with a symbol that is not an
        // allocator shim (`__rust_dealloc` forwards a free to the heap).
        let titled = |pc: usize| {
            let mut shim = false;
            p.symbolize(pc, &mut |s| shim = is_alloc_shim(s.name)) && !shim
        };
        let title_pc = if titled(ip) {
            ip
        } else {
            frames[..n].iter().copied().find(|&pc| pc != ip && titled(pc)).unwrap_or(ip)
        };
        UseStack { frames, n, title_pc }
    }

    /// Its frames.
    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.n]
    }
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Report a bad access. Returns the bug.
    pub(crate) fn report_access(
        &self,
        addr: usize,
        size: usize,
        write: bool,
        ip: usize,
        kind: BugType,
        bad: usize,
    ) -> Bug {
        self.emit(kind, addr, ip, Some((size, write)), bad)
    }

    /// Report a bad free of `ptr` by the code at `ip`.
    pub(crate) fn report_free(&self, ptr: usize, kind: BugType, ip: usize) -> Bug {
        self.emit(kind, ptr, ip, None, ptr)
    }

    /// Report an invalid free the kernel found itself (e.g. kfree of a
    /// pointer that is neither slab nor page-backed).
    pub fn report_invalid_free(&self, ptr: usize, ip: usize) -> Bug {
        self.report_free(ptr, BugType::InvalidFree, ip)
    }

    fn emit(&self, kind: BugType, addr: usize, ip: usize, access: Option<(usize, bool)>, bad: usize) -> Bug {
        if self.reported.swap(true, Relaxed) && !self.cfg.multi_shot {
            Stats::bump(&self.stats.reports_suppressed);
            return Bug { kind, addr, printed: false };
        }
        let Some(console) = self.report_lock.lock(self.platform.cpu()) else {
            // A bug found while this CPU prints a report (by a hook the
            // printing code called, or an interrupt): not printed into it.
            Stats::bump(&self.stats.reports_suppressed);
            return Bug { kind, addr, printed: false };
        };
        Stats::bump(&self.stats.reports);
        let mut out = ConsoleWriter(&self.platform);
        let _ = self.write_report(&mut out, kind, addr, ip, access, bad);
        drop(console);
        if self.cfg.fault == FaultAction::Panic {
            self.platform.panic("KASAN: panic_on_warn set (kasan.fault=panic)");
        }
        Bug { kind, addr, printed: true }
    }

    fn write_track(&self, out: &mut dyn Write, what: &str, pid: u32, h: StackHandle) -> fmt::Result {
        writeln!(out, "{what} by task {pid}:")?;
        let frames = if h == NO_STACK { Default::default() } else { self.inner.lock().depot.fetch(h) };
        write_stack(&self.platform, out, &frames)
    }

    fn write_report(
        &self,
        out: &mut dyn Write,
        kind: BugType,
        addr: usize,
        ip: usize,
        access: Option<(usize, bool)>,
        bad: usize,
    ) -> fmt::Result {
        let stack = UseStack::capture(&self.platform, ip);
        let (frames, title_pc) = (stack.frames(), stack.title_pc);
        out.write_str(RULE)?;
        write!(out, "BUG: KASAN: {} in ", kind.name())?;
        write_frame(&self.platform, out, title_pc)?;
        out.write_str("\n")?;
        match access {
            Some((size, write)) => write!(
                out,
                "{} of size {} at addr {:016x} by task ",
                if write { "Write" } else { "Read" },
                size,
                addr
            )?,
            None => write!(out, "Free of addr {addr:016x} by task ")?,
        }
        let _ = self.platform.write_task_name(out);
        writeln!(out, "/{}", self.platform.current_pid())?;
        out.write_str("\nCall Trace:\n")?;
        write_stack(&self.platform, out, frames)?;
        out.write_str("\n")?;
        self.describe(out, addr)?;
        if self.layout.covered.contains(bad) {
            self.write_memory_state(out, bad)?;
        }
        out.write_str(RULE)
    }

    fn describe(&self, out: &mut dyn Write, addr: usize) -> fmt::Result {
        let l = &self.layout;
        if let Some(pfn) = self.pages.pfn(addr) {
            let info = self.pages.get(pfn);
            if info.kind == PageKind::Slab && info.state != PageState::Free {
                if let Some(slab) = self.platform.slab_of(addr) {
                    return self.describe_object(out, addr, slab);
                }
            }
            let what = match (info.state, info.kind) {
                (PageState::Free, _) => "a free page",
                (_, PageKind::LargeKmalloc) => "a page-backed kmalloc",
                (_, PageKind::Stack) => "a kernel stack",
                (_, PageKind::Slab) => "a slab page",
                (_, PageKind::Reserved) => "a reserved page",
                _ => "an allocated page",
            };
            writeln!(out, "The buggy address belongs to the physical page:")?;
            writeln!(out, "page: pfn:{pfn:#x} ({what})\n")?;
        } else if l.vmalloc.contains(addr) {
            writeln!(out, "The buggy address belongs to a vmalloc area\n")?;
        } else if let Some((kind, r)) = self.regions.find(addr) {
            match kind {
                crate::region::RegionKind::Heap => self.describe_heap(out, addr)?,
                crate::region::RegionKind::Stack => {
                    writeln!(out, "The buggy address belongs to the stack [{:016x}, {:016x})\n", r.start, r.end)?;
                }
            }
        } else if !l.covered.contains(addr) {
            writeln!(out, "The buggy address {addr:016x} has no shadow memory:")?;
            writeln!(out, " it is a user-space, non-canonical or wild address\n")?;
        } else if l.image.contains(addr) {
            writeln!(out, "The buggy address belongs to the variable:")?;
            out.write_str(" ")?;
            write_frame(&self.platform, out, addr)?;
            out.write_str("\n\n")?;
        }
        Ok(())
    }

    fn describe_heap(&self, out: &mut dyn Write, addr: usize) -> fmt::Result {
        if let Some(slab) = self.heap_slab_of(addr) {
            return self.describe_object(out, addr, slab);
        }
        let Some((obj, _end, meta)) = self.heap_large_of(addr) else {
            return writeln!(out, "The buggy address belongs to a free heap page\n");
        };
        let state = meta.state();
        self.write_track(out, "Allocated", meta.alloc_pid, meta.alloc_stack)?;
        out.write_str("\n")?;
        if state == ObjState::Quarantined {
            self.write_track(out, "Freed", meta.free_pid, meta.free_stack)?;
            out.write_str("\n")?;
        }
        let size = meta.size as usize;
        writeln!(out, "The buggy address belongs to the page-backed heap object at {obj:016x}")?;
        self.write_location(out, addr, obj, size)?;
        let label = if state == ObjState::Quarantined { "freed" } else { "allocated" };
        writeln!(out, " {label} {size}-byte region [{obj:016x}, {:016x})\n", obj + size)
    }

    fn write_location(&self, out: &mut dyn Write, addr: usize, obj: usize, size: usize) -> fmt::Result {
        let end = obj + size;
        if addr < obj {
            writeln!(out, "The buggy address is located {} bytes to the left of", obj - addr)
        } else if addr >= end {
            writeln!(out, "The buggy address is located {} bytes to the right of", addr - end)
        } else {
            writeln!(out, "The buggy address is located {} bytes inside of", addr - obj)
        }
    }

    fn describe_object(&self, out: &mut dyn Write, addr: usize, slab: crate::platform::SlabRef) -> fmt::Result {
        // The object's metadata is read under the lock: another CPU's hook
        // may be allocating or freeing that very object (its metadata
        // half written), or giving the slab page back.
        let described = {
            let inner = self.inner.lock();
            inner.caches.get(slab.cache).ok().copied().and_then(|cache| {
                let obj = slab.base + (addr.saturating_sub(slab.base) / cache.slot_size) * cache.slot_size;
                // Still a slab page (a kernel slab's page goes back under
                // this lock; the heap's are outside the direct map).
                let live = self.pages.pfn(obj).is_none_or(|p| {
                    let page = self.pages.get(p);
                    page.kind == PageKind::Slab && page.state != PageState::Free
                });
                // SAFETY: `obj` is a slot of the slab the platform (or the
                // heap) reported, whose page is still a slab page.
                live.then(|| (cache, obj, unsafe { read_meta(&cache, obj) }))
            })
        };
        let Some((cache, obj, meta)) = described else { return Ok(()) };
        let state = meta.state();
        if state != ObjState::Available {
            self.write_track(out, "Allocated", meta.alloc_pid, meta.alloc_stack)?;
            out.write_str("\n")?;
        }
        if state == ObjState::Quarantined {
            self.write_track(out, "Freed", meta.free_pid, meta.free_stack)?;
            out.write_str("\n")?;
        }
        writeln!(out, "The buggy address belongs to the object at {obj:016x}")?;
        writeln!(out, " which belongs to the cache {} of size {}", cache.name, cache.object_size)?;
        let (label, size) = match state {
            ObjState::Allocated => ("allocated", meta.size as usize),
            ObjState::Quarantined => ("freed", meta.size as usize),
            ObjState::Available => ("", cache.object_size),
        };
        let end = obj + size;
        self.write_location(out, addr, obj, size)?;
        let sep = if label.is_empty() { "" } else { " " };
        writeln!(out, " {label}{sep}{size}-byte region [{obj:016x}, {end:016x})\n")
    }

    fn write_memory_state(&self, out: &mut dyn Write, bad: usize) -> fmt::Result {
        const ROW: usize = 16 * 8;
        writeln!(out, "Memory state around the buggy address:")?;
        let row0 = bad & !(ROW - 1);
        for k in -2isize..=2 {
            let row = row0.wrapping_add_signed(k * ROW as isize);
            if !self.layout.covered.contains_range(row, ROW) {
                continue;
            }
            let mark = if k == 0 { '>' } else { ' ' };
            write!(out, "{mark}{row:016x}:")?;
            for g in 0..16 {
                write!(out, " {:02x}", self.effective_shadow(row + g * 8).unwrap_or(0))?;
            }
            out.write_str("\n")?;
            if k == 0 {
                let col = (bad - row) / 8;
                // '>' + 16 hex digits + ':' then 3 characters per byte.
                for _ in 0..(1 + 16 + 1 + col * 3 + 1) {
                    out.write_str(" ")?;
                }
                out.write_str("^\n")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod report_lock_tests {
    use super::ReportLock;

    #[test]
    fn one_cpu_at_a_time_and_no_nesting() {
        let l = ReportLock::default();
        assert!(!l.held_by(0) && !l.held_by(3));
        let g = l.lock(3).expect("free");
        assert!(l.held_by(3) && !l.held_by(0), "held by CPU 3 only");
        assert!(l.lock(3).is_none(), "a nested report of the same CPU is refused, not waited for");
        drop(g);
        assert!(!l.held_by(3));
        let g = l.lock(1000).expect("free again");
        assert!(l.held_by(1000) && !l.held_by(3));
        drop(g);
    }
}

#[cfg(test)]
mod bug_type_tests {
    use super::BugType;

    #[test]
    fn every_name_reads_back_as_its_type() {
        for b in BugType::ALL {
            assert_eq!(BugType::from_name(b.name()), Some(b), "{}", b.name());
        }
        assert_eq!(BugType::from_name("slab-out-of-bound"), None);
    }
}
