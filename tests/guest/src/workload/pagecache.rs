//! A page cache: page-granular file data, found through the inode's page
//! array, on an LRU list kept in a per-frame descriptor table (like the
//! kernel's `struct page`: whole pages, no slab). Reads that find the page
//! hit; misses read it from "disk" (a deterministic generator). Under memory
//! pressure (free pages below the low watermark, or a failed allocation)
//! the coldest unpinned folios are reclaimed; dirty pages are written back
//! (verified against the disk content) first.
//!
//! Folios (as Linux's large folios): where a file has a whole aligned run
//! of `2^folio_order` pages (default 8 = one pageblock, the data behind one
//! shadow page), a miss reads the run ahead into one folio of that order,
//! and a write allocates one for the run. The LRU, pinning and reclaim work
//! on folios, so reclaim gives back whole pageblocks instead of leaving
//! single free pages among cached ones. Tails and files shorter than a run
//! use order-0 pages. A folio's pages are up to date separately: a written
//! folio holds the pages written so far, and a read of the others fills
//! them from disk. `folio=0` on the command line turns folios off.
//!
//! ```text
//!  descriptor of a head:  prev/next = LRU links, F_LARGE if a folio,
//!                         F_FOLIO_DIRTY if any page is dirty, pins
//!  descriptor of a tail:  F_TAIL, prev = head frame
//!  every page:            F_USED, F_UPTODATE, F_DIRTY, ino, index
//! ```
//!
//! Several CPUs: the cache's state and the descriptors are guarded by the
//! workload's fs lock (`fslock.rs`), which every public function takes; a
//! caller reads or writes a page it got from `get` / `write_begin` outside
//! the lock, pinned (reclaim and the flusher skip pinned folios).
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use super::fslock::{self, FsCell};
use super::mem::{self, Kc};
use super::rng::mix;
use super::vfs::{self, File, Inode};
use crate::mm::{buddy, PAGE_SIZE};
use crate::println;
use guest_boot::paging::virt_to_phys;

const NONE: u32 = u32::MAX;
const DESC_PER_CHUNK: usize = PAGE_SIZE / core::mem::size_of::<Desc>();
const MAX_CHUNKS: usize = 8192; // 8192 * 256 frames = 8 GiB

const F_USED: u8 = 1;
const F_DIRTY: u8 = 2;
const F_UPTODATE: u8 = 4;
/// Head of a folio of `folio_order` (else a single page).
const F_LARGE: u8 = 8;
/// Not the head of its folio: `prev` is the head's frame.
const F_TAIL: u8 = 16;
/// On a head: some page of the folio is dirty (the flusher's quick test).
const F_FOLIO_DIRTY: u8 = 32;

#[derive(Clone, Copy)]
#[repr(C)]
struct Desc {
    prev: u32,
    next: u32,
    ino: u32,
    index: u16,
    flags: u8,
    /// Pins on the folio (heads only).
    pins: u8,
}

#[derive(Clone, Copy)]
pub struct Stats {
    pub nr: usize,
    pub peak: usize,
    pub dirty: usize,
    pub hits: u64,
    pub misses: u64,
    pub reclaimed: u64,
    pub writebacks: u64,
    pub corrupt: u64,
    pub low: usize,
    pub high: usize,
    pub dirty_limit: usize,
    /// Folios of `folio_order` created (reads and writes).
    pub large_folios: u64,
    /// Runs that could have been a folio but got order-0 pages (no block free).
    pub folio_fallbacks: u64,
    /// Buffer heads attached (profile build).
    pub buffer_heads: u64,
}

struct Pc {
    head: u32,
    tail: u32,
    nchunks: usize,
    folio_order: usize,
    s: Stats,
    /// Profile build: buffer heads, and the per-frame table that finds them
    /// (`bh_chunks` pages whose addresses are in the `bh_table` block).
    bh_cache: Option<Kc>,
    bh_table: *mut usize,
    bh_table_order: usize,
    bh_chunks: usize,
}

const BH_SIZE: usize = 104;

const STATS_ZERO: Stats = Stats {
    nr: 0,
    peak: 0,
    dirty: 0,
    hits: 0,
    misses: 0,
    reclaimed: 0,
    writebacks: 0,
    corrupt: 0,
    low: 0,
    high: 0,
    dirty_limit: 0,
    large_folios: 0,
    folio_fallbacks: 0,
    buffer_heads: 0,
};

/// The pages holding the frame descriptors (`DESC_PER_CHUNK` each); 0: none.
static CHUNKS: [AtomicUsize; MAX_CHUNKS] = [const { AtomicUsize::new(0) }; MAX_CHUNKS];
static PC: FsCell<Pc> = FsCell::new(Pc {
    head: NONE,
    tail: NONE,
    nchunks: 0,
    folio_order: 0,
    s: STATS_ZERO,
    bh_cache: None,
    bh_table: core::ptr::null_mut(),
    bh_table_order: 0,
    bh_chunks: 0,
});
/// The low watermark (`Stats::low`), read without the lock on every
/// counted operation (`super::tick`).
static LOW: AtomicUsize = AtomicUsize::new(0);

fn pc() -> &'static mut Pc {
    // SAFETY: every public function takes the fs lock before it gets here,
    // and no page-cache use comes from interrupt context; callers do not
    // keep the reference across a call that takes it again.
    unsafe { PC.get() }
}

fn desc(pfn: u32) -> &'static mut Desc {
    let p = pfn as usize;
    let chunk = CHUNKS[p / DESC_PER_CHUNK].load(Relaxed);
    if chunk == 0 {
        super::broken("page cache: no descriptor for frame", p);
    }
    // SAFETY: `chunk` is a zeroed page `init` allocated for descriptors
    // (all-zero is a valid Desc) and p % DESC_PER_CHUNK indexes inside it;
    // callers hold the fs lock (as for `pc`) and use one descriptor at a time.
    unsafe { &mut *(chunk as *mut Desc).add(p % DESC_PER_CHUNK) }
}

fn pfn_of(addr: usize) -> u32 {
    (virt_to_phys(addr as u64).expect("page cache page without a physical address") / PAGE_SIZE as u64) as u32
}

fn addr_of_pfn(pfn: u32) -> usize {
    guest_boot::paging::phys_to_virt(pfn as u64 * PAGE_SIZE as u64) as usize
}

/// Head frame of the folio holding `pfn`.
fn head_of(pfn: u32) -> u32 {
    let d = desc(pfn);
    if d.flags & F_TAIL != 0 {
        d.prev
    } else {
        pfn
    }
}

/// Pages in the folio whose head is `head`.
fn folio_pages(head: u32) -> u32 {
    if desc(head).flags & F_LARGE != 0 {
        1 << pc().folio_order
    } else {
        1
    }
}

/// Disk content of word `i` of page `index` of a file whose content seed is `content`.
#[inline]
pub fn disk_word(content: u64, index: usize, i: usize) -> u64 {
    word_of(page_base(content, index), i)
}

#[inline]
fn page_base(content: u64, index: usize) -> u64 {
    mix(content ^ ((index as u64) << 20))
}

#[inline]
fn word_of(base: u64, i: usize) -> u64 {
    (base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left((i & 63) as u32)
}

/// Fill a page with its disk content: a read from disk (the device's DMA)
/// or a write from user space (`copy_from_user`), both outside the
/// kernel's instrumented code (see `kasan_glue::outside_write`).
pub fn fill(addr: usize, content: u64, index: usize) {
    crate::kasan_glue::outside_write(addr, PAGE_SIZE, || {
        let w = addr as *mut u64;
        let base = page_base(content, index);
        for i in 0..PAGE_SIZE / 8 {
            // SAFETY: `addr` is a page-cache page: PAGE_SIZE / 8 words.
            unsafe { crate::kasan_glue::user_write(w.add(i), word_of(base, i)) };
        }
    });
}

/// Whether a page holds its disk content, read as user space reads a
/// file (`read`'s copy to user space: the range checked once).
pub fn verify(addr: usize, content: u64, index: usize) -> bool {
    crate::kasan_glue::outside_read(addr, PAGE_SIZE);
    let w = addr as *const u64;
    let base = page_base(content, index);
    // SAFETY: `addr` is a pinned page-cache page (the caller holds it): 4 KiB
    // mapped; i < PAGE_SIZE / 8 words.
    (0..PAGE_SIZE / 8).all(|i| unsafe { crate::kasan_glue::user_read(w.add(i)) } == word_of(base, i))
}

/// Linux's min_free_kbytes = sqrt(16 * lowmem KiB), low = 5/4, high = 3/2 of it.
/// `ram_end`: the end of the highest RAM range (physical), which bounds
/// the frame numbers the descriptors are indexed by.
pub fn init(managed_pages: usize, ram_end: u64, folio_order: usize, build: bool) {
    let _g = fslock::lock();
    let p = pc();
    let max_pfn = (ram_end as usize).div_ceil(PAGE_SIZE) + 256;
    p.bh_cache = None;
    if build {
        let per = PAGE_SIZE / 8;
        let chunks = max_pfn.div_ceil(per);
        // At least a whole pageblock, as `TablePages` (an order-1 table
        // at 1 GiB sat among other pages: 2 per-page reads per buffer_head).
        let order = ((chunks * 8).div_ceil(PAGE_SIZE).next_power_of_two().trailing_zeros() as usize)
            .max(buddy::PAGEBLOCK_PAGES.trailing_zeros() as usize);
        let Some(t) = buddy::alloc_pages(order) else { super::fail("page cache: no memory for the buffer_head table") };
        p.bh_table = t as *mut usize;
        p.bh_table_order = order;
        let mut pages = TablePages::default();
        for i in 0..chunks {
            let Some(c) = pages.next() else { super::fail("page cache: no memory for the buffer_head table") };
            // SAFETY: the table block holds >= chunks entries (its order was chosen so).
            unsafe { *p.bh_table.add(i) = c };
        }
        p.bh_chunks = chunks;
        p.bh_cache = Some(mem::create_cache("buffer_head", BH_SIZE, mem::G_PAGECACHE));
    }
    let n = max_pfn.div_ceil(DESC_PER_CHUNK).min(MAX_CHUNKS);
    let mut pages = TablePages::default();
    for chunk in &CHUNKS[..n] {
        let c = match pages.next() {
            Some(c) => c,
            None => super::fail("page cache: no memory for the frame descriptors"),
        };
        chunk.store(c, Relaxed);
    }
    p.nchunks = n;
    p.folio_order = folio_order.min(buddy::MAX_ORDER);
    let kib = managed_pages * (PAGE_SIZE / 1024);
    let min_kib = isqrt(kib * 16).clamp(128, 65536);
    let min_pages = min_kib / 4;
    p.head = NONE;
    p.tail = NONE;
    p.s = Stats {
        low: min_pages * 5 / 4,
        high: min_pages * 3 / 2,
        dirty_limit: (managed_pages / 10).max(64),
        ..STATS_ZERO
    };
    LOW.store(p.s.low, Relaxed);
}

/// Zeroed pages for the per-frame tables, carved from whole pageblocks
/// (blocks from the buddy allocator are aligned to their size)
/// (the 8 pages one shadow page covers), as a kernel's frame array is
/// allocated at boot in large runs: single pages taken from the
/// page-granular pool would share pageblocks with pages allocated and
/// freed later, and hybrid reads the per-page shadow for every access to
/// a pageblock mixing free and allocated pages (0.5-1M reads a table in
/// the 1 GiB build workload). At most 7 pages of the last block go unused.
#[derive(Default)]
struct TablePages {
    next: usize,
    left: usize,
}

impl TablePages {
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            let order = buddy::PAGEBLOCK_PAGES.trailing_zeros() as usize;
            let b = buddy::alloc_pages(order)?;
            // SAFETY: a block of PAGEBLOCK_PAGES pages just allocated, ours.
            unsafe { core::ptr::write_bytes(b as *mut u8, 0, PAGE_SIZE << order) };
            self.next = b;
            self.left = 1 << order;
        }
        let p = self.next;
        self.next += PAGE_SIZE;
        self.left -= 1;
        Some(p)
    }

    /// Give back a page from [`TablePages::next`]; call it for every page
    /// handed out: a block goes back with its first page.
    fn free(page: usize) {
        let order = buddy::PAGEBLOCK_PAGES.trailing_zeros() as usize;
        if page.is_multiple_of(PAGE_SIZE << order) {
            buddy::free_pages(page, order);
        }
    }
}

fn isqrt(x: usize) -> usize {
    let mut r = 0usize;
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// A copy of the statistics.
pub fn stats() -> Stats {
    let _g = fslock::lock();
    pc().s
}

/// The low watermark in pages (no lock).
#[inline]
pub fn low_watermark() -> usize {
    LOW.load(Relaxed)
}

pub fn pages() -> usize {
    let _g = fslock::lock();
    pc().s.nr
}

fn lru_unlink(pfn: u32) {
    let p = pc();
    let (pv, nx) = {
        let d = desc(pfn);
        (d.prev, d.next)
    };
    if pv != NONE {
        desc(pv).next = nx;
    } else {
        p.head = nx;
    }
    if nx != NONE {
        desc(nx).prev = pv;
    } else {
        p.tail = pv;
    }
}

fn lru_push_head(pfn: u32) {
    let p = pc();
    let d = desc(pfn);
    d.prev = NONE;
    d.next = p.head;
    if p.head != NONE {
        desc(p.head).prev = pfn;
    } else {
        p.tail = pfn;
    }
    p.head = pfn;
}

/// Kswapd-like balance: below the low watermark, reclaim up to the high one.
pub fn balance() {
    let _g = fslock::lock();
    let s = &pc().s;
    if buddy::free_page_count() < s.low {
        let want = s.high;
        while buddy::free_page_count() < want {
            if reclaim(32) == 0 {
                break;
            }
        }
    }
}

/// Memory for a folio of `order` (0 or the folio order): the folio, or
/// under fragmentation a single page (order 0), as readahead falls back.
fn folio_for_cache(order: usize) -> (usize, usize) {
    balance();
    if order > 0 {
        if let Some(p) = buddy::alloc_pages(order) {
            pc().s.large_folios += 1;
            return (p, order);
        }
        // Reclaim a little (whole folios come back as whole blocks) and
        // try once more. Skipping this while free pages are scattered
        // measured worse: at 64 MiB 27k runs fell back to single pages
        // (39 with it), slow-path checks 24M -> 88M, and reclaim did not
        // drop.
        reclaim(2 << order);
        if let Some(p) = buddy::alloc_pages(order) {
            pc().s.large_folios += 1;
            return (p, order);
        }
        pc().s.folio_fallbacks += 1;
    }
    loop {
        if let Some(p) = buddy::alloc_pages(0) {
            return (p, 0);
        }
        crate::mm::slab::drain_all();
        if reclaim(64) == 0 {
            if let Some(p) = buddy::alloc_pages(0) {
                return (p, 0);
            }
            println!("wl-oom what=pagecache size=4096 free={} pagecache={}", buddy::free_page_count() * PAGE_SIZE, pages() * PAGE_SIZE);
            super::fail("out of memory");
        }
    }
}

/// The folio run holding `index`: (first index, order) when the whole
/// aligned run is inside the file and not cached, else (index, 0).
fn run_of(ino: &Inode, index: usize) -> (usize, usize) {
    let order = pc().folio_order;
    let n = 1usize << order;
    let first = index & !(n - 1);
    if order == 0 || first + n > ino.npages as usize {
        return (index, 0);
    }
    // first + n <= npages (checked above).
    if (first..first + n).any(|i| ino.page(i) != 0) {
        return (index, 0);
    }
    (first, order)
}

/// Put a new folio holding page `index` of `ino` in the cache, pinned:
/// a whole run when `run_of` allows and a block is free, else one page.
/// Returns the page for `index`.
fn add_folio(ino: &mut Inode, index: usize, write: bool) -> usize {
    let (mut first, want) = run_of(ino, index);
    let (base, order) = folio_for_cache(want);
    if order == 0 {
        first = index;
    }
    let head = pfn_of(base);
    let n = 1usize << order;
    for k in 0..n {
        let i = first + k;
        let addr = base + k * PAGE_SIZE;
        // Reads fill the whole folio from disk (readahead); a write makes
        // only the page being written up to date (the caller fills it).
        let mut flags = F_USED;
        if !write {
            fill(addr, ino.content, i);
            flags |= F_UPTODATE;
        } else if i == index {
            flags |= F_UPTODATE | F_DIRTY;
        }
        let (prev, flags) = if k == 0 { (NONE, flags | if order > 0 { F_LARGE } else { 0 }) } else { (head, flags | F_TAIL) };
        *desc(head + k as u32) = Desc { prev, next: NONE, ino: ino.ino, index: i as u16, flags, pins: 0 };
        // i < npages (the folio fits, as chosen).
        ino.set_page(i, addr);
    }
    let h = desc(head);
    h.pins = 1;
    if write {
        h.flags |= F_FOLIO_DIRTY;
    }
    lru_push_head(head);
    ino.cached += n as u32;
    let s = &mut pc().s;
    s.nr += n;
    s.peak = s.peak.max(s.nr);
    if write {
        s.dirty += 1;
    } else {
        s.misses += n as u64;
    }
    let page = base + (index - first) * PAGE_SIZE;
    if write {
        attach_bh(page);
    }
    super::tick();
    page
}

/// Pin the folio of a cached page and make the page up to date.
fn pin_cached(ino: &Inode, index: usize, cur: usize) {
    let pfn = pfn_of(cur);
    let head = head_of(pfn);
    lru_unlink(head);
    lru_push_head(head);
    let h = desc(head);
    h.pins = h.pins.checked_add(1).expect("page cache: pin count overflow");
    let d = desc(pfn);
    if d.flags & F_UPTODATE == 0 {
        fill(cur, ino.content, index);
        d.flags |= F_UPTODATE;
        pc().s.misses += 1;
    }
}

/// Page `index` of the open file `f`, read through the cache and pinned
/// (unpin with `put`).
pub fn get(f: &File, index: usize) -> usize {
    let _g = fslock::lock();
    // SAFETY: an open file holds its inode (the shrinker skips it, the
    // teardown comes after the last close); fs lock held.
    let ino = unsafe { &mut *f.inode };
    if index >= ino.npages as usize {
        super::broken("page cache: index past the inode:", index);
    }
    // index < npages (asserted).
    let cur = ino.page(index);
    if cur != 0 {
        let fresh = desc(pfn_of(cur)).flags & F_UPTODATE != 0;
        pin_cached(ino, index, cur);
        if fresh {
            pc().s.hits += 1;
        }
        return cur;
    }
    add_folio(ino, index, false)
}

/// A new page of the open file `f` to be written (dirty, pinned); the
/// caller writes all of it before `put`.
pub fn write_begin(f: &File, index: usize) -> usize {
    let _g = fslock::lock();
    // SAFETY: as in `get`.
    let ino = unsafe { &mut *f.inode };
    if index >= ino.npages as usize {
        super::broken("page cache: index past the inode:", index);
    }
    // index < npages (asserted).
    let cur = ino.page(index);
    if cur == 0 {
        return add_folio(ino, index, true);
    }
    let pfn = pfn_of(cur);
    let head = head_of(pfn);
    let h = desc(head);
    h.pins = h.pins.checked_add(1).expect("page cache: pin count overflow");
    h.flags |= F_FOLIO_DIRTY;
    let d = desc(pfn);
    d.flags |= F_UPTODATE;
    if d.flags & F_DIRTY == 0 {
        d.flags |= F_DIRTY;
        pc().s.dirty += 1;
    }
    // Pinned above: reclaim inside this allocation leaves the folio alone.
    attach_bh(cur);
    cur
}

pub fn put(addr: usize) {
    let _g = fslock::lock();
    let h = desc(head_of(pfn_of(addr)));
    h.pins = h.pins.checked_sub(1).expect("page cache: put of an unpinned page");
}

/// Write back the dirty pages of the folio at `head`.
fn writeback(head: u32) {
    let h = desc(head);
    if h.flags & F_FOLIO_DIRTY == 0 {
        return;
    }
    h.flags &= !F_FOLIO_DIRTY;
    for pfn in head..head + folio_pages(head) {
        let d = desc(pfn);
        if d.flags & F_DIRTY == 0 {
            continue;
        }
        let ino = vfs::inode(d.ino);
        let addr = addr_of_pfn(pfn);
        if !verify(addr, ino.content, d.index as usize) {
            println!("wl-error page cache: dirty page {} of inode {} does not hold what was written", d.index, d.ino);
            pc().s.corrupt += 1;
        }
        d.flags &= !F_DIRTY;
        ino.written += 1;
        let s = &mut pc().s;
        s.dirty -= 1;
        s.writebacks += 1;
    }
}

/// Write back and free the folio at `head`; returns its pages.
fn evict(head: u32) -> usize {
    writeback(head);
    lru_unlink(head);
    let n = folio_pages(head);
    let ino = vfs::inode(desc(head).ino);
    for pfn in head..head + n {
        let d = desc(pfn);
        let addr = addr_of_pfn(pfn);
        // A cached page's descriptor records its index, which is < npages.
        debug_assert!(ino.page(d.index as usize) == addr);
        ino.set_page(d.index as usize, 0);
        d.flags = 0;
        detach_bh(pfn);
    }
    ino.cached -= n;
    pc().s.nr -= n as usize;
    buddy::free_pages(addr_of_pfn(head), n.trailing_zeros() as usize);
    n as usize
}

/// Reclaim at least `n` pages (whole folios) from the coldest unpinned
/// folios, or what there is; returns how many pages.
pub fn reclaim(n: usize) -> usize {
    let _g = fslock::lock();
    let mut done = 0;
    let mut scanned = 0;
    let limit = pc().s.nr;
    let lru_pages = limit;
    while done < n && scanned < limit {
        let t = pc().tail;
        if t == NONE {
            break;
        }
        scanned += 1;
        if desc(t).pins != 0 {
            lru_unlink(t);
            lru_push_head(t);
            continue;
        }
        done += evict(t);
    }
    pc().s.reclaimed += done as u64;
    // Slab reclaim in proportion (profile build): the vfs shrinker.
    vfs::shrink_for(done, lru_pages);
    done
}

/// Flusher: write back the oldest dirty folios while above the dirty limit.
pub fn balance_dirty() {
    let _g = fslock::lock();
    let s = &pc().s;
    if s.dirty <= s.dirty_limit {
        return;
    }
    let target = s.dirty_limit / 2;
    let mut pfn = pc().tail;
    while pfn != NONE && pc().s.dirty > target {
        let d = desc(pfn);
        let prev = d.prev;
        if d.flags & F_FOLIO_DIRTY != 0 && d.pins == 0 {
            writeback(pfn);
        }
        pfn = prev;
    }
}

/// Drop every cached page of an inode (writing back dirty ones).
pub fn drop_inode(ino: &mut Inode) {
    let _g = fslock::lock();
    for i in 0..ino.npages as usize {
        // i < npages.
        let a = ino.page(i);
        if a != 0 {
            evict(head_of(pfn_of(a)));
        }
    }
}

/// Write back and drop everything, then free the descriptor table.
pub fn shutdown() {
    let _g = fslock::lock();
    while pc().tail != NONE {
        let t = pc().tail;
        desc(t).pins = 0;
        evict(t);
    }
    let p = pc();
    for c in &CHUNKS[..p.nchunks] {
        TablePages::free(c.swap(0, Relaxed));
    }
    p.nchunks = 0;
    if let Some(k) = p.bh_cache.take() {
        for i in 0..p.bh_chunks {
            // SAFETY: the chunk table holds bh_chunks page addresses (init).
            TablePages::free(unsafe { *p.bh_table.add(i) });
        }
        buddy::free_pages(p.bh_table as usize, p.bh_table_order);
        crate::mm::slab::drain_all();
        if !mem::destroy_cache(k) {
            super::fail("page cache: buffer_head cache still has objects (leak)");
        }
    }
}

/// Profile build: a buffer_head (104 bytes, as ext4's) for a page written
/// through the cache, found through a per-frame table (struct page's
/// `private`) and freed when the page is evicted. The page's folio must
/// be pinned (the allocation may reclaim).
fn attach_bh(addr: usize) {
    let Some(k) = pc().bh_cache else { return };
    let pfn = pfn_of(addr) as usize;
    let slot = bh_slot(pfn);
    // SAFETY: bh_slot returns this frame's entry in a table page.
    if unsafe { *slot } != 0 {
        return;
    }
    let bh = mem::cache_alloc(k) as *mut u64;
    // SAFETY: a fresh BH_SIZE object (13 words); the entry as above (table
    // pages stay until shutdown).
    unsafe {
        core::ptr::write_bytes(bh as *mut u8, 0, BH_SIZE);
        bh.write(addr as u64);
        bh.add(1).write(pfn as u64);
        *bh_slot(pfn) = bh as usize;
    }
    pc().s.buffer_heads += 1;
}

fn detach_bh(pfn: u32) {
    let Some(k) = pc().bh_cache else { return };
    let slot = bh_slot(pfn as usize);
    // SAFETY: this frame's entry in a table page.
    let bh = unsafe { core::mem::replace(&mut *slot, 0) };
    if bh != 0 {
        mem::cache_free(k, bh as *mut u8);
    }
}

fn bh_slot(pfn: usize) -> *mut usize {
    let p = pc();
    let per = PAGE_SIZE / 8;
    if pfn / per >= p.bh_chunks {
        super::broken("page cache: no buffer_head entry for frame", pfn);
    }
    // SAFETY: the table holds bh_chunks zeroed pages of `per` entries each.
    unsafe { (*p.bh_table.add(pfn / per) as *mut usize).add(pfn % per) }
}

/// Frame-descriptor table bytes (kept out of the "tracked" figures: whole pages).
pub fn table_bytes() -> usize {
    let _g = fslock::lock();
    pc().nchunks * PAGE_SIZE
}
