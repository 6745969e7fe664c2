//! Symbolizer. The linker script reserves `.ksyms` (KSYMS_SIZE bytes,
//! starting with the marker "KSYMS-RESERVED-v1\n"). After linking,
//! tests/guest_run.sh writes a text table over it (in the ELF file):
//!     "KSYMS1\n" then sorted lines "<addr hex> <size hex> <demangled name>\n", then NUL.
//! Names are folded at print time to their last path segment (generic
//! arguments and hashes dropped, closures named after their function), so
//! frames print as `name+0xoff/0xsize`, which syzkaller's parser accepts.
use core::fmt;

extern "C" {
    static __ksyms_start: u8;
    static __ksyms_end: u8;
}

fn table() -> Option<&'static [u8]> {
    // SAFETY: the linker script brackets the `.ksyms` room with these two
    // symbols, in the loaded image and never written at run time (the
    // table is written into the ELF file before boot): a valid, immutable
    // byte range for the kernel's lifetime.
    unsafe {
        let s = core::ptr::addr_of!(__ksyms_start);
        let e = core::ptr::addr_of!(__ksyms_end);
        let len = e as usize - s as usize;
        let t = core::slice::from_raw_parts(s, len);
        if !t.starts_with(b"KSYMS1\n") {
            return None;
        }
        Some(&t[7..])
    }
}

pub fn available() -> bool {
    table().is_some()
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(d as u64)?;
    }
    Some(v)
}

#[derive(Clone, Copy)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
    /// Demangled full name.
    pub name: &'static [u8],
}

impl Symbol {
    pub fn folded(&self) -> Folded {
        Folded(self.name)
    }
}

/// The symbols of table `t`, in address order (malformed lines skipped).
fn symbols(t: &'static [u8]) -> impl Iterator<Item = Symbol> {
    t.split(|&c| c == b'\n')
        .take_while(|line| !line.is_empty() && line[0] != 0)
        .filter_map(|line| {
            let mut it = line.splitn(3, |&c| c == b' ');
            let (a, s, name) = (it.next()?, it.next()?, it.next()?);
            Some(Symbol { addr: hex(a)?, size: hex(s)?, name })
        })
}

/// Call `f` for every symbol of the table, in address order.
pub fn for_each(f: impl FnMut(Symbol)) {
    if let Some(t) = table() {
        symbols(t).for_each(f);
    }
}

/// Find the function containing `pc`. Symbols without an ELF size (asm
/// labels, some library symbols) extend to the next symbol.
pub fn lookup(pc: u64) -> Option<Symbol> {
    let t = table()?;
    let mut sized: Option<Symbol> = None;
    let mut last: Option<Symbol> = None;
    for Symbol { addr, size, name: n } in symbols(t) {
        if addr > pc {
            if sized.is_some() {
                return sized;
            }
            return last
                .filter(|l| l.size == 0 && (addr - l.addr <= 0x10000 || pc - l.addr < 0x1000))
                .map(|l| Symbol { size: if addr - l.addr <= 0x10000 { addr - l.addr } else { 0 }, ..l });
        }
        if size > 0 && pc < addr + size {
            sized = Some(Symbol { addr, size, name: n });
        }
        last = Some(Symbol { addr, size, name: n });
    }
    sized
}

/// A demangled path folded to its last meaningful segment, printed with
/// every byte outside `[A-Za-z0-9_]` replaced by `_`.
pub struct Folded(pub &'static [u8]);

impl Folded {
    /// Byte range of the last segment of the name.
    pub fn segment(&self) -> &'static [u8] {
        fold(self.0)
    }
}

impl fmt::Display for Folded {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for &c in fold(self.0) {
            let c = if c.is_ascii_alphanumeric() || c == b'_' { c } else { b'_' };
            fmt::Write::write_char(f, c as char)?;
        }
        Ok(())
    }
}

/// Last path segment outside `<...>`, skipping `{{closure}}`-like and hash segments.
pub fn fold(name: &'static [u8]) -> &'static [u8] {
    // Collect the starts/ends of top-level `::` separated segments.
    let mut segs: [(usize, usize); 32] = [(0, 0); 32];
    let mut nseg = 0;
    let mut depth = 0i32;
    let mut start = 0;
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'<' => depth += 1,
            b'>' if depth > 0 => depth -= 1,
            b':' if depth == 0 && i + 1 < name.len() && name[i + 1] == b':' => {
                if nseg == segs.len() {
                    segs.copy_within(1.., 0);
                    nseg -= 1;
                }
                segs[nseg] = (start, i);
                nseg += 1;
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if nseg == segs.len() {
        segs.copy_within(1.., 0);
        nseg -= 1;
    }
    segs[nseg] = (start, name.len());
    nseg += 1;
    for k in (0..nseg).rev() {
        let (s, e) = segs[k];
        let seg = &name[s..e];
        let is_hash = seg.len() == 17 && seg[0] == b'h' && seg[1..].iter().all(|c| c.is_ascii_hexdigit());
        if seg.is_empty() || seg[0] == b'{' || seg[0] == b'<' || is_hash {
            continue;
        }
        // Drop generic arguments and trailing junk: `foo<T>` -> `foo`.
        let end = seg.iter().position(|&c| c == b'<').unwrap_or(seg.len());
        if end > 0 {
            return &seg[..end];
        }
    }
    name
}

/// Display an address as `name+0xoff/0xsize`, or the raw address.
pub struct Sym(pub u64);

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match lookup(self.0) {
            Some(s) => write!(f, "{}+{:#x}/{:#x}", s.folded(), self.0 - s.addr, s.size),
            None => write!(f, "{:#018x}", self.0),
        }
    }
}

/// Display a return address (from a stack walk) as `name+0xoff/0xsize`: the
/// function is looked up at `ret - 1` (a call may be a function's last
/// instruction), the offset printed is that of `ret` itself, as Linux does.
pub struct Ret(pub u64);

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match lookup(self.0.wrapping_sub(1)) {
            Some(s) => write!(f, "{}+{:#x}/{:#x}", s.folded(), self.0 - s.addr, s.size),
            None => write!(f, "{:#018x}", self.0),
        }
    }
}

pub fn print_symbol(pc: u64) {
    crate::print!("{}", Sym(pc));
}
