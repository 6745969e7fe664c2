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
//! marker. The work is `hybrid_shadow::ksyms::embed` (the test guest's
//! build calls it too): the ELF is copied to `<out ELF>` with every
//! function symbol written over the room; it fails, naming the fix, when
//! the room is missing or too small.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[1] == "-h" || args[1] == "--help" {
        eprintln!("usage: kasan-ksyms <linked kernel ELF> <out ELF>   (writes the symbol table into the copy's .ksyms room)");
        return ExitCode::from(2);
    }
    match hybrid_shadow::ksyms::embed::embed(Path::new(&args[1]), Path::new(&args[2])) {
        Ok(e) => {
            println!("kasan-ksyms: {} symbols, {} of {} bytes", e.symbols, e.bytes, e.room);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kasan-ksyms: {e}");
            ExitCode::from(1)
        }
    }
}
