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
