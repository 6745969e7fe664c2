//! Quarantine: freed slab objects wait here, poisoned, before the slab may
//! hand their slots out again, so a use-after-free hits poison instead of a
//! new object.
//!
//! ```text
//!   free ──► [tail ... head] ──(bytes > limit)──► release list ──► kernel frees
//!             FIFO linked through ObjMeta::qnext     (quarantine_pop)
//! ```
//!
//! The lists are intrusive (links live in each object's metadata), so the
//! quarantine allocates nothing. Objects are handed back to the kernel one at
//! a time through the release list, never by a callback, so the kernel may
//! call other hooks while it frees them.

use crate::cache::{read_meta_at, write_meta_at};

/// An intrusive FIFO of metadata addresses.
#[derive(Default)]
struct List {
    head: usize,
    tail: usize,
    len: usize,
}

impl List {
    /// # Safety
    ///
    /// `meta` must be the metadata of a quarantined object not on any list.
    unsafe fn push(&mut self, meta: usize) {
        // SAFETY: the caller guarantees `meta` is valid; `tail` is on this list.
        unsafe {
            let mut m = read_meta_at(meta);
            m.qnext = 0;
            write_meta_at(meta, m);
            if self.tail != 0 {
                let mut t = read_meta_at(self.tail);
                t.qnext = meta;
                write_meta_at(self.tail, t);
            } else {
                self.head = meta;
            }
        }
        self.tail = meta;
        self.len += 1;
    }

    /// # Safety
    ///
    /// Every metadata address on the list must still be valid.
    unsafe fn pop(&mut self) -> Option<usize> {
        if self.head == 0 {
            return None;
        }
        let meta = self.head;
        // SAFETY: `head` is on the list, so valid by the caller's contract.
        self.head = unsafe { read_meta_at(meta) }.qnext;
        if self.head == 0 {
            self.tail = 0;
        }
        self.len -= 1;
        Some(meta)
    }
}

/// The quarantine.
pub struct Quarantine {
    queue: List,
    release: List,
    bytes: usize,
    limit: usize,
}

impl Quarantine {
    /// A quarantine holding at most `limit` bytes of objects.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Quarantine { queue: List::default(), release: List::default(), bytes: 0, limit }
    }

    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Objects held (not counting the release list).
    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len
    }

    /// True when nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.len == 0
    }

    /// Add a freed object of `size` bytes.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a freed object whose slab stays allocated
    /// until the object leaves through [`Self::pop`].
    pub unsafe fn push(&mut self, meta: usize, size: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.queue.push(meta) };
        self.bytes += size;
    }

    /// The next object the kernel must really free: from the release list,
    /// else the oldest one if the quarantine is over its limit (or `all`).
    /// `size_of` gives an object's byte size from its metadata address.
    ///
    /// # Safety
    ///
    /// All metadata addresses on the lists must be valid.
    pub unsafe fn pop(&mut self, all: bool, size_of: impl Fn(usize) -> usize) -> Option<usize> {
        // SAFETY: forwarded contract.
        if let Some(m) = unsafe { self.release.pop() } {
            return Some(m);
        }
        if self.bytes > self.limit || all {
            // SAFETY: forwarded contract.
            let m = unsafe { self.queue.pop() }?;
            self.bytes -= size_of(m);
            return Some(m);
        }
        None
    }

    /// Put an object [`Self::pop`] just returned on the release list, for
    /// the next `pop` to return first (its bytes are no longer counted).
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of an object `pop` returned, on no list.
    pub unsafe fn defer(&mut self, meta: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.release.push(meta) };
    }

    /// Move every object for which `matches` holds to the release list
    /// (cache shutdown). Returns how many moved.
    ///
    /// # Safety
    ///
    /// All metadata addresses on the lists must be valid.
    pub unsafe fn evict_where(
        &mut self,
        matches: impl Fn(usize) -> bool,
        size_of: impl Fn(usize) -> usize,
    ) -> usize {
        let mut keep = List::default();
        let mut moved = 0;
        // SAFETY: every address popped was on the list, hence valid.
        unsafe {
            while let Some(m) = self.queue.pop() {
                if matches(m) {
                    self.bytes -= size_of(m);
                    self.release.push(m);
                    moved += 1;
                } else {
                    keep.push(m);
                }
            }
        }
        self.queue = keep;
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjMeta;
    extern crate std;
    use std::vec::Vec;

    #[test]
    fn fifo_limit_and_eviction() {
        let mut metas: Vec<ObjMeta> = (0..6).map(|i| ObjMeta { cache: i % 2, ..ObjMeta::EMPTY }).collect();
        let addr = |i: usize, m: &Vec<ObjMeta>| &m[i] as *const ObjMeta as usize;
        let addrs: Vec<usize> = (0..6).map(|i| addr(i, &metas)).collect();
        let mut q = Quarantine::new(250);
        let size = |_m: usize| 100;
        // SAFETY: the metadata lives in `metas`, alive for the whole test.
        unsafe {
            for &a in &addrs[..3] {
                q.push(a, 100);
            }
            assert_eq!(q.bytes(), 300);
            assert_eq!(q.pop(false, size), Some(addrs[0]));
            assert_eq!(q.pop(false, size), None);
            for &a in &addrs[3..] {
                q.push(a, 100);
            }
            let cache_of = |m: usize| read_meta_at(m).cache;
            // objects 1..=5 queued; odd ones are cache 1
            assert_eq!(q.evict_where(|m| cache_of(m) == 1, size), 3);
            assert_eq!(q.bytes(), 200);
            assert_eq!(q.pop(false, size), Some(addrs[1]));
            assert_eq!(q.pop(false, size), Some(addrs[3]));
            assert_eq!(q.pop(false, size), Some(addrs[5]));
            assert_eq!(q.pop(false, size), None);
            assert_eq!(q.pop(true, size), Some(addrs[2]));
            assert_eq!(q.pop(true, size), Some(addrs[4]));
            assert_eq!(q.pop(true, size), None);
            assert_eq!(q.bytes(), 0);
        }
        metas.clear();
    }
}
