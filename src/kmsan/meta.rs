//! The metadata pointers the compiler asks for on every access
//! (`__msan_metadata_ptr_for_{load,store}_N`), and the deferred store.
//!
//! A load gets the shadow and origin addresses at their fixed offsets:
//! for a page that is not byte-tracked they land in a shared page (zero
//! for initialized memory, 0xFF for uninitialized), so initialized memory
//! costs no lookup. The origin handed out is that of the value's first
//! uninitialized byte (none for an initialized value); a page without an
//! origin page has one page-wide origin, handed out through the context's
//! `load_origin` slot.
//!
//! A store must never write into a shared page. When every page it
//! touches has private metadata it gets the real addresses; otherwise the
//! compiler's code writes into the context's *sink* and the runtime
//! settles the store at its next entry (every instrumented access enters
//! the runtime first, so nothing reads the metadata in between):
//!
//! ```text
//!  store to a shared page ──► sink shadow/origin, pending = (addr, size)
//!  next runtime entry     ──► settle: sink all zero on an Init page  → nothing to do
//!                                     otherwise → materialize the page(s) private, copy the
//!                                     sink's shadow and the origin slots the code wrote
//! ```


use crate::kmsan::origin::{Origin, NO_ORIGIN};
use crate::backing::kmsan::OriginPlan;
use crate::kmsan::runtime::{Kmsan, Place};
use crate::backing::Backing;
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::platform::Platform;
use crate::stats::Stats;

/// Largest store the sink takes; larger stores to shared pages make their
/// pages private at once.
pub const SINK_BYTES: usize = 512;
const SINK_SLOTS: usize = SINK_BYTES / 4 + 2;

/// Shadow and origin addresses for one access (returned in `rax:rdx`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaPtrs {
    /// Address of the shadow of the first byte.
    pub shadow: *mut u8,
    /// Address of the origin slot of the first byte (4-byte aligned).
    pub origin: *mut u32,
}

/// Largest single load or store the metadata functions serve from their own
/// areas (memory without metadata, accesses split across vmalloc pages):
/// the compiler emits no larger single access (rustc copies larger values
/// with `memcpy`, which the runtime handles in full).
pub const DROP_BYTES: usize = 4 * PAGE_SIZE;

/// Read-only zeros for loads from memory without metadata (user space,
/// MMIO): such memory reads as initialized.
#[repr(align(4096))]
struct Zeros([u8; DROP_BYTES]);
static ZEROS: Zeros = Zeros([0; DROP_BYTES]);

/// Where the metadata of stores larger than the sink go when there is
/// nowhere to keep it (no metadata, no frame): written, never read.
#[repr(C, align(4096))]
struct Drop {
    shadow: core::cell::UnsafeCell<[u8; DROP_BYTES]>,
    origin: core::cell::UnsafeCell<[u32; DROP_BYTES / 4 + 2]>,
}
// SAFETY: nothing ever reads it; racing writes of dropped metadata are harmless.
unsafe impl Sync for Drop {}
static DROP: Drop = Drop {
    shadow: core::cell::UnsafeCell::new([0; DROP_BYTES]),
    origin: core::cell::UnsafeCell::new([0; DROP_BYTES / 4 + 2]),
};

fn dropped() -> MetaPtrs {
    MetaPtrs { shadow: DROP.shadow.get().cast(), origin: DROP.origin.get().cast() }
}

/// What a deferred store left to settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Shadow and origins are in the sink.
    Sink,
    /// Shadow and origins are in the sink, and the store lies in one page
    /// whose metadata is the shared zero page (or none: unchecked): a
    /// wholly initialized value leaves nothing to do.
    SinkIntoInit,
    /// The shadow was written in place; only origins wait in the sink.
    OriginOnly,
    /// A store larger than the sink was written in place, and it touches
    /// one origin slot more than the `ceil(size / 4)` the compiler paints
    /// (an unaligned start): that last slot takes the first one's origin.
    TailOrigin,
}

/// The runtime's part of a task's (or interrupt level's) KMSAN state.
pub struct Context {
    pending_addr: usize,
    pending_size: usize,
    pending: Pending,
    load_origin: u32,
    sink_origin: [u32; SINK_SLOTS],
    sink_shadow: [u8; SINK_BYTES],
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    /// A context with nothing pending.
    #[must_use]
    pub const fn new() -> Self {
        Context { pending_addr: 0, pending_size: 0, pending: Pending::Sink, load_origin: 0, sink_origin: [0; SINK_SLOTS], sink_shadow: [0; SINK_BYTES] }
    }

    fn sink(&mut self) -> MetaPtrs {
        MetaPtrs { shadow: self.sink_shadow.as_mut_ptr(), origin: self.sink_origin.as_mut_ptr() }
    }
}

/// Index of the first non-zero shadow byte of `size` bytes at `shadow`.
///
/// # Safety
/// `[shadow, shadow + size)` must be mapped and readable.
#[inline(always)]
unsafe fn first_uninit(shadow: *const u8, size: usize) -> Option<usize> {
    // SAFETY: the caller guarantees the bytes are readable; reads are
    // unaligned where the access is (little-endian: byte 0 is the low byte).
    let w: u64 = unsafe {
        match size {
            1 => u64::from(shadow.read()),
            2 => u64::from(shadow.cast::<u16>().read_unaligned()),
            4 => u64::from(shadow.cast::<u32>().read_unaligned()),
            8 => shadow.cast::<u64>().read_unaligned(),
            _ => return core::slice::from_raw_parts(shadow, size).iter().position(|&b| b != 0),
        }
    };
    (w != 0).then(|| (w.trailing_zeros() / 8) as usize)
}

/// What a store may write in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writable {
    /// Shadow and origin pages are private.
    Both,
    /// Shadow pages are private, some origin page is still shared.
    Shadow,
    /// Some shadow page is shared (or there is no metadata).
    None,
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Metadata addresses for a load of `size` bytes at `addr`.
    #[inline]
    pub fn meta_load(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs {
        self.settle(ctx);
        let zero = MetaPtrs { shadow: ZEROS.0.as_ptr().cast_mut(), origin: ZEROS.0.as_ptr().cast_mut().cast() };
        if !self.on() {
            return zero;
        }
        if self.split(addr, size) {
            if size > SINK_BYTES {
                // Too big to gather: not tracked (counted).
                Stats::bump(&self.stats.unchecked_events);
                return zero;
            }
            // Two vmalloc pages whose frames' metadata is not contiguous:
            // gather the shadow into the sink (nothing is pending now).
            for k in 0..size {
                ctx.sink_shadow[k] = self.shadow_at(addr + k);
            }
            let first = ctx.sink_shadow[..size].iter().position(|&b| b != 0);
            ctx.load_origin = first.map_or(NO_ORIGIN, |j| self.origin_at(addr + j));
            Stats::bump(&self.stats.slow_path_checks);
            return MetaPtrs { shadow: ctx.sink_shadow.as_mut_ptr(), origin: &mut ctx.load_origin };
        }
        let Some(addr) = self.canon(addr) else { return zero };
        let place = self.place(addr);
        let Some((r, p)) = self.page_of(place) else { return zero };
        let shadow = r.shadow_of(addr) as *mut u8;
        if p.backing == Backing::UNINIT {
            Stats::bump(&self.stats.slow_path_checks);
        }
        // The value's origin is that of its first uninitialized byte (none
        // when it is initialized): what a slot holds for initialized bytes
        // is never read, so both layouts answer alike.
        // SAFETY: the shadow of a region is mapped for all its pages (the
        // compiler's code reads these `size` bytes next).
        let Some(j) = (unsafe { first_uninit(shadow, size) }) else { return MetaPtrs { shadow, origin: zero.origin } };
        let b = addr + j;
        let (place, p) = if b & !(PAGE_SIZE - 1) == addr & !(PAGE_SIZE - 1) {
            (place, p)
        } else {
            let pb = self.place(b);
            match self.page_of(pb) {
                Some((_, q)) => (pb, q),
                None => return MetaPtrs { shadow, origin: zero.origin },
            }
        };
        if let Some(u) = self.page_wide_origin(place, p) {
            ctx.load_origin = u;
            return MetaPtrs { shadow, origin: &mut ctx.load_origin };
        }
        MetaPtrs { shadow, origin: r.origin_of(b) as *mut u32 }
    }

    /// Metadata addresses for a store of `size` bytes at `addr`: the real
    /// ones when every page touched has private metadata, else the sink
    /// (or, for a store larger than the sink that has nowhere to go, a
    /// write-only area of [`DROP_BYTES`]; no single store is larger).
    #[inline]
    pub fn meta_store(&self, ctx: &mut Context, addr: usize, size: usize) -> MetaPtrs {
        self.settle(ctx);
        let nowhere = if size > SINK_BYTES { dropped() } else { ctx.sink() };
        if !self.on() || size == 0 {
            return nowhere;
        }
        if addr.checked_add(size - 1).is_none() {
            return nowhere;
        }
        if self.split(addr, size) {
            if size > SINK_BYTES {
                // Too big to gather: not tracked (counted).
                Stats::bump(&self.stats.unchecked_events);
                return nowhere;
            }
            Stats::bump(&self.stats.slow_path_checks);
            self.defer(ctx, addr, size, Pending::Sink);
            return ctx.sink();
        }
        let Some(addr) = self.canon(addr) else { return nowhere };
        let Some(last) = addr.checked_add(size - 1) else { return nowhere };
        match self.writable(addr, last) {
            // The compiler paints `ceil(size / 4)` origin slots from the
            // first one: an unaligned store that touches one slot more
            // goes through the sink, and settling paints that slot too.
            Writable::Both if (addr & 3) + size <= 4 * size.div_ceil(4) => {
                let r = self.layout.region_of(addr).expect("writable pages have a region");
                return MetaPtrs { shadow: r.shadow_of(addr) as *mut u8, origin: r.origin_of(addr) as *mut u32 };
            }
            Writable::Both | Writable::Shadow if size <= SINK_BYTES => {
                // Shadow in place; origins (written only for uninitialized
                // values) through the sink, so a page-wide origin stays so
                // while it can (see `Kmsan::write_origins`).
                let r = self.layout.region_of(addr).expect("writable pages have a region");
                self.defer(ctx, addr, size, Pending::OriginOnly);
                return MetaPtrs { shadow: r.shadow_of(addr) as *mut u8, origin: ctx.sink_origin.as_mut_ptr() };
            }
            _ => {}
        }
        if size > SINK_BYTES {
            // Too big to defer: make the pages private now.
            let mut inner = self.inner.lock();
            for page in (addr & !(PAGE_SIZE - 1)..=last).step_by(PAGE_SIZE) {
                let place = self.place(page);
                if matches!(place, Place::Ram(_)) {
                    self.materialize(&mut inner, place);
                }
            }
            // Origin pages too: the compiler's code writes origins in place.
            for page in (addr & !(PAGE_SIZE - 1)..=last).step_by(PAGE_SIZE) {
                self.private_origin_page(&mut inner, page);
            }
            drop(inner);
            if self.writable(addr, last) == Writable::Both {
                let r = self.layout.region_of(addr).expect("writable pages have a region");
                if (addr & 3) + size > 4 * size.div_ceil(4) {
                    self.defer(ctx, addr, size, Pending::TailOrigin);
                }
                return MetaPtrs { shadow: r.shadow_of(addr) as *mut u8, origin: r.origin_of(addr) as *mut u32 };
            }
            // No metadata to write to (no frame): dropped.
            Stats::bump(&self.stats.unchecked_events);
            return nowhere;
        }
        Stats::bump(&self.stats.slow_path_checks);
        let into_init = (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE
            && self.page_of(self.place(addr)).is_some_and(|(_, p)| matches!(p.backing, Backing::INIT | Backing::Unchecked));
        self.defer(ctx, addr, size, if into_init { Pending::SinkIntoInit } else { Pending::Sink });
        ctx.sink()
    }

    /// Whether `[addr, addr + size)` crosses from one vmalloc page to
    /// another (whose frames' metadata need not be adjacent), or runs past
    /// the end of RAM or the image (whose metadata ends there: what lies
    /// after it need not be mapped).
    #[inline(always)]
    fn split(&self, addr: usize, size: usize) -> bool {
        if (addr % PAGE_SIZE).saturating_add(size) <= PAGE_SIZE {
            return false;
        }
        let l = &self.layout;
        l.vmalloc.contains(addr) || [&l.direct_map.data, &l.image.data].iter().any(|r| r.contains(addr) && addr.saturating_add(size) > r.end)
    }

    #[inline(always)]
    fn defer(&self, ctx: &mut Context, addr: usize, size: usize, pending: Pending) {
        ctx.pending_addr = addr;
        ctx.pending_size = size;
        ctx.pending = pending;
    }

    /// How much of the metadata of `[addr, last]` the compiler's code may
    /// write in place.
    fn writable(&self, addr: usize, last: usize) -> Writable {
        let mut w = Writable::Both;
        let mut page = addr & !(PAGE_SIZE - 1);
        loop {
            match self.page_of(self.place(page)) {
                Some((_, p)) if p.writable() => {
                    if !p.origin_private {
                        w = Writable::Shadow;
                    }
                }
                _ => return Writable::None,
            }
            if page >= (last & !(PAGE_SIZE - 1)) {
                return w;
            }
            page += PAGE_SIZE;
        }
    }

    /// Apply `ctx`'s deferred store, if any. Every runtime entry of a
    /// context calls this first; a kernel calls it before a hook that
    /// may change the pages a store of the same context touched.
    ///
    /// The compiler's code paints origins exactly when the value it stores
    /// is not wholly initialized, one origin in every slot from the first
    /// (LLVM's `paintOrigin`): a clean store left nothing to apply to
    /// initialized pages, a dirty one has its origin in the sink's first
    /// slot, and it goes to every slot the store touched.
    #[inline(always)]
    pub fn settle(&self, ctx: &mut Context) {
        if ctx.pending_size != 0 {
            // The common case, an initialized value stored into an
            // initialized page, costs one test of the sink, here.
            // SAFETY: the sink holds SINK_BYTES >= `pending_size` bytes.
            if ctx.pending == Pending::SinkIntoInit && unsafe { first_uninit(ctx.sink_shadow.as_ptr(), ctx.pending_size) }.is_none() {
                ctx.pending_size = 0;
                return;
            }
            self.settle_pending(ctx);
        }
    }

    #[inline(never)]
    fn settle_pending(&self, ctx: &mut Context) {
        let (addr, size) = (ctx.pending_addr, ctx.pending_size);
        ctx.pending_size = 0;
        if ctx.pending == Pending::TailOrigin {
            // Canonical `addr`, both origin slots private (mapped so before
            // the store was handed out, and no hook ran since); the origin
            // of initialized bytes is never read, so copying it whatever
            // the value was is harmless.
            if let Some(r) = self.layout.region_of(addr) {
                let (first, last) = (r.origin_of(addr) as *mut u32, r.origin_of(addr + size - 1) as *mut u32);
                // SAFETY: see above: both slots are in private origin pages.
                unsafe { last.write(first.read()) };
            }
            return;
        }
        let origin_only = ctx.pending == Pending::OriginOnly;
        let dirty = if origin_only {
            // Shadow was written in place (canonical `addr`, private pages
            // of one region, whose shadow is contiguous).
            let Some(r) = self.layout.region_of(addr) else { return };
            // SAFETY: the store's pages had private shadow when it was
            // handed out, and no hook ran since.
            if unsafe { first_uninit(r.shadow_of(addr) as *const u8, size) }.is_none() {
                return;
            }
            true
        } else {
            // SAFETY: the sink holds SINK_BYTES >= `size` bytes.
            let dirty = unsafe { first_uninit(ctx.sink_shadow.as_ptr(), size) }.is_some();
            if !dirty && (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE {
                // The common case: an initialized value into one page.
                let page = self.canon(addr).and_then(|c| self.page_of(self.place(c)));
                if page.is_none_or(|(_, p)| matches!(p.backing, Backing::INIT | Backing::Unchecked)) {
                    return;
                }
            }
            dirty
        };
        let o: Origin = ctx.sink_origin[0];
        let mut inner = None;
        let (mut a, end) = (addr, addr + size);
        while a < end {
            let e = end.min((a & !(PAGE_SIZE - 1)) + PAGE_SIZE);
            let Some((c, place, r, p)) = self.canon(a).and_then(|c| {
                let place = self.place(c);
                self.page_of(place).map(|(r, p)| (c, place, r, p))
            }) else {
                a = e;
                continue;
            };
            if !origin_only {
                let sh = &ctx.sink_shadow[a - addr..e - addr];
                let writable = match p.backing {
                    Backing::Private => true,
                    // (KASAN's kinds never back KMSAN metadata.)
                    Backing::Unchecked | Backing::Consult | Backing::VmallocInvalid => false,
                    Backing::INIT if sh.iter().all(|&b| b == 0) => false,
                    Backing::INIT | Backing::UNINIT => {
                        let g = inner.get_or_insert_with(|| self.inner.lock());
                        self.materialize(g, place)
                    }
                };
                if !writable {
                    a = e;
                    continue;
                }
                // SAFETY: the page's shadow is private and writable;
                // `[a, e)` lies inside the page.
                unsafe { core::ptr::copy_nonoverlapping(sh.as_ptr(), r.shadow_of(c) as *mut u8, e - a) };
            }
            if dirty && self.origin_plan(c, c + (e - a), o) != OriginPlan::Nothing {
                let g = inner.get_or_insert_with(|| self.inner.lock());
                self.write_origins(g, c, c + (e - a), o);
            }
            a = e;
        }
    }
}
