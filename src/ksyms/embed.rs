//! Writing the table into a linked kernel (host side, feature `tools`):
//! every function symbol of the ELF, demangled, in address order, over
//! the `.ksyms` room of a copy of the file.
//!
//! ```text
//!  linked ELF ──read──► .ksyms room (MARKER [" <cap hex>\n"]) + function symbols
//!             ──copy──► out ELF with HEADER, "<addr> <size> <name>\n"..., NUL in the room
//! ```
//!
//! The linked file stays untouched, so cargo's next build does not relink.
//! The room is either a [`super::Reserved`] (which states its capacity) or
//! a linker-script output section named `.ksyms` that starts with
//! [`MARKER`] and is wholly the room.

use std::format;
use std::path::Path;
use std::string::String;
use std::vec::Vec;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use super::{HEADER, MARKER};

/// Longest name written; longer ones are cut (at a character boundary).
pub const NAME_WRITE_MAX: usize = 240;

/// Why the table could not be written.
#[derive(Debug)]
pub enum EmbedError {
    /// Reading the input or writing the output failed.
    Io(String, std::io::Error),
    /// The input is not an ELF file `object` can parse.
    NotElf(String),
    /// The ELF has no `.ksyms` section.
    NoRoom,
    /// `.ksyms` has no bytes in the file (NOBITS) or runs past its end.
    RoomNotInFile,
    /// `.ksyms` already holds a table: the output was given as input.
    AlreadyWritten,
    /// `.ksyms` does not start with the reservation marker.
    NoMarker,
    /// The table is larger than the room.
    TooLarge {
        /// Bytes of the table.
        table: usize,
        /// Symbols in it.
        symbols: usize,
        /// Bytes of the room.
        room: usize,
    },
}

impl core::fmt::Display for EmbedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EmbedError::Io(what, e) => write!(f, "{what}: {e}"),
            EmbedError::NotElf(e) => write!(f, "not an ELF: {e}"),
            EmbedError::NoRoom => f.write_str(
                "no .ksyms section: reserve one (a #[link_section = \".ksyms\"] static of type hybrid_shadow::ksyms::Reserved<N>, kept by the linker script)",
            ),
            EmbedError::RoomNotInFile => f.write_str(".ksyms has no bytes in the file (NOBITS) or runs past its end"),
            EmbedError::AlreadyWritten => {
                f.write_str("the .ksyms table is already written: give the linked ELF, not the output")
            }
            EmbedError::NoMarker => f.write_str(".ksyms does not start with the reservation marker"),
            EmbedError::TooLarge { table, symbols, room } => write!(
                f,
                "the table ({table} bytes, {symbols} symbols) does not fit the .ksyms room ({room} bytes): raise N of Reserved<N> (or the linker script's room)"
            ),
        }
    }
}

impl std::error::Error for EmbedError {}

/// What [`embed`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// Function symbols in the table.
    pub symbols: usize,
    /// Bytes of the table.
    pub bytes: usize,
    /// Bytes of the room.
    pub room: usize,
}

/// The room: file offset and capacity of the `.ksyms` section's table.
fn room(file: &object::File<'_>, bytes: &[u8]) -> Result<(usize, usize), EmbedError> {
    let sec = file.section_by_name(".ksyms").ok_or(EmbedError::NoRoom)?;
    let (off, size) = sec.file_range().ok_or(EmbedError::RoomNotInFile)?;
    let (off, size) = (off as usize, size as usize);
    let data = bytes.get(off..off + size).ok_or(EmbedError::RoomNotInFile)?;
    let Some(rest) = data.strip_prefix(MARKER) else {
        return Err(if data.starts_with(HEADER) { EmbedError::AlreadyWritten } else { EmbedError::NoMarker });
    };
    // A `Reserved<N>` says its capacity after the marker: " <N hex>\n"; a
    // linker-script room does not and takes the whole section.
    let cap = rest
        .strip_prefix(b" ")
        .and_then(|r| {
            let n = r.iter().position(|&c| c == b'\n')?;
            usize::from_str_radix(core::str::from_utf8(&r[..n]).ok()?, 16).ok()
        })
        .unwrap_or(size);
    Ok((off, cap.min(size)))
}

/// The table of `file`: header, one line per function, NUL; and the
/// number of functions.
#[must_use]
pub fn table(file: &object::File<'_>) -> (Vec<u8>, usize) {
    let mut syms: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let mut d = format!("{:#}", rustc_demangle::demangle(name));
            if d.len() > NAME_WRITE_MAX {
                let mut cut = NAME_WRITE_MAX;
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

/// Copy the linked kernel `input` to `output` with its symbol table
/// written into the copy's `.ksyms` room.
///
/// # Errors
/// See [`EmbedError`]; `output` is then not written.
pub fn embed(input: &Path, output: &Path) -> Result<Embedded, EmbedError> {
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| EmbedError::Io(what, e)
    };
    let mut bytes = std::fs::read(input).map_err(io("read", input))?;
    let (off, room_bytes, t, symbols) = {
        let file = object::File::parse(&*bytes).map_err(|e| EmbedError::NotElf(format!("{}: {e}", input.display())))?;
        let (off, cap) = room(&file, &bytes)?;
        let (t, n) = table(&file);
        (off, cap, t, n)
    };
    if t.len() > room_bytes {
        return Err(EmbedError::TooLarge { table: t.len(), symbols, room: room_bytes });
    }
    bytes[off..off + t.len()].copy_from_slice(&t);
    let mut tmp = std::ffi::OsString::from(output.as_os_str());
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, output).map_err(io("rename to", output))?;
    Ok(Embedded { symbols, bytes: t.len(), room: room_bytes })
}
