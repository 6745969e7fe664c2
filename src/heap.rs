//! A KASAN heap for kernels whose heap is not a Linux-style slab: the
//! kernel hands over one virtual range of mapped pages (at any address),
//! and the runtime serves `alloc`/`free` from it with redzones, quarantine
//! and allocation/free stacks. A `GlobalAlloc` is a thin wrapper around
//! [`Kasan::heap_alloc`] and [`Kasan::heap_free`] (the x86_64 backend has
//! one).
//!
//! ```text
//!  heap range (a tracked region of kind Heap, see crate::region)
//!  [page table][slab][slab][large object ...][slab] ... [free pages]
//!   4 bytes       │ size classes 16..2048: one runtime cache each
//!   per page      │ (crate::cache: slot = object + redzone + ObjMeta),
//!                 │ freed objects wait in the runtime's quarantine; a slab
//!                 │ whose slots are all available again goes back to the
//!                 │ free pages (while its class keeps another slab's worth
//!                 │ of free slots, or when an allocation finds no pages)
//!                 └ larger or aligned above 16: whole pages (at any
//!                   power-of-two alignment), object + redzone + ObjMeta at
//!                   the end; freed, they read 0xFF and wait in the same
//!                   quarantine (Linux quarantines kmalloc_large objects
//!                   too), then become free pages, handed out again last
//!                   (next fit)
//! ```
//!
//! An allocation that finds no room first reclaims: the quarantine gives
//! back its heap objects (oldest first, as Linux's quarantine shrinker
//! does under memory pressure) and every empty slab goes back to the free
//! pages; only then is the answer null. The range itself never grows: it
//! is the one the kernel handed over (see docs/adopting.md).
//!
//! The same tables and drivers as the kernel's own slab hooks: caches
//! ([`crate::cache`]), slot metadata, the quarantine, the stack depot and
//! the report's object description. Bugs are titled as Linux titles
//! them: slab-out-of-bounds (past an object, or past a page-backed one),
//! slab-use-after-free, use-after-free (a freed page-backed object),
//! double-free, invalid-free. In `off` mode the heap still allocates
//! (slots without redzones, no quarantine).

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::cache::{write_meta, CacheError, CacheId, ObjMeta, ObjState, META_SIZE};
use crate::layout::{Region, BLOCK_SIZE};
use crate::mapper::{ShadowMapper, PAGE_SIZE};
use crate::platform::{Platform, SlabRef};
use crate::region::{RegionError, RegionKind};
use crate::report::{Bug, BugType};
use crate::hooks::{Ip, Size};
use crate::runtime::{Inner, Kasan};
use crate::shadow::{GRANULE, PAGE_FREE, PAGE_REDZONE, SLAB_REDZONE};
use crate::stats::Stats;

/// Object sizes of the heap's slab classes; larger objects (or alignment
/// above 16) take whole pages, aligned as asked.
pub const HEAP_CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];
const NAMES: [&str; 8] =
    ["heap-16", "heap-32", "heap-64", "heap-128", "heap-256", "heap-512", "heap-1024", "heap-2048"];
/// Alignment of every slab object.
const CLASS_ALIGN: usize = 16;
/// Largest slab of a class: 2^3 pages.
const MAX_SLAB_ORDER: u32 = 3;

/// Why [`Kasan::heap_init`] refused the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// The runtime has a heap already.
    AlreadyInit,
    /// Start or length not aligned to [`BLOCK_SIZE`] (32 KiB).
    Unaligned,
    /// Too small to hold its page table and a few slabs (at least 64 KiB).
    TooSmall,
    /// The range cannot be a tracked region of the layout.
    Region(RegionError),
    /// The runtime could not create a size class.
    Cache(CacheError),
}

impl core::fmt::Display for HeapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeapError::AlreadyInit => f.write_str("the runtime has a heap already"),
            HeapError::Unaligned => f.write_str("heap range not aligned to 32 KiB"),
            HeapError::TooSmall => f.write_str("heap range too small"),
            HeapError::Region(e) => write!(f, "heap range: {e}"),
            HeapError::Cache(e) => write!(f, "heap size class: {e}"),
        }
    }
}

// Page table entries: bit 31 = free, bits 28..30 = what the page is (kept
// after a free, so a freed object is still described), bits 0..27 = value.
const FREE: u32 = 1 << 31;
const TAG_SHIFT: u32 = 28;
const TAG_MASK: u32 = 7 << TAG_SHIFT;
const VALUE_MASK: u32 = (1 << TAG_SHIFT) - 1;
/// The heap's own page table.
const TAG_TABLE: u32 = 1 << TAG_SHIFT;
/// First page of a slab; value = class index (bits 0..3) and the slots
/// not available (allocated or quarantined, bits 3..28).
const TAG_SLAB: u32 = 2 << TAG_SHIFT;
const CLASS_MASK: u32 = 7;
const INUSE_ONE: u32 = 1 << 3;
/// First page of a page-backed object; value = its pages.
const TAG_LARGE: u32 = 3 << TAG_SHIFT;
/// Another page of a slab or object; value = distance to its first page.
const TAG_TAIL: u32 = 4 << TAG_SHIFT;

/// The `cache` of a page-backed object's [`ObjMeta`] (no runtime cache):
/// how the quarantine tells it from a slab object.
pub(crate) const LARGE_CACHE: u16 = u16::MAX;

/// The bytes a page-backed object of `size` bytes takes while checking
/// (object, redzone and metadata, rounded to pages): what it weighs in
/// the quarantine.
pub(crate) const fn large_span(size: usize) -> usize {
    round_up(round_up(size, GRANULE) + META_SIZE, PAGE_SIZE)
}

/// A size class, fixed at init.
#[derive(Clone, Copy, Debug)]
struct Class {
    id: CacheId,
    slot: usize,
    offset: usize,
    order: u32,
    /// Slots per slab.
    slots: usize,
}

/// What reports and frees read without the lock: the range, the page
/// table and the classes.
pub(crate) struct HeapView {
    range: Region,
    pages: &'static [AtomicU32],
    classes: [Class; HEAP_CLASSES.len()],
}

impl HeapView {
    fn page(&self, addr: usize) -> Option<usize> {
        self.range.contains(addr).then(|| (addr - self.range.start) / PAGE_SIZE)
    }

    fn addr(&self, page: usize) -> usize {
        self.range.start + page * PAGE_SIZE
    }

    /// The first page of the slab or object holding `page`, and its entry.
    fn head(&self, page: usize) -> (usize, u32) {
        let e = self.pages[page].load(Relaxed);
        if e & TAG_MASK == TAG_TAIL {
            let h = page.saturating_sub((e & VALUE_MASK) as usize);
            return (h, self.pages[h].load(Relaxed));
        }
        (page, e)
    }
}

/// The heap's mutable state, under the runtime lock.
pub(crate) struct HeapState {
    /// First available slot of each class (linked through the slots' first word).
    free: [usize; HEAP_CLASSES.len()],
    /// Available slots of each class (the length of its free list).
    avail: [usize; HEAP_CLASSES.len()],
    /// Next-fit cursor of the page allocator.
    cursor: usize,
}

impl HeapState {
    pub(crate) const fn new() -> Self {
        HeapState { free: [0; HEAP_CLASSES.len()], avail: [0; HEAP_CLASSES.len()], cursor: 0 }
    }
}

const fn round_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

impl<M: ShadowMapper, P: Platform> Kasan<M, P> {
    /// Give the runtime `[start, start + len)` as its heap: mapped,
    /// writable memory at any virtual address outside the direct map, the
    /// vmalloc window and the image, block (32 KiB) aligned. It becomes a
    /// tracked region ([`RegionKind::Heap`]); its first pages hold the
    /// heap's page table (4 bytes per page).
    ///
    /// # Safety
    ///
    /// The range is mapped readable and writable, and belongs to the heap
    /// from now on: nothing else reads or writes it except through the
    /// objects [`Kasan::heap_alloc`] hands out.
    pub unsafe fn heap_init(&self, start: usize, len: Size) -> Result<(), HeapError> {
        let len = len.0;
        if self.heap.get().is_some() {
            return Err(HeapError::AlreadyInit);
        }
        if !start.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
            return Err(HeapError::Unaligned);
        }
        if len < 2 * BLOCK_SIZE {
            return Err(HeapError::TooSmall);
        }
        let range = Region { start, end: start.checked_add(len).ok_or(HeapError::Region(RegionError::Empty))? };
        self.add_region(RegionKind::Heap, range).map_err(HeapError::Region)?;
        let npages = len / PAGE_SIZE;
        let table_pages = (npages * 4).div_ceil(PAGE_SIZE);
        // SAFETY: the caller hands over the mapped, writable range; the
        // table is its first `table_pages` pages, used by nobody else, and
        // all-zero bytes are valid `AtomicU32`s (start is page aligned).
        let pages = unsafe {
            core::ptr::write_bytes(start as *mut u8, 0, table_pages * PAGE_SIZE);
            core::slice::from_raw_parts(start as *const AtomicU32, npages)
        };
        for (i, p) in pages.iter().enumerate() {
            p.store(if i < table_pages { TAG_TABLE } else { FREE }, Relaxed);
        }
        self.fill_shadow(start, start + table_pages * PAGE_SIZE, PAGE_REDZONE);
        let mut classes = [Class { id: CacheId(0), slot: 0, offset: 0, order: 0, slots: 0 }; HEAP_CLASSES.len()];
        let mut inner = self.inner.lock();
        for (i, c) in classes.iter_mut().enumerate() {
            let id = inner.caches.create(NAMES[i], HEAP_CLASSES[i], CLASS_ALIGN, self.on()).map_err(HeapError::Cache)?;
            let info = *inner.caches.get(id).map_err(HeapError::Cache)?;
            let order = (0..MAX_SLAB_ORDER)
                .find(|&o| ((PAGE_SIZE << o) - info.slab_offset) / info.slot_size >= 4)
                .unwrap_or(MAX_SLAB_ORDER);
            let slots = ((PAGE_SIZE << order) - info.slab_offset) / info.slot_size;
            *c = Class { id, slot: info.slot_size, offset: info.slab_offset, order, slots };
        }
        inner.heap = HeapState { cursor: table_pages, ..HeapState::new() };
        drop(inner);
        self.heap.call_once(|| HeapView { range, pages, classes });
        Ok(())
    }

    /// The heap's range, once [`Kasan::heap_init`] ran.
    #[must_use]
    pub fn heap_range(&self) -> Option<Region> {
        self.heap.get().map(|v| v.range)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two) from the
    /// heap. Any alignment is honoured: up to 16 from a size class, above
    /// that from whole pages starting at a multiple of `align`. Null (what
    /// `GlobalAlloc::alloc` returns on failure) when the heap has not been
    /// set up, `align` is not a power of two or above the heap's length,
    /// or no room is left after reclaiming (quarantined heap objects and
    /// empty slabs). `from` is the return address of the kernel's
    /// allocation entry point (the allocation stack starts there), 0 if
    /// unknown.
    pub fn heap_alloc(&self, size: Size, align: usize, from: Ip) -> *mut u8 {
        let from = from.0;
        let size = size.0;
        let Some(v) = self.heap.get() else { return core::ptr::null_mut() };
        if !align.is_power_of_two() || align > v.range.len() {
            return core::ptr::null_mut();
        }
        let size = size.max(1);
        let mut inner = self.inner.lock();
        let class = (align <= CLASS_ALIGN).then(|| HEAP_CLASSES.iter().position(|&c| size <= c)).flatten();
        let ptr = match class {
            Some(c) => self.heap_alloc_slot(&mut inner, v, c, size, from),
            None => self.heap_alloc_pages(&mut inner, v, size, align, from),
        };
        ptr.map_or(core::ptr::null_mut(), |p| p as *mut u8)
    }

    fn heap_alloc_slot(&self, inner: &mut Inner<M>, v: &HeapView, c: usize, size: usize, from: usize) -> Option<usize> {
        if inner.heap.free[c] == 0 {
            self.heap_grow(inner, v, c)?;
        }
        let ptr = inner.heap.free[c];
        // SAFETY: an available slot of this class: its first word links the free list.
        inner.heap.free[c] = unsafe { core::ptr::read(ptr as *const usize) };
        inner.heap.avail[c] -= 1;
        if self.on() {
            let class = v.classes[c];
            let cache = *inner.caches.live(class.id).ok()?;
            self.obj_alloc(inner, class.id, &cache, ptr, size, from).ok()?;
        }
        let (head, _) = v.head(v.page(ptr)?);
        v.pages[head].fetch_add(INUSE_ONE, Relaxed);
        Some(ptr)
    }

    /// The slot at `ptr` of class `c` is available again: back on its free
    /// list. Its slab goes back to the free pages when that left no slot of
    /// it in use and the class keeps another slab's worth of free slots.
    fn heap_slot_back(&self, inner: &mut Inner<M>, v: &HeapView, c: usize, ptr: usize) {
        // SAFETY: an available slot of this class: its first word is the heap's.
        unsafe { core::ptr::write(ptr as *mut usize, inner.heap.free[c]) };
        inner.heap.free[c] = ptr;
        inner.heap.avail[c] += 1;
        let Some(page) = v.page(ptr) else { return };
        let (head, _) = v.head(page);
        let e = v.pages[head].fetch_sub(INUSE_ONE, Relaxed) - INUSE_ONE;
        if e & !CLASS_MASK == TAG_SLAB && inner.heap.avail[c] >= 2 * v.classes[c].slots {
            self.heap_free_slab(inner, v, head);
        }
    }

    /// Give the empty slab at page `head` back to the free pages: its
    /// slots leave the class's free list, its pages read 0xFF.
    fn heap_free_slab(&self, inner: &mut Inner<M>, v: &HeapView, head: usize) {
        let c = (v.pages[head].load(Relaxed) & CLASS_MASK) as usize;
        let class = v.classes[c];
        let count = 1usize << class.order;
        let (start, end) = (v.addr(head), v.addr(head + count));
        let (mut prev, mut cur) = (None, inner.heap.free[c]);
        while cur != 0 {
            // SAFETY: a slot on the free list: its first word links the list.
            let next = unsafe { core::ptr::read(cur as *const usize) };
            if (start..end).contains(&cur) {
                match prev {
                    // SAFETY: as above, for the slot before it.
                    Some(p) => unsafe { core::ptr::write(p as *mut usize, next) },
                    None => inner.heap.free[c] = next,
                }
                inner.heap.avail[c] -= 1;
            } else {
                prev = Some(cur);
            }
            cur = next;
        }
        if self.on() {
            self.fill_shadow(start, end, PAGE_FREE);
        }
        for p in &v.pages[head..head + count] {
            p.fetch_or(FREE, Relaxed);
        }
    }

    /// Make room: the quarantine's heap objects go back to the heap (oldest
    /// first, up to a kernel slab object waiting for the kernel), then
    /// every empty slab to the free pages. False when nothing changed.
    fn heap_reclaim(&self, inner: &mut Inner<M>, v: &HeapView) -> bool {
        let mut freed = self.heap_release(inner, true);
        for head in 0..v.pages.len() {
            let e = v.pages[head].load(Relaxed);
            // A slab (not free) with no slot in use.
            if e & !CLASS_MASK == TAG_SLAB {
                self.heap_free_slab(inner, v, head);
                freed = true;
            }
        }
        freed
    }

    /// Whether an object whose metadata names cache `cache` is the heap's.
    fn heap_owns(&self, cache: u16) -> bool {
        cache == LARGE_CACHE || self.heap.get().is_some_and(|v| v.classes.iter().any(|c| c.id.0 == cache))
    }

    /// A new slab for class `c`: its slots poisoned and on the free list.
    fn heap_grow(&self, inner: &mut Inner<M>, v: &HeapView, c: usize) -> Option<()> {
        let class = v.classes[c];
        let count = 1usize << class.order;
        let base = self.heap_take_pages(inner, v, count, PAGE_SIZE, TAG_SLAB | c as u32)?;
        let end = base + count * PAGE_SIZE;
        let cache = *inner.caches.get(class.id).ok()?;
        if self.on() {
            self.fill_shadow(base, end, SLAB_REDZONE);
        }
        let mut slot = base + class.offset;
        let mut slots = 0;
        while slot + class.slot <= end {
            if self.on() {
                // SAFETY: a slot of the slab just carved from the heap's pages.
                unsafe { write_meta(&cache, slot, ObjMeta { cache: class.id.0, ..ObjMeta::EMPTY }) };
            }
            slots += 1;
            slot += class.slot;
        }
        // Link the slots lowest address first.
        for k in (0..slots).rev() {
            let s = base + class.offset + k * class.slot;
            // SAFETY: as above; the first word of an available slot is the heap's.
            unsafe { core::ptr::write(s as *mut usize, inner.heap.free[c]) };
            inner.heap.free[c] = s;
        }
        inner.heap.avail[c] += slots;
        Some(())
    }

    /// A page-backed object: whole pages starting at a multiple of
    /// `align`, the object at their start, a redzone after it and its
    /// metadata at the end.
    fn heap_alloc_pages(&self, inner: &mut Inner<M>, v: &HeapView, size: usize, align: usize, from: usize) -> Option<usize> {
        // Larger than the heap: none (and `large_span` would overflow near
        // usize::MAX).
        if size > v.range.len() {
            return None;
        }
        let span = if self.on() { large_span(size) } else { size };
        let count = span.div_ceil(PAGE_SIZE);
        if count > v.pages.len() || count > VALUE_MASK as usize {
            return None;
        }
        let base = self.heap_take_pages(inner, v, count, align, TAG_LARGE | count as u32)?;
        if self.on() {
            let end = base + count * PAGE_SIZE;
            self.unpoison(base, size);
            self.fill_shadow(base + round_up(size, GRANULE), end, PAGE_REDZONE);
            let meta = ObjMeta {
                alloc_stack: self.save_stack_from(inner, from),
                alloc_pid: self.platform.current_pid(),
                size: size as u32,
                cache: LARGE_CACHE,
                state: ObjState::Allocated as u16,
                ..ObjMeta::EMPTY
            };
            // SAFETY: the last bytes of the pages just taken (redzone).
            unsafe { crate::cache::write_meta_at(end - META_SIZE, meta) };
            Stats::bump(&self.stats.slab_allocs);
        }
        Some(base)
    }

    /// `count` free pages starting at a multiple of `align` (next fit:
    /// freed pages are reused last; reclaiming when none are left), marked
    /// with `head` and tails.
    fn heap_take_pages(&self, inner: &mut Inner<M>, v: &HeapView, count: usize, align: usize, head: u32) -> Option<usize> {
        let n = v.pages.len();
        let align = align.max(PAGE_SIZE);
        let find = |cursor: usize| {
            Self::free_run(v, count, align, cursor, n)
                .or_else(|| Self::free_run(v, count, align, 0, cursor.saturating_add(count + align / PAGE_SIZE).min(n)))
        };
        let start = match find(inner.heap.cursor.min(n)) {
            Some(s) => s,
            None if self.heap_reclaim(inner, v) => find(inner.heap.cursor.min(n))?,
            None => return None,
        };
        v.pages[start].store(head, Relaxed);
        for k in 1..count {
            v.pages[start + k].store(TAG_TAIL | k as u32, Relaxed);
        }
        inner.heap.cursor = start + count;
        Some(v.addr(start))
    }

    /// The first run of `count` free pages at a multiple of `align` (a
    /// power of two, at least a page, at most the heap's length) starting
    /// in `[lo, hi)` and ending by `hi`.
    fn free_run(v: &HeapView, count: usize, align: usize, lo: usize, hi: usize) -> Option<usize> {
        // The first page at or after page `i` that starts at a multiple of `align`.
        let aligned = |i: usize| {
            let a = v.addr(i);
            (a - v.range.start + (a.wrapping_neg() & (align - 1))) / PAGE_SIZE
        };
        let mut start = aligned(lo);
        while start + count <= hi {
            match (start..start + count).rev().find(|&i| v.pages[i].load(Relaxed) & FREE == 0) {
                None => return Some(start),
                Some(used) => start = aligned(used + 1),
            }
        }
        None
    }

    /// Free a heap object. `Err` is a reported double or invalid free
    /// (nothing changed). `from` is the return address of the kernel's free
    /// entry point (the free stack and the report start there), 0 if unknown.
    pub fn heap_free(&self, ptr: usize, from: Ip) -> Result<(), Bug> {
        let from = from.0;
        let Some(v) = self.heap.get() else {
            return Err(self.report_free(ptr, BugType::InvalidFree, from));
        };
        let Some(page) = v.page(ptr) else {
            return Err(self.report_free(ptr, BugType::InvalidFree, from));
        };
        let mut inner = self.inner.lock();
        let (head, e) = v.head(page);
        let tag = e & TAG_MASK;
        let bug = if e & FREE != 0 {
            if tag == TAG_LARGE && ptr == v.addr(head) {
                BugType::DoubleFree
            } else {
                BugType::InvalidFree
            }
        } else if tag == TAG_SLAB {
            let c = (e & CLASS_MASK) as usize;
            let class = v.classes[c];
            let base = v.addr(head) + class.offset;
            let end = v.addr(head) + (PAGE_SIZE << class.order);
            if ptr < base || !(ptr - base).is_multiple_of(class.slot) || ptr + class.slot > end {
                BugType::InvalidFree
            } else if !self.on() {
                self.heap_slot_back(&mut inner, v, c, ptr);
                return Ok(());
            } else {
                let Ok(cache) = inner.caches.live(class.id).copied() else { return Ok(()) };
                match self.obj_free(&mut inner, class.id, &cache, ptr, from) {
                    Ok(()) => {
                        self.heap_release(&mut inner, false);
                        return Ok(());
                    }
                    Err(bug) => bug,
                }
            }
        } else if tag == TAG_LARGE && ptr == v.addr(head) {
            let count = (e & VALUE_MASK) as usize;
            if !self.on() {
                for p in &v.pages[head..head + count] {
                    p.fetch_or(FREE, Relaxed);
                }
                return Ok(());
            }
            let end = ptr + count * PAGE_SIZE;
            // SAFETY: the metadata at the end of the object's pages.
            let mut meta = unsafe { crate::cache::read_meta_at(end - META_SIZE) };
            if meta.state() == ObjState::Quarantined {
                BugType::DoubleFree
            } else {
                meta.free_stack = self.save_stack_from(&mut inner, from);
                meta.free_pid = self.platform.current_pid();
                meta.state = ObjState::Quarantined as u16;
                // SAFETY: as above.
                unsafe { crate::cache::write_meta_at(end - META_SIZE, meta) };
                self.fill_shadow(ptr, end, PAGE_FREE);
                // SAFETY: the pages stay taken (not FREE) until the
                // quarantine lets the object go (heap_release_large).
                unsafe { inner.quarantine.push(end - META_SIZE, end - ptr) };
                self.stats.quarantine_bytes.store(inner.quarantine.bytes(), Relaxed);
                self.heap_release(&mut inner, false);
                return Ok(());
            }
        } else {
            BugType::InvalidFree
        };
        drop(inner);
        Err(self.report_free(ptr, bug, from))
    }

    /// Let the quarantine go down to its limit (`all`: empty it, oldest
    /// first): heap objects go back to the heap; a kernel slab object
    /// stops it, on the release list for the kernel's next
    /// [`Kasan::quarantine_pop`]. True when a heap object went back.
    fn heap_release(&self, inner: &mut Inner<M>, all: bool) -> bool {
        let mut released = false;
        while let Some(meta) = self.pop_quarantined(inner, all) {
            // SAFETY: it was on the quarantine's lists, hence valid.
            if !self.heap_owns(unsafe { crate::cache::read_meta_at(meta) }.cache) {
                // SAFETY: a quarantined object just taken off the lists.
                unsafe { inner.quarantine.defer(meta) };
                break;
            }
            let _ = self.finish_release(inner, meta);
            released = true;
        }
        released
    }

    /// A heap object of cache `id` at `ptr` left the quarantine: back on
    /// its free list. False when it is not the heap's.
    pub(crate) fn heap_take_back(&self, inner: &mut Inner<M>, id: CacheId, ptr: usize) -> bool {
        let Some(v) = self.heap.get() else { return false };
        let Some(c) = v.classes.iter().position(|c| c.id == id) else { return false };
        self.heap_slot_back(inner, v, c, ptr);
        true
    }

    /// The page-backed object whose metadata is at `meta` left the
    /// quarantine: its pages are free (its metadata stays, describing it
    /// as freed until the pages are taken again). False when it is none.
    pub(crate) fn heap_release_large(&self, meta: usize) -> bool {
        let Some(v) = self.heap.get() else { return false };
        let Some(page) = v.page(meta) else { return false };
        let (head, e) = v.head(page);
        if e & (FREE | TAG_MASK) != TAG_LARGE {
            return false;
        }
        let count = (e & VALUE_MASK) as usize;
        for p in &v.pages[head..head + count] {
            p.fetch_or(FREE, Relaxed);
        }
        true
    }

    /// The heap slab holding `addr` (for reports).
    pub(crate) fn heap_slab_of(&self, addr: usize) -> Option<SlabRef> {
        let v = self.heap.get()?;
        let (head, e) = v.head(v.page(addr)?);
        if e & (FREE | TAG_MASK) != TAG_SLAB {
            return None;
        }
        let class = v.classes[(e & CLASS_MASK) as usize];
        Some(SlabRef { cache: class.id, base: v.addr(head) + class.offset })
    }

    /// The page-backed heap object holding `addr`, live or freed: its
    /// start, its pages' end and its metadata (for reports).
    pub(crate) fn heap_large_of(&self, addr: usize) -> Option<(usize, usize, ObjMeta)> {
        let v = self.heap.get()?;
        let (head, e) = v.head(v.page(addr)?);
        if e & TAG_MASK != TAG_LARGE {
            return None;
        }
        let count = (e & VALUE_MASK) as usize;
        // A freed object's pages may have been taken again in part.
        let whole = (1..count).all(|k| v.pages.get(head + k).map(|p| p.load(Relaxed) & !FREE) == Some(TAG_TAIL | k as u32));
        if !whole || (e & FREE != 0 && (1..count).any(|k| v.pages[head + k].load(Relaxed) & FREE == 0)) {
            return None;
        }
        let (start, end) = (v.addr(head), v.addr(head + count));
        // SAFETY: the metadata at the end of the object's pages (heap memory).
        let meta = unsafe { crate::cache::read_meta_at(end - META_SIZE) };
        Some((start, end, meta))
    }
}
