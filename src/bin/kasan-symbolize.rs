//! kasan-symbolize: turn the code addresses of a KASAN report from the test
//! guest into function and file:line, using the guest ELF's DWARF
//! (the `addr2line` crate). Build with `--features tools`.
//!
//! ```text
//! kasan-symbolize <guest.ksyms ELF> ADDR...        hex return addresses
//! kasan-symbolize <guest.ksyms ELF> < report.txt   annotate a report
//! ```
//!
//! Addresses are taken as return addresses (as reports print them): the
//! call site is looked up at `addr - 1`. In a report, a frame
//! ` name+0xoff/0xsize` is resolved through the ELF's `.ksyms` table (the
//! folded names the guest prints, disambiguated by size), and every raw
//! `0xffff...` address as is. Each resolved frame is printed with its
//! inline chain, innermost first:
//!
//! ```text
//!  kmalloc_oob_right+0x1b0/0x334
//!     = ffffffff80213ab0 hybrid_guest::kasan_suite::wr8 at tests/guest/src/kasan_suite.rs:98
//!       (inlined into) hybrid_guest::kasan_suite::kmalloc_oob_right at tests/guest/src/kasan_suite.rs:125
//! ```

use std::io::{BufRead, Write};
use std::process::ExitCode;

/// One function of the guest's `.ksyms` table.
struct Sym {
    addr: u64,
    size: u64,
    folded: String,
}

/// Last path segment outside `<...>`, skipping closure and hash segments,
/// with every byte outside `[A-Za-z0-9_]` replaced by `_` (what the guest prints).
fn fold(name: &str) -> String {
    let mut segs = vec![];
    let (mut depth, mut start) = (0i32, 0);
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' => depth += 1,
            b'>' if depth > 0 => depth -= 1,
            b':' if depth == 0 && i + 1 < b.len() && b[i + 1] == b':' => {
                segs.push(&name[start..i]);
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    segs.push(&name[start..]);
    let seg = segs
        .iter()
        .rev()
        .find(|s| {
            let hash = s.len() == 17 && s.starts_with('h') && s[1..].bytes().all(|c| c.is_ascii_hexdigit());
            !s.is_empty() && !s.starts_with('{') && !s.starts_with('<') && !hash
        })
        .map(|s| &s[..s.find('<').unwrap_or(s.len())])
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    seg.bytes().map(|c| if c.is_ascii_alphanumeric() || c == b'_' { c as char } else { '_' }).collect()
}

/// The `.ksyms` table written into the ELF by tests/guest/ksyms.sh (the
/// occurrence of its header that starts the longest table: the header
/// string also appears in the guest's code).
fn ksyms(elf: &[u8]) -> Vec<Sym> {
    let mut best = vec![];
    let mut from = 0;
    while let Some(p) = elf[from..].windows(7).position(|w| w == b"KSYMS1\n") {
        let pos = from + p;
        let end = elf[pos..].iter().position(|&c| c == 0).map_or(elf.len(), |e| pos + e);
        let text = String::from_utf8_lossy(&elf[pos + 7..end]);
        let syms: Vec<Sym> = text
            .lines()
            .map_while(|l| {
                let mut it = l.splitn(3, ' ');
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let size = u64::from_str_radix(it.next()?, 16).ok()?;
                Some(Sym { addr, size, folded: fold(it.next()?) })
            })
            .collect();
        if syms.len() > best.len() {
            best = syms;
        }
        from = pos + 7;
    }
    best
}

fn describe(loader: &addr2line::Loader, ret: u64, out: &mut impl Write) -> std::io::Result<bool> {
    let pc = ret.wrapping_sub(1);
    let mut first = true;
    let mut found = false;
    if let Ok(mut frames) = loader.find_frames(pc) {
        while let Ok(Some(f)) = frames.next() {
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
        let sym = loader.find_symbol(pc).map(|s| s.to_string()).unwrap_or_else(|| "??".into());
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

fn raw_address(line: &str) -> Option<u64> {
    let t = line.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    if h.len() == 16 && h.starts_with("ffffffff8") {
        u64::from_str_radix(h, 16).ok()
    } else {
        None
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 || args[1] == "-h" || args[1] == "--help" {
        eprintln!("usage: kasan-symbolize <guest ELF> [hex return address...]   (no address: read a report on stdin)");
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
            ok &= describe(&loader, addr, &mut out).unwrap_or(false);
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let elf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kasan-symbolize: read {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let syms = ksyms(&elf);
    if syms.is_empty() {
        eprintln!("kasan-symbolize: {path} has no .ksyms table (written by tests/guest/ksyms.sh); only raw addresses resolve");
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
            raw_address(&line)
        };
        if let Some(a) = addr {
            let _ = describe(&loader, a, &mut out);
        }
    }
    ExitCode::SUCCESS
}
