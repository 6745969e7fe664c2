//! The runtime's own heap ([`crate::heap`]: `Kasan::heap_init`,
//! `heap_alloc`, `heap_free`) in both model kernels: handed the same range
//! after the image (the kernels' `extra` bytes, [`super::Setup::heap`]),
//! driven with any size and alignment, frees of any pointer and accesses
//! around its objects, against the oracle.
//!
//! ```text
//!  extra range: [heap: page table | slabs, page-backed objects, free pages][covered gap]
//!  before heap_init: all of it a covered gap (valid, no report)
//!  heap_alloc  ──► same pointer in both (or null), aligned, inside the
//!                  heap, after its table, overlapping no live object;
//!                  null only when not set up, a bad alignment, too large,
//!                  or (if nothing is live or quarantined) never
//!  heap_free   ──► live start: freed; quarantined start: double-free;
//!                  interior or outside the heap: invalid-free
//!  reports     ──► the same text in both (addresses as offsets in the slot)
//!  finish      ──► one object of every page but the table fits, is valid,
//!                  frees; the region's shadow pages are all that is private
//! ```
//!
//! A heap allocation that reclaims (the quarantine shrank) may have let
//! any quarantined object go, the kernel's too: the oracle forgets their
//! report types then, as after a drain.

use super::{Kind, Lockstep, Object, Op, Target};
use crate::cache::slot_size_for;
use crate::heap::{large_span, HeapError, HEAP_CLASSES};
use crate::hooks::{Ip, Size};
use crate::host::sim::SimKernel;
use crate::layout::{Region, BLOCK_SIZE};
use crate::mapper::PAGE_SIZE;
use crate::region::RegionError;
use crate::report::{Bug, BugType};
use std::string::String;
use std::vec::Vec;

/// Alignment of the heap's slab objects (above it: whole pages).
const CLASS_ALIGN: usize = 16;

/// The heap as the driver knows it.
#[derive(Default)]
pub(super) struct KHeap {
    /// The range handed over in `full`, once `heap_init` took it.
    range: Option<Region>,
    /// Private shadow pages the heap's region took in (`full`, `hybrid`).
    region_pages: (usize, usize),
    /// Freed heap objects (start, span) certainly still in quarantine.
    quarantined: Vec<(usize, usize)>,
}

impl KHeap {
    /// The quarantine may have let its objects go.
    pub(super) fn released(&mut self) {
        self.quarantined.clear();
    }
}

/// Where an `Op::HeapInit` puts the heap: the extra range's start
/// (mostly), a page into it (unaligned), the image (overlap).
fn init_start(k: &SimKernel, at: u8) -> usize {
    match at % 8 {
        6 => k.extra().start + PAGE_SIZE,
        7 => k.kasan.layout().image.start,
        _ => k.extra().start,
    }
}

/// Pages of the heap's own page table (4 bytes per page).
fn table_pages(len: usize) -> usize {
    (len / PAGE_SIZE * 4).div_ceil(PAGE_SIZE)
}

impl Lockstep {
    /// Whether live object `o` is a heap object.
    pub(super) fn is_heap(o: &Object) -> bool {
        matches!(o.kind, Kind::Heap | Kind::HeapPages)
    }

    /// Forget the reports printed so far (their texts are not compared).
    fn discard_logs(&self) {
        self.full.take_log();
        self.hybrid.take_log();
    }

    /// The reports printed since [`Lockstep::discard_logs`] read the same
    /// in both kernels, addresses taken as offsets in each one's slot.
    fn same_logs(&self, op: &Op) {
        let (f, h) = (self.full.take_log(), self.hybrid.take_log());
        let (nf, nh) = (normalize(&self.full, &f), normalize(&self.hybrid, &h));
        assert_eq!(nf, nh, "{op:?}: full and hybrid print different reports");
    }

    pub(super) fn heap_init(&mut self, at: u8, len: usize, op: &Op) {
        let (fs, hs) = (init_start(&self.full, at), init_start(&self.hybrid, at));
        let covered_end = self.full.kasan.layout().covered.end;
        let image = self.full.kasan.layout().image;
        let want = if self.kheap.range.is_some() {
            Err(HeapError::AlreadyInit)
        } else if !fs.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
            Err(HeapError::Unaligned)
        } else if len < 2 * BLOCK_SIZE {
            Err(HeapError::TooSmall)
        } else {
            match fs.checked_add(len) {
                None => Err(HeapError::Region(RegionError::Empty)),
                Some(end) if end > covered_end => Err(HeapError::Region(RegionError::OutsideCovered)),
                Some(_) if image.contains(fs) => Err(HeapError::Region(RegionError::Overlap)),
                Some(_) => Ok(()),
            }
        };
        let before = (self.full.kasan.stats().ondemand_live_pages, self.hybrid.kasan.stats().ondemand_live_pages);
        // SAFETY: a range the kernels' host spaces map read-write after
        // the image (`extra`), used by nothing else, or one the runtime
        // refuses before touching it (unaligned, too small, past the
        // covered range, over the image: `want` says which, and it is
        // asserted below).
        let (f, h) = unsafe { (self.full.kasan.heap_init(fs, Size(len)), self.hybrid.kasan.heap_init(hs, Size(len))) };
        assert_eq!((f, h), (want, want), "{op:?}");
        if f.is_ok() {
            let after = (self.full.kasan.stats().ondemand_live_pages, self.hybrid.kasan.stats().ondemand_live_pages);
            self.kheap.region_pages = (after.0 - before.0, after.1 - before.1);
            let range = Region::new(fs, len);
            assert_eq!(self.full.kasan.heap_range(), Some(range), "{op:?}");
            // Table pages and free pages: poisoned, as types the oracle
            // does not follow (slabs come and go under them).
            self.oracle.set(range.start, range.end, super::oracle::Byte::Bad(None));
            self.kheap.range = Some(range);
        }
    }

    /// The object a successful `heap_alloc(size, align)` makes: its
    /// kind, object size (what a slab object's slot is cut for) and span
    /// (slot, or pages with redzone and metadata); `None` when it cannot
    /// be made in a heap of `len` bytes.
    fn heap_object(size: usize, align: usize, len: usize) -> Option<(Kind, usize, usize)> {
        if !align.is_power_of_two() || align > len {
            return None;
        }
        let class = (align <= CLASS_ALIGN).then(|| HEAP_CLASSES.iter().position(|&c| size <= c)).flatten();
        match class {
            Some(c) => Some((Kind::Heap, HEAP_CLASSES[c], slot_size_for(HEAP_CLASSES[c], CLASS_ALIGN))),
            None if size > len => None,
            None => {
                let span = large_span(size);
                (span <= len - table_pages(len) * PAGE_SIZE).then_some((Kind::HeapPages, size, span))
            }
        }
    }

    pub(super) fn heap_alloc(&mut self, size: usize, align: usize, op: &Op) {
        self.discard_logs();
        let q0 = self.full.kasan.stats().quarantine_bytes;
        let f = self.full.kasan.heap_alloc(Size(size), align, Ip(self.full.ip())) as usize;
        let h = self.hybrid.kasan.heap_alloc(Size(size), align, Ip(self.hybrid.ip())) as usize;
        let (f, h) = ((f != 0).then_some(f), (h != 0).then_some(h));
        self.same_place(op, f, h);
        self.same_logs(op);
        let q1 = (self.full.kasan.stats().quarantine_bytes, self.hybrid.kasan.stats().quarantine_bytes);
        assert_eq!(q1.0, q1.1, "{op:?}: quarantined bytes (full, hybrid)");
        if q1.0 < q0 {
            // Reclaimed: heap objects left the quarantine, and a kernel
            // object may wait on its release list for the next pump.
            self.quarantine_released();
            self.raw.uncertain();
        }
        self.full.pump_quarantine();
        self.hybrid.pump_quarantine();
        let Some(range) = self.kheap.range else {
            assert_eq!(f, None, "{op:?}: a heap before heap_init");
            return;
        };
        let size = size.max(1);
        let Some((kind, object_size, span)) = Self::heap_object(size, align, range.len()) else {
            assert_eq!(f, None, "{op:?}: cannot be made in a heap of {:#x} bytes", range.len());
            return;
        };
        let Some((fa, ha)) = f.zip(h) else {
            // Nothing live or quarantined: reclaiming leaves every page
            // but the table free, so what fits must be made.
            let nothing = q0 == 0 && !self.live.iter().any(Self::is_heap);
            let first = (range.start + table_pages(range.len()) * PAGE_SIZE).next_multiple_of(align.max(PAGE_SIZE));
            let fits = kind == Kind::Heap || first + span <= range.end;
            assert!(!(nothing && fits), "{op:?}: null from an empty heap of {:#x} bytes", range.len());
            return;
        };
        assert!(fa.is_multiple_of(align), "{op:?}: {fa:#x} misaligned");
        let table_end = range.start + table_pages(range.len()) * PAGE_SIZE;
        assert!(fa >= table_end && fa + span <= range.end, "{op:?}: {fa:#x}+{span:#x} outside the heap's pages");
        if kind == Kind::HeapPages {
            assert!(fa.is_multiple_of(PAGE_SIZE), "{op:?}: a page-backed object off a page");
        }
        if let Some(o) = self.live.iter().find(|o| Self::is_heap(o) && fa < o.f + o.span && o.f < fa + span) {
            panic!("{op:?}: {fa:#x}+{span:#x} overlaps live {o:?}");
        }
        self.add(Object { f: fa, h: ha, size, kind, object_size, span });
    }

    /// `heap_free` in both kernels, then what a kernel does after a free:
    /// take what the quarantine releases.
    pub(super) fn heap_free_both(&mut self, fa: usize, ha: usize) -> (Result<(), Bug>, Result<(), Bug>) {
        let f = self.full.kasan.heap_free(fa, Ip(self.full.ip()));
        let h = self.hybrid.kasan.heap_free(ha, Ip(self.hybrid.ip()));
        self.full.pump_quarantine();
        self.hybrid.pump_quarantine();
        (f, h)
    }

    /// What `heap_free(fa)` of no live heap object's start reports, when
    /// the driver knows: invalid-free outside the heap or inside an object
    /// it knows, double-free of an object certainly in quarantine.
    fn heap_free_bug(&self, fa: usize) -> Option<BugType> {
        if !self.kheap.range.is_some_and(|r| r.contains(fa)) {
            return Some(BugType::InvalidFree);
        }
        if self.kheap.quarantined.iter().any(|&(s, _)| s == fa) {
            return Some(BugType::DoubleFree);
        }
        let inside = |s: usize, span: usize| fa > s && fa < s + span;
        let known = self.live.iter().any(|o| Self::is_heap(o) && inside(o.f, o.span))
            || self.kheap.quarantined.iter().any(|&(s, span)| inside(s, span));
        known.then_some(BugType::InvalidFree)
    }

    pub(super) fn heap_free(&mut self, at: Target, op: &Op) {
        let Some((fa, ha)) = self.resolve(at) else { return };
        let target = self.live_at(fa).filter(|&i| Self::is_heap(&self.live[i]));
        let kind = self.heap_free_bug(fa);
        self.discard_logs();
        let (f, h) = self.heap_free_both(fa, ha);
        self.same_logs(op);
        self.free_outcome(op, target, kind, f, h);
    }

    /// A checked access (mostly in and around the heap), report texts compared.
    pub(super) fn heap_access(&mut self, at: Target, size: usize, write: bool, op: &Op) {
        self.discard_logs();
        self.access(at, size, write, op);
        self.same_logs(op);
    }

    /// Freed heap object `o` waits in the quarantine: a slab object reads
    /// as slab-use-after-free (its slot's redzone as before), a
    /// page-backed one as use-after-free, all of its pages.
    pub(super) fn heap_quarantined(&mut self, o: &Object) {
        use super::oracle::Byte;
        let end = o.f + o.span;
        if o.kind == Kind::Heap {
            let body = o.object_size.next_multiple_of(crate::shadow::GRANULE);
            self.oracle.set(o.f, o.f + body, Byte::Bad(Some(BugType::SlabUseAfterFree)));
            self.oracle.set(o.f + body, end, Byte::Bad(Some(BugType::SlabOutOfBounds)));
        } else {
            self.oracle.set(o.f, end, Byte::Bad(Some(BugType::UseAfterFree)));
        }
        self.kheap.quarantined.push((o.f, o.span));
        self.quarantined.push((o.f, o.span));
    }

    /// After everything was freed and drained: one object of every page
    /// but the table fits at the first page after it (no page leaked, the
    /// empty slabs go back), is valid, frees; what stays private in each
    /// kernel is the heap region's shadow.
    pub(super) fn heap_teardown(&mut self) {
        if let Some(range) = self.kheap.range {
            let table_end = range.start + table_pages(range.len()) * PAGE_SIZE;
            let size = range.end - table_end - crate::cache::META_SIZE;
            let op = Op::HeapAlloc { size, align: PAGE_SIZE };
            self.apply(op);
            let i = self.live_at(table_end).unwrap_or_else(|| panic!("{op:?}: the freed heap has no room for all its pages"));
            let (fa, ha) = (self.live[i].f, self.live[i].h);
            assert_eq!((self.full.write(fa, size), self.hybrid.write(ha, size)), (Ok(()), Ok(())), "{op:?}: all of it valid");
            self.apply(Op::Free { pick: i as u16 });
            self.apply(Op::Drain);
        }
        for (k, pages) in [(&self.full, self.kheap.region_pages.0), (&self.hybrid, self.kheap.region_pages.1)] {
            let s = k.kasan.stats();
            let mode = k.kasan.config().mode;
            assert_eq!(s.ondemand_live_pages, pages, "{mode:?}: private shadow pages besides the heap region's");
        }
    }
}

/// `text` with every address near `k`'s slot (16 hex digits, or `0x` and
/// hex, within 8 GiB of its covered range's start) as its offset there, so two kernels' reports compare.
fn normalize(k: &SimKernel, text: &str) -> String {
    let covered = k.kasan.layout().covered;
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let word = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let prefixed = word && b[i..].starts_with(b"0x");
        let digits = if prefixed { i + 2 } else { i };
        let run = b[digits..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let end = digits + run;
        let bounded = end == b.len() || !b[end].is_ascii_alphanumeric();
        if word && bounded && (prefixed || run == 16) && run > 0 {
            let v = usize::from_str_radix(&text[digits..end], 16).unwrap_or(0);
            // Each kernel's slot is 16 GiB: anything within 8 GiB of its
            // start is the same target in both.
            if v.abs_diff(covered.start) < 8 << 30 {
                out.push_str(&std::format!("<{:+x}>", v.wrapping_sub(covered.start) as isize));
            } else {
                out.push_str(&text[i..end]);
            }
            i = end;
        } else {
            let n = b[i..].iter().take_while(|c| c.is_ascii_alphanumeric()).count().max(1);
            out.push_str(&text[i..i + n]);
            i += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_follow_the_heaps_classes_and_pages() {
        let len = 1 << 20;
        assert_eq!(Lockstep::heap_object(1, 8, len).map(|o| o.0), Some(Kind::Heap));
        assert_eq!(Lockstep::heap_object(2048, 16, len).map(|o| o.1), Some(2048));
        assert_eq!(Lockstep::heap_object(2049, 8, len).map(|o| o.0), Some(Kind::HeapPages));
        assert_eq!(Lockstep::heap_object(8, 32, len).map(|o| (o.0, o.2)), Some((Kind::HeapPages, PAGE_SIZE)));
        assert!(Lockstep::heap_object(8, 3, len).is_none());
        assert!(Lockstep::heap_object(8, 2 * len, len).is_none());
        assert!(Lockstep::heap_object(usize::MAX, 8, len).is_none());
        assert!(Lockstep::heap_object(len - PAGE_SIZE, 8, len).is_none(), "no room beside the table and metadata");
        assert_eq!(table_pages(len), 1);
    }
}
