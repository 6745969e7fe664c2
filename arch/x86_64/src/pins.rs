//! Pinned shadow ranges: tables covering them are never freed or re-shared.
//!
//! ```text
//!   shadow:  |----- shared -----|== pinned (RAM shadow) ==|---- shared ----|
//!   PTs:                         [PT'][PT'][PT'][PT'][PT']   private, kept
//! ```
//!
//! Boot pre-allocates private PTs for the shadow of RAM and pins it, so a
//! later single-page remap there never allocates a page table. Ranges are
//! kept rounded out to 2 MiB (one PT) and merged when they touch.

/// Maximum number of disjoint pinned ranges.
pub(crate) const MAX_PINS: usize = 16;
/// Pins are rounded out to this granule (the span of one PT).
const GRANULE: usize = 2 << 20;

/// A small set of disjoint `[start, end)` ranges.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pins {
    ranges: [(usize, usize); MAX_PINS],
    len: usize,
}

impl Pins {
    /// Add `[start, end)` rounded out to 2 MiB; merges with touching ranges.
    /// Returns `false` (and changes nothing) when the set is full.
    pub(crate) fn add(&mut self, start: usize, end: usize) -> bool {
        let mut s = start & !(GRANULE - 1);
        let mut e = end.checked_next_multiple_of(GRANULE).unwrap_or(usize::MAX);
        if s >= e {
            return true;
        }
        // Absorb every range that overlaps or touches [s, e).
        let mut i = 0;
        let mut kept = self.len;
        while i < kept {
            let (a, b) = self.ranges[i];
            if a <= e && s <= b {
                s = s.min(a);
                e = e.max(b);
                kept -= 1;
                self.ranges.swap(i, kept);
            } else {
                i += 1;
            }
        }
        if kept == MAX_PINS {
            // Only possible when nothing was absorbed: unchanged.
            return false;
        }
        self.ranges[kept] = (s, e);
        self.len = kept + 1;
        true
    }

    /// Whether `[start, end)` intersects a pinned range.
    pub(crate) fn intersects(&self, start: usize, end: usize) -> bool {
        self.ranges[..self.len]
            .iter()
            .any(|&(a, b)| a < end && start < b)
    }

    /// The pinned ranges.
    pub(crate) fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_round() {
        let mut p = Pins::default();
        assert!(p.add(GRANULE + 5, GRANULE + 6));
        assert_eq!(p.ranges(), &[(GRANULE, 2 * GRANULE)]);
        assert!(p.add(3 * GRANULE, 4 * GRANULE));
        assert_eq!(p.ranges().len(), 2);
        assert!(p.add(2 * GRANULE, 3 * GRANULE)); // touches both
        assert_eq!(p.ranges(), &[(GRANULE, 4 * GRANULE)]);
        assert!(p.intersects(4 * GRANULE - 1, 4 * GRANULE));
        assert!(!p.intersects(4 * GRANULE, 5 * GRANULE));
        assert!(!p.intersects(0, GRANULE));
    }

    #[test]
    fn full() {
        let mut p = Pins::default();
        for i in 0..MAX_PINS {
            assert!(p.add(i * 4 * GRANULE, i * 4 * GRANULE + 1));
        }
        assert!(!p.add(1000 * GRANULE, 1001 * GRANULE));
        assert_eq!(p.ranges().len(), MAX_PINS);
        // Absorbed into an existing range: still fine.
        assert!(p.add(1, 2));
        // Bridging two ranges frees a slot.
        assert!(p.add(0, 5 * GRANULE));
        assert_eq!(p.ranges().len(), MAX_PINS - 1);
    }

    #[test]
    fn top_of_address_space() {
        let mut p = Pins::default();
        assert!(p.add(usize::MAX - 4095, usize::MAX));
        assert!(p.intersects(usize::MAX - 1, usize::MAX));
    }
}
