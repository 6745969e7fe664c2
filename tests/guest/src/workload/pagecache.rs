//! A page cache: page-granular file data, found through the inode's page
//! array, on an LRU list kept in a per-frame descriptor table (like the
//! kernel's `struct page`: whole pages, no slab). Reads that find the page
//! hit; misses read it from "disk" (a deterministic generator). Under memory
//! pressure (free pages below the low watermark, or a failed allocation)
//! the coldest unpinned pages are reclaimed; dirty ones are written back
//! (verified against the disk content) first.
use super::rng::mix;
use super::vfs::{self, Inode};
use crate::mm::{buddy, PAGE_SIZE};
use crate::println;
use guest_boot::paging::virt_to_phys;

const NONE: u32 = u32::MAX;
const DESC_PER_CHUNK: usize = PAGE_SIZE / core::mem::size_of::<Desc>();
const MAX_CHUNKS: usize = 8192; // 8192 * 256 frames = 8 GiB

const F_USED: u16 = 1;
const F_DIRTY: u16 = 2;
const F_PINNED: u16 = 4;

#[derive(Clone, Copy)]
#[repr(C)]
struct Desc {
    prev: u32,
    next: u32,
    ino: u32,
    index: u16,
    flags: u16,
}

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
}

struct Pc {
    head: u32,
    tail: u32,
    nchunks: usize,
    s: Stats,
}

static mut CHUNKS: [usize; MAX_CHUNKS] = [0; MAX_CHUNKS];
static mut PC: Pc = Pc {
    head: NONE,
    tail: NONE,
    nchunks: 0,
    s: Stats { nr: 0, peak: 0, dirty: 0, hits: 0, misses: 0, reclaimed: 0, writebacks: 0, corrupt: 0, low: 0, high: 0, dirty_limit: 0 },
};

fn pc() -> &'static mut Pc {
    unsafe { &mut *core::ptr::addr_of_mut!(PC) }
}

fn desc(pfn: u32) -> &'static mut Desc {
    let p = pfn as usize;
    let chunk = unsafe { CHUNKS[p / DESC_PER_CHUNK] };
    unsafe { &mut *(chunk as *mut Desc).add(p % DESC_PER_CHUNK) }
}

fn pfn_of(addr: usize) -> u32 {
    (virt_to_phys(addr as u64).expect("page cache page without a physical address") / PAGE_SIZE as u64) as u32
}

fn addr_of_pfn(pfn: u32) -> usize {
    guest_boot::paging::phys_to_virt(pfn as u64 * PAGE_SIZE as u64) as usize
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

/// Fill a page with its disk content ("read from disk").
pub fn fill(addr: usize, content: u64, index: usize) {
    let w = addr as *mut u64;
    let base = page_base(content, index);
    for i in 0..PAGE_SIZE / 8 {
        unsafe { w.add(i).write(word_of(base, i)) };
    }
}

/// Whether a page holds its disk content.
pub fn verify(addr: usize, content: u64, index: usize) -> bool {
    let w = addr as *const u64;
    let base = page_base(content, index);
    (0..PAGE_SIZE / 8).all(|i| unsafe { w.add(i).read() } == word_of(base, i))
}

/// Linux's min_free_kbytes = sqrt(16 * lowmem KiB), low = 5/4, high = 3/2 of it.
pub fn init(managed_pages: usize, ram_bytes: u64) {
    let p = pc();
    let max_pfn = (ram_bytes as usize + PAGE_SIZE - 1) / PAGE_SIZE + 256;
    let n = ((max_pfn + DESC_PER_CHUNK - 1) / DESC_PER_CHUNK).min(MAX_CHUNKS);
    for i in 0..n {
        let c = match buddy::alloc_page_zeroed() {
            Some(c) => c,
            None => super::fail("page cache: no memory for the frame descriptors"),
        };
        unsafe { CHUNKS[i] = c };
    }
    p.nchunks = n;
    let kib = managed_pages * (PAGE_SIZE / 1024);
    let min_kib = isqrt(kib * 16).clamp(128, 65536);
    let min_pages = min_kib / 4;
    p.head = NONE;
    p.tail = NONE;
    p.s = Stats {
        nr: 0,
        peak: 0,
        dirty: 0,
        hits: 0,
        misses: 0,
        reclaimed: 0,
        writebacks: 0,
        corrupt: 0,
        low: min_pages * 5 / 4,
        high: min_pages * 3 / 2,
        dirty_limit: (managed_pages / 10).max(64),
    };
}

fn isqrt(x: usize) -> usize {
    let mut r = 0usize;
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

pub fn stats() -> &'static Stats {
    &pc().s
}

pub fn pages() -> usize {
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

fn page_for_cache() -> usize {
    balance();
    loop {
        if let Some(p) = buddy::alloc_pages(0) {
            return p;
        }
        crate::mm::slab::drain_all();
        if reclaim(64) == 0 {
            if let Some(p) = buddy::alloc_pages(0) {
                return p;
            }
            println!("wl-oom what=pagecache size=4096 free={} pagecache={}", buddy::free_page_count() * PAGE_SIZE, pages() * PAGE_SIZE);
            super::fail("out of memory");
        }
    }
}

fn insert(ino: &mut Inode, index: usize, addr: usize, flags: u16) {
    let pfn = pfn_of(addr);
    let d = desc(pfn);
    *d = Desc { prev: NONE, next: NONE, ino: ino.ino, index: index as u16, flags: F_USED | flags };
    lru_push_head(pfn);
    unsafe { *ino.pages.add(index) = addr };
    ino.cached += 1;
    let s = &mut pc().s;
    s.nr += 1;
    s.peak = s.peak.max(s.nr);
    if flags & F_DIRTY != 0 {
        s.dirty += 1;
    }
}

/// Page `index` of `ino`, read through the cache and pinned (unpin with `put`).
pub fn get(ino: &mut Inode, index: usize) -> usize {
    let cur = unsafe { *ino.pages.add(index) };
    if cur != 0 {
        let pfn = pfn_of(cur);
        lru_unlink(pfn);
        lru_push_head(pfn);
        desc(pfn).flags |= F_PINNED;
        pc().s.hits += 1;
        return cur;
    }
    let addr = page_for_cache();
    // The inode may have gained the page meanwhile? Single CPU, no yield in between: no.
    fill(addr, ino.content, index);
    insert(ino, index, addr, F_PINNED);
    pc().s.misses += 1;
    super::tick();
    addr
}

/// A new page of `ino` to be written (dirty, pinned).
pub fn write_begin(ino: &mut Inode, index: usize) -> usize {
    let cur = unsafe { *ino.pages.add(index) };
    if cur != 0 {
        let pfn = pfn_of(cur);
        let d = desc(pfn);
        d.flags |= F_PINNED;
        if d.flags & F_DIRTY == 0 {
            d.flags |= F_DIRTY;
            pc().s.dirty += 1;
        }
        return cur;
    }
    let addr = page_for_cache();
    insert(ino, index, addr, F_PINNED | F_DIRTY);
    super::tick();
    addr
}

pub fn put(addr: usize) {
    desc(pfn_of(addr)).flags &= !F_PINNED;
}

fn writeback(pfn: u32) {
    let d = desc(pfn);
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

fn evict(pfn: u32) {
    let d = *desc(pfn);
    if d.flags & F_DIRTY != 0 {
        writeback(pfn);
    }
    lru_unlink(pfn);
    let ino = vfs::inode(d.ino);
    let addr = addr_of_pfn(pfn);
    unsafe {
        debug_assert!(*ino.pages.add(d.index as usize) == addr);
        *ino.pages.add(d.index as usize) = 0;
    }
    ino.cached -= 1;
    desc(pfn).flags = 0;
    pc().s.nr -= 1;
    buddy::free_pages(addr, 0);
}

/// Reclaim up to `n` of the coldest unpinned pages; returns how many.
pub fn reclaim(n: usize) -> usize {
    let mut done = 0;
    let mut scanned = 0;
    let limit = pc().s.nr;
    while done < n && scanned < limit {
        let t = pc().tail;
        if t == NONE {
            break;
        }
        scanned += 1;
        if desc(t).flags & F_PINNED != 0 {
            lru_unlink(t);
            lru_push_head(t);
            continue;
        }
        evict(t);
        done += 1;
    }
    pc().s.reclaimed += done as u64;
    done
}

/// Flusher: write back the oldest dirty pages while above the dirty limit.
pub fn balance_dirty() {
    let s = &pc().s;
    if s.dirty <= s.dirty_limit {
        return;
    }
    let target = s.dirty_limit / 2;
    let mut pfn = pc().tail;
    while pfn != NONE && pc().s.dirty > target {
        let d = desc(pfn);
        let prev = d.prev;
        if d.flags & F_DIRTY != 0 && d.flags & F_PINNED == 0 {
            writeback(pfn);
        }
        pfn = prev;
    }
}

/// Drop every cached page of an inode (writing back dirty ones).
pub fn drop_inode(ino: &mut Inode) {
    for i in 0..ino.npages as usize {
        let a = unsafe { *ino.pages.add(i) };
        if a != 0 {
            evict(pfn_of(a));
        }
    }
}

/// Write back and drop everything, then free the descriptor table.
pub fn shutdown() {
    while pc().tail != NONE {
        let t = pc().tail;
        desc(t).flags &= !F_PINNED;
        evict(t);
    }
    let p = pc();
    for i in 0..p.nchunks {
        unsafe {
            buddy::free_pages(CHUNKS[i], 0);
            CHUNKS[i] = 0;
        }
    }
    p.nchunks = 0;
}

/// Frame-descriptor table bytes (kept out of the "tracked" figures: whole pages).
pub fn table_bytes() -> usize {
    pc().nchunks * PAGE_SIZE
}
