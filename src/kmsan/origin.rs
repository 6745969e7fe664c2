//! Origins: where an uninitialized value came from.
//!
//! An origin is a `u32` kept for every 4-byte slot of data (and passed
//! along with values by the compiler). It names a stack-depot entry and
//! carries two flags and a chain depth:
//!
//! ```text
//!  bit  31..28   27    26    25..0
//!       depth    uaf   cut   depot handle (0 = no origin)
//! ```
//!
//! A depot entry is either a plain stack (where the value was created:
//! an allocation, a free, a poisoning) or, when its first word is one of
//! the magic words below, a link of a chain:
//!
//! ```text
//!  [CHAIN_MAGIC, previous origin, frames...]   "Uninit was stored to memory at:" frames
//!  [ALLOCA_MAGIC, name pointer, name length, pc] "Local variable <name> created at:"
//! ```
//!
//! Each store of an uninitialized value adds a link ([`MAX_DEPTH`] at most,
//! as in Linux); past that the origin is kept as it is and marked `cut`, so
//! the report can say the chain was shortened.
//!
//! The runtime makes origins from the current stack ([`Kmsan::save_stack`]
//! and the crate's `new_origin`, `chain`, `alloca_origin`); this file also
//! holds that part.


use crate::depot::{MAX_FRAMES, NO_STACK};
use crate::kmsan::runtime::{KInner, Kmsan};
use crate::mapper::ShadowMapper;
use crate::platform::Platform;
use crate::stats::Stats;

/// An origin value (0: none).
pub type Origin = u32;

/// No origin known.
pub const NO_ORIGIN: Origin = 0;
/// Links a chain holds at most before it is cut (Linux's default).
pub const MAX_DEPTH: u32 = 7;

const HANDLE_MASK: u32 = (1 << 26) - 1;
const CUT: u32 = 1 << 26;
const UAF: u32 = 1 << 27;
const DEPTH_SHIFT: u32 = 28;

/// First word of a chain link entry (not a code address).
pub(crate) const CHAIN_MAGIC: usize = 0x6b6d_7361_6e5f_6368; // "kmsan_ch"
/// First word of a local-variable entry.
pub(crate) const ALLOCA_MAGIC: usize = 0x6b6d_7361_6e5f_616c; // "kmsan_al"

/// Build an origin from a depot handle and its flags.
#[must_use]
#[inline]
pub const fn make(handle: u32, depth: u32, uaf: bool) -> Origin {
    if handle == 0 || handle > HANDLE_MASK {
        return NO_ORIGIN;
    }
    let depth = if depth > 15 { 15 } else { depth };
    handle | (depth << DEPTH_SHIFT) | if uaf { UAF } else { 0 }
}

/// The depot handle of `o`.
#[must_use]
#[inline]
pub const fn handle(o: Origin) -> u32 {
    o & HANDLE_MASK
}

/// Chain links above the creating stack.
#[must_use]
#[inline]
pub const fn depth(o: Origin) -> u32 {
    o >> DEPTH_SHIFT
}

/// Whether the value was created by freeing memory.
#[must_use]
#[inline]
pub const fn is_uaf(o: Origin) -> bool {
    o & UAF != 0
}

/// Whether a link was dropped because the chain was at [`MAX_DEPTH`].
#[must_use]
#[inline]
pub const fn is_cut(o: Origin) -> bool {
    o & CUT != 0
}

/// `o` marked as having lost a link.
#[must_use]
#[inline]
pub const fn with_cut(o: Origin) -> Origin {
    if o == NO_ORIGIN {
        o
    } else {
        o | CUT
    }
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    /// Save the current stack in the depot (0: not stored).
    pub fn save_stack(&self) -> u32 {
        if !self.on() {
            return 0;
        }
        let mut inner = self.inner.lock();
        handle(self.new_origin(&mut inner, false))
    }

    /// The frames of a stack saved with [`Kmsan::save_stack`].
    #[must_use]
    pub fn fetch_stack(&self, h: u32) -> crate::depot::Trace {
        self.inner.lock().depot.fetch(h)
    }

    /// Save the current stack as an origin.
    pub(crate) fn new_origin(&self, inner: &mut KInner<M>, uaf: bool) -> Origin {
        let mut buf = [0usize; MAX_FRAMES];
        let n = self.platform.stack_trace(&mut buf).min(MAX_FRAMES);
        let h = inner.depot.save(&buf[..n]);
        if h == NO_STACK && n != 0 {
            Stats::bump(&self.stats.depot_dropped);
        }
        make(h, 0, uaf)
    }

    /// `o` with one more link: the current stack stored where it was
    /// written. At [`MAX_DEPTH`] the chain is cut (marked).
    pub(crate) fn chain(&self, inner: &mut KInner<M>, o: Origin) -> Origin {
        if o == NO_ORIGIN {
            return o;
        }
        let d = depth(o);
        if d >= MAX_DEPTH {
            return with_cut(o);
        }
        let mut buf = [0usize; MAX_FRAMES];
        buf[0] = CHAIN_MAGIC;
        buf[1] = o as usize;
        let n = self.platform.stack_trace(&mut buf[2..]).min(MAX_FRAMES - 2);
        let h = inner.depot.save(&buf[..n + 2]);
        if h == NO_STACK {
            Stats::bump(&self.stats.depot_dropped);
            return o;
        }
        make(h, d + 1, is_uaf(o))
    }

    /// The origin of a local variable named `name` created by the code at
    /// `pc`, called from `pc2` (0 when unknown).
    pub(crate) fn alloca_origin(&self, inner: &mut KInner<M>, name: &'static [u8], pc: usize, pc2: usize) -> Origin {
        let words = [ALLOCA_MAGIC, name.as_ptr() as usize, name.len(), pc, pc2];
        let h = inner.depot.save(&words);
        make(h, 0, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_roundtrip() {
        let o = make(1234, 3, true);
        assert_eq!((handle(o), depth(o), is_uaf(o), is_cut(o)), (1234, 3, true, false));
        let c = with_cut(o);
        assert_eq!((handle(c), depth(c), is_uaf(c), is_cut(c)), (1234, 3, true, true));
        assert_eq!(make(0, 1, true), NO_ORIGIN);
        assert_eq!(with_cut(NO_ORIGIN), NO_ORIGIN);
    }
}
