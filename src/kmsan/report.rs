//! Reports in Linux's KMSAN format, so syzkaller's parser gets a clean
//! title (`BUG: KMSAN: ([a-z\-]+) in FUNC+0x../0x..`):
//!
//! ```text
//! =====================================================
//! BUG: KMSAN: uninit-value in <func>+0x<off>/0x<size>
//!  <stack of the use>
//!
//! <Zero or more stacks not recorded to save memory>     (chain cut at the maximum depth)
//!
//! Uninit was stored to memory at:                       (one per chain link)
//!  <stack of the store>
//!
//! Uninit was created at:                                (or "Local variable <name> created at:")
//!  <stack of the allocation, poisoning or free>
//!
//! Bytes <a>-<b> of <n> are uninitialized                (checks of a range)
//! Memory access of size <n> starts at <addr>
//!
//! CPU: 0 PID: <pid> Comm: <task>
//! =====================================================
//! ```
//!
//! The title is `use-after-free` when the value's origin is a free.
//! Everything the report needs from the depot is copied out under the lock
//! first; printing runs without it (the console code may be instrumented).

use core::fmt::{self, Write};
use core::sync::atomic::Ordering::Relaxed;

use arrayvec::ArrayVec;

use crate::config::FaultAction;
use crate::depot::Trace;
use crate::kmsan::origin::{self, Origin, ALLOCA_MAGIC, CHAIN_MAGIC, NO_ORIGIN};
use crate::kmsan::runtime::Kmsan;
use crate::mapper::ShadowMapper;
use crate::platform::Platform;
use crate::report::{write_frame, write_stack, Bug, BugType, ConsoleWriter, UseStack};
use crate::stats::Stats;

const RULE: &str = "=====================================================\n";

/// Link stacks a report prints at most (the chain is at most
/// [`origin::MAX_DEPTH`] links long).
const MAX_LINKS: usize = origin::MAX_DEPTH as usize + 1;

/// How the chain ends.
enum Creation {
    /// A stack (allocation, poisoning, free).
    Stack(Trace),
    /// A local variable: its name, the code that created it and that
    /// code's caller (0 when unknown).
    Local(&'static [u8], usize, usize),
    /// No origin recorded.
    Unknown,
}

/// An origin chain copied out of the depot.
struct Chain {
    cut: bool,
    links: ArrayVec<Trace, MAX_LINKS>,
    creation: Creation,
}

impl<M: ShadowMapper, P: Platform> Kmsan<M, P> {
    fn fetch_chain(&self, o: Origin) -> Chain {
        let inner = self.inner.lock();
        let mut chain = Chain { cut: origin::is_cut(o), links: ArrayVec::new(), creation: Creation::Unknown };
        let mut cur = o;
        while cur != NO_ORIGIN {
            let t = inner.depot.fetch(origin::handle(cur));
            match t.first() {
                Some(&CHAIN_MAGIC) if t.len() >= 2 => {
                    let mut frames = Trace::new();
                    frames.extend(t[2..].iter().copied());
                    if chain.links.try_push(frames).is_err() {
                        break;
                    }
                    cur = t[1] as Origin;
                }
                Some(&ALLOCA_MAGIC) if t.len() == 5 => {
                    // SAFETY: the pointer and length were stored from a
                    // `&'static [u8]` by `alloca_origin`.
                    let name = unsafe { core::slice::from_raw_parts(t[1] as *const u8, t[2]) };
                    chain.creation = Creation::Local(name, t[3], t[4]);
                    break;
                }
                _ => {
                    chain.creation = Creation::Stack(t);
                    break;
                }
            }
        }
        chain
    }

    /// Print a report for an uninitialized value with origin `o` used by
    /// the code at `ip`; `range` = (start, size, first bad, last bad) for
    /// checks of memory.
    pub(crate) fn report_uninit(&self, o: Origin, ip: usize, range: Option<(usize, usize, usize, usize)>) -> Bug {
        let kind = if origin::is_uaf(o) { BugType::UseAfterFree } else { BugType::UninitValue };
        let addr = range.map_or(0, |r| r.0);
        let cpu = self.platform.cpu();
        if self.report_lock.held_by(cpu) {
            // Found by the code printing this CPU's report.
            return Bug { kind, addr, printed: false };
        }
        if self.reported.swap(true, Relaxed) && !self.cfg.multi_shot {
            Stats::bump(&self.stats.reports_suppressed);
            return Bug { kind, addr, printed: false };
        }
        let chain = self.fetch_chain(o);
        // Wait while another CPU prints its report (none is held here: the
        // check above).
        let Some(console) = self.report_lock.lock(cpu) else {
            return Bug { kind, addr, printed: false };
        };
        Stats::bump(&self.stats.reports);
        let mut out = ConsoleWriter::new(&self.platform);
        let _ = self.write_report(&mut out, kind, ip, &chain, range);
        drop(console);
        if self.cfg.fault == FaultAction::Panic {
            self.platform.panic("kmsan.panic set (kmsan.fault=panic)");
        }
        Bug { kind, addr, printed: true }
    }

    fn write_report(
        &self,
        out: &mut dyn Write,
        kind: BugType,
        ip: usize,
        chain: &Chain,
        range: Option<(usize, usize, usize, usize)>,
    ) -> fmt::Result {
        let stack = UseStack::capture(&self.platform, ip);
        let (frames, title_pc) = (stack.frames(), stack.title_pc);
        out.write_str(RULE)?;
        write!(out, "BUG: KMSAN: {} in ", kind.name())?;
        write_frame(&self.platform, out, title_pc)?;
        out.write_str("\n")?;
        write_stack(&self.platform, out, frames)?;
        out.write_str("\n")?;
        if chain.cut {
            out.write_str("<Zero or more stacks not recorded to save memory>\n\n")?;
        }
        for link in &chain.links {
            out.write_str("Uninit was stored to memory at:\n")?;
            write_stack(&self.platform, out, link)?;
            out.write_str("\n")?;
        }
        match &chain.creation {
            Creation::Stack(t) => {
                out.write_str("Uninit was created at:\n")?;
                write_stack(&self.platform, out, t)?;
            }
            Creation::Local(name, pc, pc2) => {
                out.write_str("Local variable ")?;
                write_var_name(out, name)?;
                out.write_str(" created at:\n ")?;
                write_frame(&self.platform, out, *pc)?;
                out.write_str("\n")?;
                if *pc2 != 0 {
                    out.write_str(" ")?;
                    write_frame(&self.platform, out, *pc2)?;
                    out.write_str("\n")?;
                }
            }
            Creation::Unknown => {
                out.write_str("Uninit was created at:\n (stack is not available)\n")?;
            }
        }
        if let Some((start, size, first, last)) = range {
            out.write_str("\n")?;
            if first == last {
                writeln!(out, "Byte {first} of {size} is uninitialized")?;
            } else {
                writeln!(out, "Bytes {first}-{last} of {size} are uninitialized")?;
            }
            writeln!(out, "Memory access of size {size} starts at {start:016x}")?;
        }
        write!(out, "\nCPU: 0 UID: 0 PID: {} Comm: ", self.platform.current_pid())?;
        let _ = self.platform.write_task_name(out);
        out.write_str(" Tainted: G    B\nTainted: [B]=BAD_PAGE\nHardware name: hybrid-shadow KMSAN runtime\n")?;
        out.write_str(RULE)
    }
}

/// Print a variable name from the compiler's description: the name (rustc),
/// or `----name@func` (clang): dashes dropped, cut at `@`, and cut at the
/// first `.` (LLVM's suffixes such as `.sroa.0` for a split variable).
fn write_var_name(out: &mut dyn Write, descr: &[u8]) -> fmt::Result {
    let mut any = false;
    for &b in descr.iter().take(128) {
        if b == b'@' || b == 0 || b == b'.' {
            break;
        }
        if b == b'-' {
            continue;
        }
        let c = if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' { b as char } else { '_' };
        out.write_char(c)?;
        any = true;
    }
    if !any {
        out.write_str("(unnamed)")?;
    }
    Ok(())
}
