//! An embedded symbol table, for kernels that have none: titles and traces
//! print `name+0xoff/0xsize` (what syzkaller's parser wants) instead of
//! raw addresses.
//!
//! The kernel reserves room for the table in its image ([`Reserved`], in a
//! section named `.ksyms`); after linking, the host tool `kasan-ksyms`
//! (`cargo run --features tools --bin kasan-ksyms -- <linked ELF> <out ELF>`)
//! writes the ELF's function symbols into that room, in a copy of the
//! file. The kernel's [`Platform::symbolize`](crate::Platform::symbolize)
//! then asks the [`Table`]. A kernel booted without the table written in
//! (the reservation still holds its marker) just prints raw addresses,
//! which `kasan-symbolize` resolves from a log.
//!
//! ```ignore
//! #[used]
//! #[no_mangle]
//! #[link_section = ".ksyms"]
//! static KSYMS: hybrid_shadow::ksyms::Reserved<{ 1 << 20 }> = hybrid_shadow::ksyms::Reserved::new();
//! // in symbolize(pc, f): KSYMS.table().is_some_and(|t| t.symbolize(pc, f))
//! ```
//!
//! With feature `tools`, [`embed`] is that writer as a library (the tool
//! and the test guest's build both call it).
//!
//! Format:
//! `"KSYMS1\n"`, then lines `"<addr hex> <size hex> <demangled name>\n"`
//! in address order, then a NUL byte. Before the tool runs, the room starts
//! with [`MARKER`], then `" <capacity hex>\n"` for a [`Reserved`].

use core::cell::UnsafeCell;

#[cfg(feature = "tools")]
pub mod embed;

use crate::platform::Symbol;

/// What an unwritten reservation starts with.
pub const MARKER: &[u8] = b"KSYMS-RESERVED-v1";
/// What a written table starts with.
pub const HEADER: &[u8] = b"KSYMS1\n";
/// Longest name [`Table::symbolize`] hands out (longer ones are cut).
pub const NAME_MAX: usize = 128;

/// Room for a symbol table of at most `N` bytes in the kernel image,
/// written after linking by `kasan-ksyms`. Declare it as a `static` with
/// `#[used]`, `#[no_mangle]` and `#[link_section = ".ksyms"]`, and keep
/// the section inside the image your linker script loads (`KEEP(*(.ksyms))`).
///
/// Its bytes sit in an [`UnsafeCell`] of an exported static: the compiler
/// may not assume they still hold what [`Reserved::new`] put there, so the
/// table the tool writes into the file is what [`Reserved::table`] reads.
#[repr(transparent)]
pub struct Reserved<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: nothing in the kernel writes the bytes (only the host tool does,
// in the ELF file, before boot); shared reads from any CPU are fine.
unsafe impl<const N: usize> Sync for Reserved<N> {}

impl<const N: usize> Reserved<N> {
    /// The reservation: [`MARKER`], `" <N in hex>\n"`, then zeros.
    #[must_use]
    pub const fn new() -> Self {
        let mut b = [0u8; N];
        let mut i = 0;
        while i < MARKER.len() && i < N {
            b[i] = MARKER[i];
            i += 1;
        }
        if i < N {
            b[i] = b' ';
            i += 1;
        }
        // N in hex, most significant digit first.
        let mut digits = 1;
        while digits < 16 && (N >> (4 * digits)) != 0 {
            digits += 1;
        }
        let mut d = digits;
        while d > 0 && i < N {
            d -= 1;
            let v = (N >> (4 * d)) & 0xf;
            b[i] = if v < 10 { b'0' + v as u8 } else { b'a' + (v - 10) as u8 };
            i += 1;
        }
        if i < N {
            b[i] = b'\n';
        }
        Reserved(UnsafeCell::new(b))
    }

    /// The table `kasan-ksyms` wrote, or `None` (the reservation is unwritten).
    #[inline]
    pub fn table(&'static self) -> Option<Table> {
        // SAFETY: the bytes are never written while the kernel runs (see
        // the `Sync` impl), so a shared borrow of them for 'static is sound.
        let bytes: &'static [u8; N] = unsafe { &*self.0.get() };
        Table::new(bytes)
    }
}

impl<const N: usize> Default for Reserved<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// One function of a [`Table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KSym {
    /// Its first byte.
    pub addr: usize,
    /// Its size (0: unknown, an assembly label).
    pub size: usize,
    /// Demangled full name, as the tool wrote it.
    pub name: &'static [u8],
}

/// A written symbol table.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    lines: &'static [u8],
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0usize;
    for &c in s {
        let d = (c as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(v)
}

impl Table {
    /// The table in `bytes` (starting with [`HEADER`]), or `None`.
    #[must_use]
    pub fn new(bytes: &'static [u8]) -> Option<Table> {
        let lines = bytes.strip_prefix(HEADER)?;
        let end = lines.iter().position(|&c| c == 0).unwrap_or(lines.len());
        Some(Table { lines: &lines[..end] })
    }

    /// Every well-formed entry, in address order.
    pub fn symbols(&self) -> impl Iterator<Item = KSym> {
        self.lines.split(|&c| c == b'\n').filter_map(|line| {
            let mut it = line.splitn(3, |&c| c == b' ');
            let (a, s, name) = (it.next()?, it.next()?, it.next()?);
            Some(KSym { addr: hex(a)?, size: hex(s)?, name })
        })
    }

    /// The function containing `pc`. A symbol without a size (an assembly
    /// label) extends to the next symbol when that is at most 64 KiB away;
    /// farther, only `pc` within its first 4 KiB is its own (size 0).
    #[must_use]
    pub fn lookup(&self, pc: usize) -> Option<KSym> {
        let mut sized: Option<KSym> = None;
        let mut last: Option<KSym> = None;
        for s in self.symbols() {
            if s.addr > pc {
                if sized.is_some() {
                    return sized;
                }
                let near = |l: &KSym| s.addr - l.addr <= 0x10000;
                return last
                    .filter(|l| l.size == 0 && (near(l) || pc - l.addr < 0x1000))
                    .map(|l| KSym { size: if near(&l) { s.addr - l.addr } else { 0 }, ..l });
            }
            if s.size > 0 && pc < s.addr + s.size {
                sized = Some(s);
            }
            last = Some(s);
        }
        sized
    }

    /// What [`Platform::symbolize`](crate::Platform::symbolize) does: pass
    /// the function containing `pc`, its name [`fold`]ed and reduced to
    /// `[A-Za-z0-9_]` (at most [`NAME_MAX`] bytes), to `f`; false if unknown.
    pub fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        let Some(s) = self.lookup(pc) else { return false };
        let mut buf = [0u8; NAME_MAX];
        let name = fold(s.name);
        let n = name.len().min(NAME_MAX);
        for (d, &c) in buf.iter_mut().zip(&name[..n]) {
            *d = if c.is_ascii_alphanumeric() || c == b'_' { c } else { b'_' };
        }
        // Every byte is ASCII by construction.
        let name = core::str::from_utf8(&buf[..n]).unwrap_or("unknown");
        f(Symbol { name, offset: pc - s.addr, size: s.size });
        true
    }
}

/// The last meaningful `::` segment of a demangled path, outside `<...>`:
/// closures (`{{closure}}`) and hashes (`h0123456789abcdef`) are skipped
/// and generic arguments dropped, so `<T as a::B>::f::{{closure}}` is `f`.
#[must_use]
pub fn fold(name: &[u8]) -> &[u8] {
    let mut best: Option<(usize, usize)> = None;
    let (mut depth, mut start, mut i) = (0i32, 0, 0);
    let mut consider = |s: usize, e: usize| {
        let seg = &name[s..e];
        let hash = seg.len() == 17 && seg[0] == b'h' && seg[1..].iter().all(u8::is_ascii_hexdigit);
        let end = seg.iter().position(|&c| c == b'<').unwrap_or(seg.len());
        if !(seg.is_empty() || seg[0] == b'{' || seg[0] == b'<' || hash || end == 0) {
            best = Some((s, s + end));
        }
    };
    while i < name.len() {
        match name[i] {
            b'<' => depth += 1,
            b'>' if depth > 0 => depth -= 1,
            b':' if depth == 0 && name.get(i + 1) == Some(&b':') => {
                consider(start, i);
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    consider(start, name.len());
    best.map_or(name, |(s, e)| &name[s..e])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_rust_paths_to_their_function() {
        assert_eq!(fold(b"minimal_kernel::box_oob_right"), b"box_oob_right");
        assert_eq!(fold(b"<alloc::vec::Vec<T> as core::ops::Drop>::drop"), b"drop");
        assert_eq!(fold(b"a::b::run::{{closure}}"), b"run");
        assert_eq!(fold(b"a::f::h0123456789abcdef"), b"f");
        assert_eq!(fold(b"a::g<u8>"), b"g");
        assert_eq!(fold(b"plain"), b"plain");
    }

    #[test]
    fn reservation_carries_its_capacity_and_is_no_table() {
        static R: Reserved<64> = Reserved::new();
        // SAFETY: test-only read of bytes nothing writes.
        let b = unsafe { &*R.0.get() };
        assert!(b.starts_with(b"KSYMS-RESERVED-v1 40\n"), "{:?}", &b[..24]);
        assert!(R.table().is_none());
    }

    #[test]
    fn looks_up_and_symbolizes_sized_and_unsized_symbols() {
        static T: &[u8] = b"KSYMS1\n1000 20 k::a<T>\n1020 0 asm_label\n1100 10 k::<impl X for Y>::b::{{closure}}\n\0junk";
        let t = Table::new(T).unwrap();
        assert_eq!(t.symbols().count(), 3);
        assert_eq!(t.lookup(0x1005).map(|s| s.addr), Some(0x1000));
        assert_eq!(t.lookup(0x1030).map(|s| (s.addr, s.size)), Some((0x1020, 0xe0)));
        assert_eq!(t.lookup(0x10f0).map(|s| s.addr), Some(0x1020));
        assert_eq!(t.lookup(0x0fff), None);
        assert_eq!(t.lookup(0x1110), None);
        static FAR: &[u8] = b"KSYMS1\n1000 0 entry\n40000 10 f\n\0";
        let t2 = Table::new(FAR).unwrap();
        assert_eq!(t2.lookup(0x1ff0).map(|s| (s.addr, s.size)), Some((0x1000, 0)), "near a far label");
        assert_eq!(t2.lookup(0x3000), None, "past its first 4 KiB");
        let mut got = std::string::String::new();
        assert!(t.symbolize(0x1104, &mut |s| got = std::format!("{}+{:#x}/{:#x}", s.name, s.offset, s.size)));
        assert_eq!(got, "b+0x4/0x10");
        assert!(!t.symbolize(0x10, &mut |_| {}));
    }
}
