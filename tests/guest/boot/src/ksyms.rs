//! Symbolizer. The linker script reserves `.ksyms` (KSYMS_SIZE bytes,
//! starting with the marker "KSYMS-RESERVED-v1\n"). After linking, the
//! guest driver writes the table over it, in a copy of the ELF file
//! (`hybrid_shadow::ksyms::embed`); reading it is `hybrid_shadow::ksyms::Table`,
//! the parser every kernel that adopts the crate uses.
//! Names are folded at print time to their last path segment (generic
//! arguments and hashes dropped, closures named after their function), so
//! frames print as `name+0xoff/0xsize`, which syzkaller's parser accepts.
use core::fmt;

pub use hybrid_shadow::ksyms::fold;
use hybrid_shadow::ksyms::{KSym, Table};

extern "C" {
    static __ksyms_start: u8;
    static __ksyms_end: u8;
}

fn table() -> Option<Table> {
    // SAFETY: the linker script brackets the `.ksyms` room with these two
    // symbols, in the loaded image and never written at run time (the
    // table is written into the ELF file before boot): a valid, immutable
    // byte range for the kernel's lifetime.
    let t = unsafe {
        let s = core::ptr::addr_of!(__ksyms_start);
        let e = core::ptr::addr_of!(__ksyms_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    };
    Table::new(t)
}

pub fn available() -> bool {
    table().is_some()
}

/// One function of the table.
#[derive(Clone, Copy)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
    /// Demangled full name.
    pub name: &'static [u8],
}

impl From<KSym> for Symbol {
    fn from(s: KSym) -> Self {
        Symbol { addr: s.addr as u64, size: s.size as u64, name: s.name }
    }
}

impl Symbol {
    pub fn folded(&self) -> Folded {
        Folded(self.name)
    }
}

/// Call `f` for every symbol of the table, in address order.
pub fn for_each(f: impl FnMut(Symbol)) {
    if let Some(t) = table() {
        t.symbols().map(Symbol::from).for_each(f);
    }
}

/// Find the function containing `pc` ([`Table::lookup`]).
pub fn lookup(pc: u64) -> Option<Symbol> {
    table()?.lookup(pc as usize).map(Symbol::from)
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
