//! kasan-ksyms: embed a kernel's symbol table, so that its KASAN reports
//! name functions (`box_oob_right+0x2b/0x90`) without any tool on the host.
//! Build with `--features tools`.
//!
//! ```text
//! kasan-ksyms <linked kernel ELF> <out ELF>
//! ```
//!
//! The kernel reserves the room: a `static` of type
//! `hybrid_shadow::ksyms::Reserved<N>` in a section named `.ksyms` (see
//! `hybrid_shadow::ksyms` and docs/adopting.md); the test guest's linker
//! script reserves it as an output section `.ksyms` starting with the same
//! marker. The tool copies the ELF to `<out ELF>` (the linked file stays
//! untouched, so cargo's next build does not relink) and writes over the
//! room, in the copy, every function symbol of the ELF's symbol table
//! (demangled, in address order) in `hybrid_shadow::ksyms`'s format. It
//! fails, naming the fix, when the room is missing or too small.

use std::process::ExitCode;

use hybrid_shadow::ksyms::{HEADER, MARKER};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// Longest name written (longer ones are cut, as tests/guest/ksyms.sh does).
const NAME_MAX: usize = 240;

/// The room: file offset and capacity of the `.ksyms` section's table.
fn room(file: &object::File<'_>, bytes: &[u8]) -> Result<(usize, usize), String> {
    let sec = file.section_by_name(".ksyms").ok_or(
        "no .ksyms section: reserve one (a #[link_section = \".ksyms\"] static of type hybrid_shadow::ksyms::Reserved<N>, kept by the linker script)",
    )?;
    let (off, size) = sec.file_range().ok_or(".ksyms has no bytes in the file (NOBITS)")?;
    let (off, size) = (off as usize, size as usize);
    let data = bytes.get(off..off + size).ok_or(".ksyms runs past the end of the file")?;
    let Some(rest) = data.strip_prefix(MARKER) else {
        if data.starts_with(HEADER) {
            return Err("the .ksyms table is already written: give the linked ELF, not the output".into());
        }
        return Err(".ksyms does not start with the reservation marker".into());
    };
    // A `Reserved<N>` says its capacity after the marker: " <N hex>\n";
    // the guest's linker-script room does not and takes the whole section.
    let cap = rest
        .strip_prefix(b" ")
        .and_then(|r| {
            let n = r.iter().position(|&c| c == b'\n')?;
            usize::from_str_radix(std::str::from_utf8(&r[..n]).ok()?, 16).ok()
        })
        .unwrap_or(size);
    Ok((off, cap.min(size)))
}

/// The table: header, one line per function, NUL.
fn table(file: &object::File<'_>) -> (Vec<u8>, usize) {
    let mut syms: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let mut d = format!("{:#}", rustc_demangle::demangle(name));
            if d.len() > NAME_MAX {
                let mut cut = NAME_MAX;
                while !d.is_char_boundary(cut) {
                    cut -= 1;
                }
                d.truncate(cut);
            }
            Some((s.address(), s.size(), d.replace('\n', " ")))
        })
        .collect();
    syms.sort();
    syms.dedup();
    let mut out = HEADER.to_vec();
    for (a, s, n) in &syms {
        out.extend_from_slice(format!("{a:x} {s:x} {n}\n").as_bytes());
    }
    out.push(0);
    (out, syms.len())
}

fn run(input: &str, output: &str) -> Result<String, String> {
    let mut bytes = std::fs::read(input).map_err(|e| format!("read {input}: {e}"))?;
    let (off, cap, t, n) = {
        let file = object::File::parse(&*bytes).map_err(|e| format!("{input}: not an ELF: {e}"))?;
        let (off, cap) = room(&file, &bytes)?;
        let (t, n) = table(&file);
        (off, cap, t, n)
    };
    if t.len() > cap {
        return Err(format!(
            "the table ({} bytes, {n} symbols) does not fit the .ksyms room ({cap} bytes): raise N of Reserved<N>",
            t.len()
        ));
    }
    bytes[off..off + t.len()].copy_from_slice(&t);
    let tmp = format!("{output}.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("write {tmp}: {e}"))?;
    std::fs::rename(&tmp, output).map_err(|e| format!("rename {tmp} -> {output}: {e}"))?;
    Ok(format!("{n} symbols, {} of {cap} bytes", t.len()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[1] == "-h" || args[1] == "--help" {
        eprintln!("usage: kasan-ksyms <linked kernel ELF> <out ELF>   (writes the symbol table into the copy's .ksyms room)");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2]) {
        Ok(msg) => {
            println!("kasan-ksyms: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kasan-ksyms: {e}");
            ExitCode::from(1)
        }
    }
}
