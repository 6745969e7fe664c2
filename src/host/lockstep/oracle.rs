//! The byte-level oracle: what an access to each byte of a model kernel's
//! address space must give, kept from the operations alone (never read
//! back from the runtime under test).
//!
//! ```text
//!  interval map  start -> (end, Byte)        (disjoint; later writes win)
//!  not in the map: image bytes Valid (unregistered image memory is fine),
//!                  vmalloc bytes Bad(vmalloc-out-of-bounds),
//!                  direct-map bytes Bad(type unknown: free, slab internals)
//!  outside the covered range: Linux's wild-access types
//! ```

use crate::layout::Layout;
use crate::mapper::PAGE_SIZE;
use crate::report::BugType;
use crate::shadow::GRANULE;
use std::collections::BTreeMap;
use std::vec::Vec;

/// What an access to one byte must give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byte {
    /// Accessible: never reported.
    Valid,
    /// Poisoned: always reported, as this type when the oracle knows it.
    Bad(Option<BugType>),
}

/// Expected byte states of one kernel's address space.
pub struct Oracle {
    map: BTreeMap<usize, (usize, Byte)>,
    layout: Layout,
}

impl Oracle {
    /// Nothing allocated yet in a kernel with this layout.
    #[must_use]
    pub fn new(layout: Layout) -> Self {
        Oracle { map: BTreeMap::new(), layout }
    }

    /// Bytes `[start, end)` now read as `b`.
    pub fn set(&mut self, start: usize, end: usize, b: Byte) {
        if start >= end {
            return;
        }
        // Cut the intervals that straddle either end, then drop those inside.
        for at in [start, end] {
            if let Some((&s, &(e, old))) = self.map.range(..at).next_back() {
                if e > at {
                    self.map.insert(s, (at, old));
                    self.map.insert(at, (e, old));
                }
            }
        }
        let inside: Vec<usize> = self.map.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.map.remove(&s);
        }
        self.map.insert(start, (end, b));
    }

    /// `[start, start + size)` valid and the rest of `[start, end)` poisoned
    /// as `kind` (a slot, pages, a vmalloc area or a stack buffer with its
    /// redzone). The bytes after `size` in its last granule report the
    /// code of the granule after it, so `kind` only if that one is in too.
    pub fn object(&mut self, start: usize, size: usize, end: usize, kind: BugType) {
        self.set(start, start + size, Byte::Valid);
        let known = start + size.next_multiple_of(GRANULE) < end;
        self.set(start + size, end, Byte::Bad(known.then_some(kind)));
    }

    /// The state of `addr` and the end of the run of bytes that share it.
    fn run(&self, addr: usize) -> (Byte, usize) {
        if let Some((_, &(e, b))) = self.map.range(..=addr).next_back().filter(|(_, &(e, _))| e > addr) {
            return (b, e);
        }
        let l = &self.layout;
        let next = self.map.range(addr..).next().map_or(usize::MAX, |(&s, _)| s);
        let (b, region_end) = if l.image.contains(addr) {
            (Byte::Valid, l.image.end)
        } else if l.vmalloc.contains(addr) {
            (Byte::Bad(Some(BugType::VmallocOutOfBounds)), l.vmalloc.end)
        } else {
            (Byte::Bad(None), l.direct_map.end.max(addr + 1))
        };
        (b, next.min(region_end))
    }

    /// The state of one byte.
    #[must_use]
    pub fn byte(&self, addr: usize) -> Byte {
        self.run(addr).0
    }

    /// What a `size`-byte access at `addr` must give: `Ok`, or a report
    /// of the given type (`None`: reported, type not predicted).
    pub fn expect(&self, addr: usize, size: usize) -> Result<(), Option<BugType>> {
        if size == 0 {
            return Ok(());
        }
        let Some(end) = addr.checked_add(size) else { return Err(Some(BugType::OutOfBounds)) };
        let l = &self.layout;
        if !l.covered.contains_range(addr, size) {
            return Err(Some(if addr < PAGE_SIZE {
                BugType::NullPtrDeref
            } else if addr < l.user_end {
                BugType::UserMemoryAccess
            } else {
                BugType::WildMemoryAccess
            }));
        }
        let mut at = addr;
        while at < end {
            match self.run(at) {
                (Byte::Valid, e) => at = e,
                (Byte::Bad(kind), _) => return Err(kind),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Region;

    #[test]
    fn later_writes_win_and_runs_split() {
        let dm = Region::new(0x10_0000, 0x10_0000);
        let layout = Layout {
            offset: 0,
            direct_map: dm,
            vmalloc: Region::new(dm.end, 0x1000),
            image: Region::new(dm.end + 0x1000, 0x1000),
            covered: Region { start: dm.start, end: dm.end + 0x2000 },
            user_end: dm.start,
        };
        let mut o = Oracle::new(layout);
        let p = dm.start + 0x100;
        o.object(p, 13, p + 32, BugType::SlabOutOfBounds);
        assert_eq!(o.expect(p, 13), Ok(()));
        assert_eq!(o.expect(p + 8, 6), Err(Some(BugType::SlabOutOfBounds)));
        assert_eq!(o.expect(p - 1, 2), Err(None), "unknown direct-map byte");
        o.set(p + 4, p + 6, Byte::Bad(None));
        assert_eq!(o.expect(p, 4), Ok(()));
        assert_eq!(o.expect(p + 3, 2), Err(None));
        assert_eq!(o.expect(p + 6, 7), Ok(()), "the split interval keeps its tail");
        o.object(p, 16, p + 16, BugType::SlabOutOfBounds);
        assert_eq!(o.expect(p, 16), Ok(()));
        assert_eq!(o.byte(p + 16), Byte::Bad(Some(BugType::SlabOutOfBounds)));
        assert_eq!(o.expect(layout.image.start, 0x1000), Ok(()));
        assert_eq!(o.expect(layout.vmalloc.start + 8, 1), Err(Some(BugType::VmallocOutOfBounds)));
        assert_eq!(o.expect(layout.image.end - 4, 8), Err(Some(BugType::WildMemoryAccess)));
        assert_eq!(o.expect(8, 1), Err(Some(BugType::NullPtrDeref)));
        assert_eq!(o.expect(usize::MAX, 2), Err(Some(BugType::OutOfBounds)));
        // a partial last granule with nothing after it in the object
        o.object(p, 13, p + 16, BugType::SlabOutOfBounds);
        assert_eq!(o.expect(p + 13, 1), Err(None));
    }
}
