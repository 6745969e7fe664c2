//! kasan-symbolize: turn the code addresses of a KASAN report from any
//! kernel's log into function and file:line, using the kernel ELF's DWARF
//! (the `addr2line` crate) and symbol table (`object`). Build with
//! `--features tools`.
//!
//! ```text
//! kasan-symbolize <kernel ELF> ADDR...        hex return addresses
//! kasan-symbolize <kernel ELF> < log.txt      annotate the reports of a log
//! ```
//!
//! Addresses are taken as return addresses (as reports print them): the
//! call site is looked up at `addr - 1`. In a report, a frame
//! ` name+0xoff/0xsize` is resolved through the ELF's symbol table (the
//! folded names reports print, disambiguated by size; a stripped ELF's
//! `.ksyms` table otherwise), and a raw address (a frame ` 0x21ccb1`, a
//! title `in 0x21ccb1`: a kernel without symbols) as is when it falls in
//! the ELF's code. Other lines pass unchanged. Each resolved frame is
//! printed with its inline chain, innermost first:
//!
//! ```text
//!  kmalloc_oob_right+0x1b0/0x334
//!     = ffffffff80213ab0 hybrid_guest::kasan_suite::wr8 at tests/guest/src/kasan_suite.rs:98
//!       (inlined into) hybrid_guest::kasan_suite::kmalloc_oob_right at tests/guest/src/kasan_suite.rs:125
//! ```

use hybrid_shadow::ksyms::{Table, HEADER};
use std::io::{BufRead, Write};
use std::process::ExitCode;

/// One function of the guest's `.ksyms` table.
struct Sym {
    addr: u64,
    size: u64,
    folded: String,
}

/// The function name a report prints for a demangled `name`
/// (`hybrid_shadow::ksyms::fold`, bytes outside `[A-Za-z0-9_]` as `_`).
fn fold(name: &str) -> String {
    hybrid_shadow::ksyms::fold(name.as_bytes())
        .iter()
        .map(|&c| if c.is_ascii_alphanumeric() || c == b'_' { c as char } else { '_' })
        .collect()
}

/// The function symbols of the ELF's own symbol table (any kernel).
fn elf_symbols(elf: &[u8]) -> (Vec<Sym>, Vec<(u64, u64)>) {
    use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
    let Ok(file) = object::File::parse(elf) else { return (vec![], vec![]) };
    let syms = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| {
            let name = format!("{:#}", rustc_demangle::demangle(s.name().ok()?));
            Some(Sym { addr: s.address(), size: s.size(), folded: fold(&name) })
        })
        .collect();
    let text = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    (syms, text)
}

/// The `.ksyms` table written into the ELF (`kasan-ksyms`, the guest
/// driver), read by the one parser, `hybrid_shadow::ksyms::Table` (the
/// occurrence of its header that starts the longest table: the header
/// string also appears in the code). Called at most once per run: the
/// table's bytes are leaked, as `Table` borrows them for good.
fn ksyms(elf: &[u8]) -> Vec<Sym> {
    let elf: &'static [u8] = Box::leak(elf.to_vec().into_boxed_slice());
    let mut best = vec![];
    let mut from = 0;
    while let Some(p) = elf[from..].windows(HEADER.len()).position(|w| w == HEADER) {
        let pos = from + p;
        let syms: Vec<Sym> = Table::new(&elf[pos..]).map_or(vec![], |t| {
            t.symbols()
                .map(|k| Sym { addr: k.addr as u64, size: k.size as u64, folded: fold(&String::from_utf8_lossy(k.name)) })
                .collect()
        });
        if syms.len() > best.len() {
            best = syms;
        }
        from = pos + HEADER.len();
    }
    best
}

/// Every defined symbol of the ELF with an address (assembly labels
/// included: an entry trampoline has no DWARF and no size), demangled, in
/// address order: the last resort for an address nothing else names.
fn labels(elf: &[u8]) -> Vec<(u64, String)> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Ok(file) = object::File::parse(elf) else { return vec![] };
    let mut v: Vec<(u64, String)> = file
        .symbols()
        // In a section (object's is_definition leaves out unsized labels).
        .filter(|s| s.section_index().is_some() && s.address() != 0 && !matches!(s.kind(), SymbolKind::Section | SymbolKind::File))
        .filter_map(|s| Some((s.address(), format!("{:#}", rustc_demangle::demangle(s.name().ok()?)))))
        .collect();
    v.sort();
    v
}

/// `name+0xoff` of the nearest label at or below `pc` (within 64 KiB).
fn nearest_label(labels: &[(u64, String)], pc: u64) -> Option<String> {
    let i = labels.partition_point(|l| l.0 <= pc).checked_sub(1)?;
    let (a, name) = &labels[i];
    (pc - a < 0x10000).then(|| format!("{name}+{:#x}", pc - a))
}

fn describe(loader: &addr2line::Loader, labels: &[(u64, String)], ret: u64, out: &mut impl Write) -> std::io::Result<bool> {
    let pc = ret.wrapping_sub(1);
    let mut first = true;
    let mut found = false;
    if let Ok(mut frames) = loader.find_frames(pc) {
        while let Ok(Some(f)) = frames.next() {
            if f.function.is_none() && f.location.is_none() {
                continue; // no DWARF here (assembly): the symbol table below
            }
            let func = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok().map(|c| c.into_owned()))
                .unwrap_or_else(|| "??".into());
            let loc = f
                .location
                .as_ref()
                .map(|l| format!("{}:{}", l.file.unwrap_or("??"), l.line.unwrap_or(0)))
                .unwrap_or_else(|| "??:0".into());
            if first {
                writeln!(out, "    = {ret:016x} {func} at {loc}")?;
            } else {
                writeln!(out, "      (inlined into) {func} at {loc}")?;
            }
            first = false;
            found = true;
        }
    }
    if !found {
        let sym = loader
            .find_symbol(pc)
            .map(|s| s.to_string())
            .or_else(|| nearest_label(labels, pc))
            .unwrap_or_else(|| "??".into());
        writeln!(out, "    = {ret:016x} {sym} at ??:0")?;
    }
    Ok(found)
}

/// ` name+0xoff/0xsize` anywhere in a line.
fn frame_of(line: &str) -> Option<(&str, u64, u64)> {
    let t = line.trim_start();
    let t = t.strip_prefix("BUG: KASAN: ").map_or(t, |r| r.split_once(" in ").map_or(r, |x| x.1));
    let (name, rest) = t.split_once("+0x")?;
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return None;
    }
    let (off, rest) = rest.split_once("/0x")?;
    let size: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    Some((name, u64::from_str_radix(off, 16).ok()?, u64::from_str_radix(&size, 16).ok()?))
}

/// A raw code address a report prints when the kernel has no symbols: a
/// frame line that is one hex address, or a title `... in 0x21ccb1`. Taken
/// only if it falls in one of the ELF's code sections (`text`).
fn raw_address(line: &str, text: &[(u64, u64)]) -> Option<u64> {
    let t = line.trim();
    let t = t.strip_prefix("BUG: KASAN: ").map_or(Some(t), |r| r.split_once(" in ").map(|x| x.1))?;
    let t = t.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    if h.is_empty() || h.len() > 16 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let a = u64::from_str_radix(h, 16).ok()?;
    text.iter().any(|&(s, e)| s < a && a <= e).then_some(a)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 || args[1] == "-h" || args[1] == "--help" {
        eprintln!("usage: kasan-symbolize <kernel ELF> [hex return address...]   (no address: read a report on stdin)");
        return ExitCode::from(2);
    }
    let path = &args[1];
    let loader = match addr2line::Loader::new(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kasan-symbolize: cannot load {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let elf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kasan-symbolize: read {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let labels = labels(&elf);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.len() > 2 {
        let mut ok = true;
        for a in &args[2..] {
            let Ok(addr) = u64::from_str_radix(a.trim_start_matches("0x"), 16) else {
                eprintln!("kasan-symbolize: not a hex address: {a}");
                return ExitCode::from(2);
            };
            let _ = writeln!(out, "{addr:#x}");
            ok &= describe(&loader, &labels, addr, &mut out).unwrap_or(false);
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let (mut syms, text) = elf_symbols(&elf);
    if syms.is_empty() {
        syms = ksyms(&elf);
    }
    if syms.is_empty() {
        eprintln!("kasan-symbolize: {path} has neither a symbol table nor a .ksyms table; only raw addresses resolve");
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(out, "{line}");
        let addr = if let Some((name, off, size)) = frame_of(&line) {
            syms.iter()
                .filter(|s| s.folded == name)
                .min_by_key(|s| (s.size != size, s.addr))
                .map(|s| s.addr + off)
        } else {
            raw_address(&line, &text)
        };
        if let Some(a) = addr {
            let _ = describe(&loader, &labels, a, &mut out);
        }
    }
    ExitCode::SUCCESS
}
