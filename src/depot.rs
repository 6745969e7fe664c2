//! Stack depot: stores each distinct stack trace once and names it by a
//! `u32` handle, so every slab object can carry its alloc and free stacks
//! in 8 bytes.
//!
//! ```text
//!  table (hashbrown, fixed capacity)      pool (words)
//!  hash(frames) ──► handle h ───────────► [h-1]: hash<<32 | len
//!                                          [h..h+len]: return addresses
//! ```
//!
//! Memory is fixed at init: nothing is allocated after boot. When the pool
//! or table is full the depot drops the stack (counted) and returns
//! [`NO_STACK`]; reports then say "(stack is not available)".

use allocator_api2::alloc::{AllocError, Allocator};
use arrayvec::ArrayVec;
use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;
use hashbrown::HashTable;

/// A stored stack; `NO_STACK` means none.
pub type StackHandle = u32;
/// The handle of "no stack recorded".
pub const NO_STACK: StackHandle = 0;
/// Frames kept per stack.
pub const MAX_FRAMES: usize = 16;
/// A captured stack.
pub type Trace = ArrayVec<usize, MAX_FRAMES>;

/// Average frames per stack the pool is sized for.
const AVG_WORDS: usize = 8;

/// Hands out one fixed block of memory, once (the table never grows).
struct FixedAlloc {
    block: NonNull<u8>,
    len: usize,
    taken: Cell<bool>,
}

// SAFETY: the block is owned exclusively by the depot's table; FixedAlloc is
// only used from inside the depot, which is behind the runtime lock.
unsafe impl Send for FixedAlloc {}

// SAFETY: `allocate` returns the block at most once, suitably aligned, and
// never hands out memory it does not own; `deallocate` only marks it free.
unsafe impl Allocator for FixedAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let addr = self.block.as_ptr() as usize;
        let pad = addr.wrapping_neg() & (layout.align() - 1);
        if self.taken.get() || pad + layout.size() > self.len {
            return Err(AllocError);
        }
        self.taken.set(true);
        // SAFETY: pad + size <= len, so the pointer stays inside the block.
        let p = unsafe { self.block.as_ptr().add(pad) };
        let slice = core::ptr::slice_from_raw_parts_mut(p, layout.size());
        NonNull::new(slice).ok_or(AllocError)
    }

    unsafe fn deallocate(&self, _ptr: NonNull<u8>, _layout: Layout) {
        self.taken.set(false);
    }
}

/// The depot.
pub struct StackDepot {
    table: HashTable<StackHandle, FixedAlloc>,
    capacity: usize,
    pool: &'static mut [u64],
    used: usize,
}

fn hash_frames(frames: &[usize]) -> u32 {
    // FNV-1a over the words: cheap and good enough for return addresses.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &f in frames {
        h ^= f as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

impl StackDepot {
    /// Bytes of arena a depot for `stacks` distinct stacks needs.
    #[must_use]
    pub fn bytes_for(stacks: usize) -> usize {
        Self::pool_words(stacks) * 8 + Self::table_bytes(stacks)
    }

    fn pool_words(stacks: usize) -> usize {
        stacks * AVG_WORDS
    }

    fn table_bytes(stacks: usize) -> usize {
        let buckets = (stacks.max(4) * 8 / 7 + 1).next_power_of_two();
        // buckets of u32 + control bytes + one group of trailing control
        // bytes + alignment slack.
        buckets * 5 + 64 + 16
    }

    /// A depot for `stacks` stacks in `mem` (at least [`Self::bytes_for`]).
    ///
    /// Returns `None` when `mem` is too small.
    #[must_use]
    pub fn new(mem: &'static mut [u8], stacks: usize) -> Option<Self> {
        let pool_bytes = Self::pool_words(stacks) * 8;
        if mem.len() < Self::bytes_for(stacks) {
            return None;
        }
        let (pool_mem, table_mem) = mem.split_at_mut(pool_bytes);
        let pad = (pool_mem.as_ptr() as usize).wrapping_neg() & 7;
        let words = (pool_bytes - pad) / 8;
        // SAFETY: the pointer is 8-aligned after `pad`, `words` u64 fit in
        // the exclusively borrowed `pool_mem`, and u8 memory is valid u64s.
        let pool = unsafe {
            core::slice::from_raw_parts_mut(pool_mem.as_mut_ptr().add(pad).cast::<u64>(), words)
        };
        let alloc = FixedAlloc {
            block: NonNull::new(table_mem.as_mut_ptr())?,
            len: table_mem.len(),
            taken: Cell::new(false),
        };
        let mut table = HashTable::new_in(alloc);
        // Nothing is stored yet, so the hasher is never called.
        table.try_reserve(stacks, |_: &StackHandle| 0).ok()?;
        Some(StackDepot { table, capacity: stacks, pool, used: 0 })
    }

    fn frames_at(&self, h: StackHandle) -> &[u64] {
        let i = h as usize - 1;
        let len = (self.pool[i] & 0xffff) as usize;
        &self.pool[i + 1..i + 1 + len]
    }

    /// Store `frames` (deduplicated) and return its handle, or [`NO_STACK`]
    /// when the depot is full or `frames` is empty.
    pub fn save(&mut self, frames: &[usize]) -> StackHandle {
        if frames.is_empty() {
            return NO_STACK;
        }
        let frames = &frames[..frames.len().min(MAX_FRAMES)];
        let hash = hash_frames(frames);
        let pool = &*self.pool;
        let eq = |&h: &StackHandle| {
            let i = h as usize - 1;
            let len = (pool[i] & 0xffff) as usize;
            (pool[i] >> 32) as u32 == hash
                && len == frames.len()
                && pool[i + 1..i + 1 + len].iter().zip(frames).all(|(a, b)| *a == *b as u64)
        };
        if let Some(h) = self.table.find(u64::from(hash), eq) {
            return *h;
        }
        let need = 1 + frames.len();
        if self.table.len() >= self.capacity || self.used + need > self.pool.len() {
            return NO_STACK;
        }
        let i = self.used;
        self.pool[i] = (u64::from(hash) << 32) | frames.len() as u64;
        for (k, f) in frames.iter().enumerate() {
            self.pool[i + 1 + k] = *f as u64;
        }
        self.used += need;
        let h = (i + 1) as StackHandle;
        let pool = &*self.pool;
        self.table.insert_unique(u64::from(hash), h, |&h| u64::from((pool[h as usize - 1] >> 32) as u32));
        h
    }

    /// The frames of `h`; empty for [`NO_STACK`] or a handle never issued.
    #[must_use]
    pub fn fetch(&self, h: StackHandle) -> Trace {
        let mut t = Trace::new();
        if h == NO_STACK || h as usize > self.used {
            return t;
        }
        for &f in self.frames_at(h) {
            t.push(f as usize);
        }
        t
    }

    /// Distinct stacks stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    fn depot(stacks: usize) -> StackDepot {
        let mem = std::boxed::Box::leak(vec![0u8; StackDepot::bytes_for(stacks)].into_boxed_slice());
        StackDepot::new(mem, stacks).expect("depot fits")
    }

    #[test]
    fn dedups_and_fetches() {
        let mut d = depot(64);
        let a = d.save(&[1, 2, 3]);
        let b = d.save(&[1, 2, 4]);
        assert_ne!(a, NO_STACK);
        assert_ne!(a, b);
        assert_eq!(d.save(&[1, 2, 3]), a);
        assert_eq!(d.fetch(a).as_slice(), &[1, 2, 3]);
        assert_eq!(d.fetch(b).as_slice(), &[1, 2, 4]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.save(&[]), NO_STACK);
        assert!(d.fetch(NO_STACK).is_empty());
    }

    #[test]
    fn full_depot_drops_without_breaking() {
        let mut d = depot(8);
        let mut handles = vec![];
        for i in 0..100usize {
            handles.push(d.save(&[i, i + 1]));
        }
        assert_eq!(d.len(), 8);
        assert!(handles[..8].iter().all(|&h| h != NO_STACK));
        assert!(handles[8..].iter().all(|&h| h == NO_STACK));
        for (i, &h) in handles[..8].iter().enumerate() {
            assert_eq!(d.fetch(h).as_slice(), &[i, i + 1]);
        }
    }
}
