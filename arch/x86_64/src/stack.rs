//! A bounded frame-pointer stack walker (code built with
//! `-Cforce-frame-pointers=yes`).
//!
//! ```text
//!   higher addresses (callers)
//!   +------------------+
//!   | return address   |  rbp1 + 8   -> out[1]
//!   | saved rbp = rbp2 |  rbp1        (caller of the caller)
//!   |   ...locals...   |
//!   | return address   |  rbp0 + 8   -> out[0]
//!   | saved rbp = rbp1 |  rbp0 <----- start here (the current rbp)
//!   +------------------+
//!   lower addresses
//! ```
//!
//! The walk stops at the first record that is not readable (as the
//! caller's predicate says), unaligned, not strictly above the previous one
//! (so a corrupted chain cannot loop), or holds a zero return address; and
//! after `max_depth` frames or when `out` is full. It never reads memory the
//! predicate did not allow.

/// Bytes of a frame record: saved rbp, then the return address.
pub const FRAME_RECORD: usize = 16;

/// Walk the frame-pointer chain starting at `rbp`, writing return addresses
/// (innermost first) into `out`. Returns how many were written
/// (at most `min(max_depth, out.len())`).
///
/// `readable(addr, len)` is asked before every read of a frame record and
/// must answer whether `[addr, addr + len)` lies inside a valid stack.
///
/// # Safety
///
/// Whenever `readable(addr, len)` returns `true`, `[addr, addr + len)` must
/// be readable memory for the duration of the call.
pub unsafe fn walk_frames(
    rbp: usize,
    out: &mut [usize],
    max_depth: usize,
    mut readable: impl FnMut(usize, usize) -> bool,
) -> usize {
    let limit = max_depth.min(out.len());
    let mut n = 0;
    let mut fp = rbp;
    while n < limit {
        if fp == 0 || !fp.is_multiple_of(core::mem::align_of::<usize>()) {
            break;
        }
        if fp.checked_add(FRAME_RECORD).is_none() || !readable(fp, FRAME_RECORD) {
            break;
        }
        let record = fp as *const usize;
        // SAFETY: `readable` vouched for [fp, fp + 16) (caller's contract)
        // and fp is aligned for usize.
        let (saved, ret) = unsafe { (record.read_volatile(), record.add(1).read_volatile()) };
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        if saved <= fp {
            break;
        }
        fp = saved;
    }
    n
}

/// Walk within one stack `[low, high)`: [`walk_frames`] with the predicate
/// "the record lies inside the stack".
///
/// # Safety
///
/// `[low, high)` is readable memory for the duration of the call.
pub unsafe fn walk_stack(rbp: usize, low: usize, high: usize, out: &mut [usize]) -> usize {
    let inside =
        |addr: usize, len: usize| addr >= low && addr.checked_add(len).is_some_and(|e| e <= high);
    // SAFETY: the predicate only admits ranges inside [low, high), readable
    // by the caller's contract.
    unsafe { walk_frames(rbp, out, usize::MAX, inside) }
}

/// The current frame pointer (rbp) of the caller.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[must_use]
pub fn frame_pointer() -> usize {
    let rbp: usize;
    // SAFETY: reads a register; no memory access, no stack use, flags kept.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags));
    }
    rbp
}

/// The return address of the enclosing function (which must not be
/// inlined, and is built with frame pointers): where its caller resumes.
/// The runtime starts stack traces at that frame.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[must_use]
pub fn return_address() -> usize {
    let ip: usize;
    // SAFETY: with frame pointers forced, the enclosing function pushed
    // rbp on entry, so [rbp + 8] is its return address (readable stack).
    unsafe { core::arch::asm!("mov {}, [rbp + 8]", out(reg) ip, options(nostack, readonly, preserves_flags)) };
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack: records at the given word indices, chained upwards.
    struct FakeStack {
        words: [usize; 64],
    }

    impl FakeStack {
        fn new() -> Self {
            FakeStack { words: [0; 64] }
        }
        fn addr(&self, i: usize) -> usize {
            &self.words[i] as *const usize as usize
        }
        fn range(&self) -> (usize, usize) {
            let lo = self.addr(0);
            (lo, lo + 64 * 8)
        }
        /// Record at word `i`: saved rbp -> word `next` (or raw value), return `ret`.
        fn record(&mut self, i: usize, saved: usize, ret: usize) {
            self.words[i] = saved;
            self.words[i + 1] = ret;
        }
    }

    fn walk(s: &FakeStack, start: usize, out: &mut [usize], depth: usize) -> usize {
        let (lo, hi) = s.range();
        // SAFETY: the predicate admits only ranges inside `s.words`.
        unsafe { walk_frames(start, out, depth, |a, l| a >= lo && a + l <= hi) }
    }

    #[test]
    fn follows_chain_to_end() {
        let mut s = FakeStack::new();
        let (a4, a10, a20) = (s.addr(4), s.addr(10), s.addr(20));
        s.record(4, a10, 0x1111);
        s.record(10, a20, 0x2222);
        s.record(20, 0, 0x3333); // outermost: saved rbp 0
        let mut out = [0; 8];
        assert_eq!(walk(&s, a4, &mut out, 8), 3);
        assert_eq!(&out[..3], &[0x1111, 0x2222, 0x3333]);
    }

    #[test]
    fn bounded_by_depth_and_buffer() {
        let mut s = FakeStack::new();
        for i in (0..60).step_by(4) {
            let next = s.addr(i + 4);
            s.record(i, next, 0x100 + i);
        }
        let start = s.addr(0);
        let mut out = [0; 3];
        assert_eq!(walk(&s, start, &mut out, 10), 3);
        let mut out = [0; 16];
        assert_eq!(walk(&s, start, &mut out, 2), 2);
        assert_eq!(&out[..2], &[0x100, 0x104]);
    }

    #[test]
    fn stops_on_broken_chains() {
        let mut s = FakeStack::new();
        let (a4, a8) = (s.addr(4), s.addr(8));
        let mut out = [0; 8];
        // Loop: points back at itself.
        s.record(4, a4, 0x1);
        assert_eq!(walk(&s, a4, &mut out, 8), 1);
        // Points downwards.
        s.record(8, a4, 0x2);
        assert_eq!(walk(&s, a8, &mut out, 8), 1);
        // Points outside the stack: that record is never read.
        s.record(4, 0x1000, 0x3);
        assert_eq!(walk(&s, a4, &mut out, 8), 1);
        // Unaligned.
        s.record(4, a8 + 3, 0x4);
        assert_eq!(walk(&s, a4, &mut out, 8), 1);
        // Record straddling the end of the stack.
        let last = s.addr(63);
        s.record(4, last, 0x5);
        assert_eq!(walk(&s, a4, &mut out, 8), 1);
        // Zero return address ends the walk without being reported.
        s.record(4, a8, 0);
        assert_eq!(walk(&s, a4, &mut out, 8), 0);
        // Start outside / null.
        assert_eq!(walk(&s, 0, &mut out, 8), 0);
        assert_eq!(walk(&s, 0x1000, &mut out, 8), 0);
        assert_eq!(walk(&s, usize::MAX - 7, &mut out, 8), 0);
    }

    #[test]
    fn walk_stack_uses_bounds() {
        let mut s = FakeStack::new();
        let (a0, a6) = (s.addr(0), s.addr(6));
        s.record(0, a6, 0xa);
        s.record(6, usize::MAX & !7, 0xb);
        let (lo, hi) = s.range();
        let mut out = [0; 4];
        // SAFETY: [lo, hi) is `s.words`.
        let n = unsafe { walk_stack(a0, lo, hi, &mut out) };
        assert_eq!(&out[..n], &[0xa, 0xb]);
    }

    #[test]
    fn frame_pointer_reads() {
        // Only checks that the register read works; the value depends on
        // whether the host build keeps frame pointers.
        let _ = frame_pointer();
    }
}
