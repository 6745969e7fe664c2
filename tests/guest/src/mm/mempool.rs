//! Memory pools (Linux's mm/mempool.c): a pool keeps `min_nr` elements in
//! reserve so that an allocation can always make progress. While an
//! element waits in the reserve it is poisoned as freed, as Linux's
//! mempool does with `kasan_mempool_poison_object` /
//! `kasan_mempool_unpoison_object` (and `kasan_mempool_poison_pages` for
//! page pools): a use of a returned element is a use-after-free, returning
//! one twice a double free, returning a pointer that is no element's start
//! an invalid free (reported by the runtime; the pool does not take it).
use crate::kasan_glue;
use crate::mm::{buddy, slab, CacheRef};

/// Where a pool's elements come from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// kmalloc of this many bytes (`mempool_init_kmalloc_pool`): slab
    /// objects, or page-backed above the largest kmalloc cache.
    Kmalloc(usize),
    /// Objects of a named cache (`mempool_init_slab_pool`).
    Slab(CacheRef),
    /// `2^order` pages (`mempool_init_page_pool`).
    Pages(usize),
}

/// Most elements a pool reserves here.
pub const MAX_RESERVE: usize = 8;

/// A memory pool.
pub struct Mempool {
    source: Source,
    min_nr: usize,
    curr_nr: usize,
    elements: [usize; MAX_RESERVE],
}

impl Mempool {
    /// A pool of `min_nr` (at most [`MAX_RESERVE`]) reserved elements from
    /// `source`, all allocated now and poisoned in the reserve.
    pub fn new(source: Source, min_nr: usize) -> Option<Mempool> {
        if min_nr > MAX_RESERVE {
            return None;
        }
        let mut pool = Mempool { source, min_nr, curr_nr: 0, elements: [0; MAX_RESERVE] };
        let ip = crate::mm::caller_ip();
        for _ in 0..min_nr {
            let Some(e) = pool.alloc_element() else {
                pool.exit();
                return None;
            };
            if !pool.add_element(e, ip) {
                pool.free_element(e, ip);
                pool.exit();
                return None;
            }
        }
        Some(pool)
    }

    /// Elements in the reserve now.
    pub fn reserved(&self) -> usize {
        self.curr_nr
    }

    /// `mempool_alloc_preallocated`: an element from the reserve
    /// (unpoisoned for use), or 0 when the reserve is empty.
    pub fn alloc_preallocated(&mut self) -> usize {
        if self.curr_nr == 0 {
            return 0;
        }
        self.remove_element()
    }

    /// `mempool_free`: the element goes back into the reserve when the
    /// reserve is below its minimum (poisoned; reported and not taken if
    /// it is no element's start or already freed), else back to its
    /// allocator.
    #[inline(never)]
    pub fn free(&mut self, element: usize) {
        let ip = crate::mm::caller_ip();
        if element == 0 {
            return;
        }
        if self.curr_nr < self.min_nr {
            self.add_element(element, ip);
            return;
        }
        self.free_element(element, ip);
    }

    /// `mempool_exit`: every reserved element goes back to its allocator.
    pub fn exit(&mut self) {
        let ip = crate::mm::caller_ip();
        while self.curr_nr > 0 {
            let e = self.remove_element();
            self.free_element(e, ip);
        }
    }

    fn alloc_element(&self) -> Option<usize> {
        let p = match self.source {
            Source::Kmalloc(size) => slab::kmalloc(size) as usize,
            Source::Slab(c) => slab::kmem_cache_alloc(c) as usize,
            Source::Pages(order) => buddy::alloc_pages(order)?,
        };
        (p > 16).then_some(p)
    }

    fn free_element(&self, e: usize, ip: usize) {
        match self.source {
            Source::Kmalloc(_) => slab::kfree_ip(e as *const u8, ip),
            Source::Slab(c) => slab::kmem_cache_free(c, e as *mut u8),
            Source::Pages(order) => buddy::free_pages(e, order),
        }
    }

    /// Poison `e` and keep it; false (not kept) when the runtime reported a
    /// bad free, or (without checking) when `e` is no element's start or
    /// already kept.
    fn add_element(&mut self, e: usize, ip: usize) -> bool {
        if self.curr_nr == self.min_nr {
            return false;
        }
        let ok = match self.source {
            Source::Pages(order) => kasan_glue::page_free(e, order as u32, ip),
            Source::Kmalloc(_) | Source::Slab(_) => {
                if let Some((id, first, _, _)) = slab::slab_object_of(e) {
                    kasan_glue::mempool_poison_object(id, first, e, ip)
                } else if let Some((_, order, _)) = slab::large_of(e) {
                    kasan_glue::mempool_poison_large(e, order as u32, ip)
                } else {
                    kasan_glue::bad_free(e, ip, "mempool_free: not an element of this pool");
                    false
                }
            }
        };
        // Without a checking runtime nothing was verified: the pool's own
        // sanity checks keep a bad element out.
        if !ok || !self.element_start(e) || self.elements[..self.curr_nr].contains(&e) {
            return false;
        }
        self.elements[self.curr_nr] = e;
        self.curr_nr += 1;
        true
    }

    fn element_start(&self, e: usize) -> bool {
        match self.source {
            Source::Pages(_) => e.is_multiple_of(buddy::PAGE_SIZE),
            Source::Kmalloc(_) | Source::Slab(_) => {
                slab::slab_object_of(e).is_some_and(|(_, _, start, _)| start == e)
                    || slab::large_of(e).is_some_and(|(base, _, _)| base == e)
            }
        }
    }

    /// Take the newest reserved element out, unpoisoned for use.
    fn remove_element(&mut self) -> usize {
        self.curr_nr -= 1;
        let e = self.elements[self.curr_nr];
        match self.source {
            Source::Pages(order) => kasan_glue::page_alloc(e, order as u32),
            Source::Kmalloc(_) | Source::Slab(_) => {
                if let Some((id, _, _, object_size)) = slab::slab_object_of(e) {
                    let size = if let Source::Kmalloc(n) = self.source { n } else { object_size };
                    kasan_glue::mempool_unpoison_object(id, e, size);
                } else if let Some((base, order, size)) = slab::large_of(e) {
                    kasan_glue::kmalloc_large(base, order as u32, size);
                }
            }
        }
        e
    }
}
