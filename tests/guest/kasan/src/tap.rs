//! A tap on the runtime's console (off unless a suite turns it on): it
//! reads each report as the runtime prints it, on the CPU that prints it,
//! and keeps per CPU the bug type and address of the reports printed
//! there, so that a suite can match every report with the access that
//! caused it (suite `race`, tests/guest/src/smp_race.rs). Reports of
//! several CPUs do not interleave (the runtime's report lock); each CPU
//! parses its own text into its own slot.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::{Acquire, Relaxed, Release}};

use guest_boot::cpu::MAX_CPUS;
use hybrid_shadow::BugType;

static ON: AtomicBool = AtomicBool::new(false);

const LINE: usize = 160;
const RING: usize = 16;
const RULE: &[u8] = b"==================================================================";

/// One report as the tap read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The title's bug type (None: no title, or a name the runtime does not know).
    pub kind: Option<BugType>,
    /// The address of its access line (`... at addr <hex> by task ...`), or
    /// of its `Free of addr` line; 0 when it had none.
    pub addr: usize,
    /// One title, one access (or free) line between the two rules.
    pub whole: bool,
}

const NO_RECORD: Record = Record { kind: None, addr: 0, whole: false };

/// The parse state of one CPU (only that CPU touches it).
struct Parse {
    line: [u8; LINE],
    len: usize,
    in_report: bool,
    titles: u8,
    accesses: u8,
    cur: Record,
    ring: [Record; RING],
}

const PARSE0: Parse =
    Parse { line: [0; LINE], len: 0, in_report: false, titles: 0, accesses: 0, cur: NO_RECORD, ring: [NO_RECORD; RING] };

static mut PARSE: [Parse; MAX_CPUS] = [PARSE0; MAX_CPUS];
/// Reports completed per CPU (its ring holds the last [`RING`]).
static DONE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Turn the tap on or off.
pub fn enable(on: bool) {
    ON.store(on, Release);
}

/// Reports completed on `cpu` since the tap exists.
pub fn count(cpu: usize) -> usize {
    DONE.get(cpu).map_or(0, |d| d.load(Acquire))
}

/// Report number `n` (counting from 0) of `cpu`, if still in its ring.
/// Only `cpu` itself may ask while it may still report; any CPU may after.
pub fn record(cpu: usize, n: usize) -> Option<Record> {
    if cpu >= MAX_CPUS || n >= count(cpu) || count(cpu) - n > RING {
        return None;
    }
    // SAFETY: the ring entry `n % RING` of a completed report; written only
    // by `cpu` before it published DONE (Release, read with Acquire above);
    // the caller is `cpu` or `cpu` no longer reports.
    Some(unsafe { (*core::ptr::addr_of!(PARSE))[cpu].ring[n % RING] })
}

/// The runtime's console text `s`, written on this CPU.
pub(crate) fn feed(s: &str) {
    if !ON.load(Relaxed) {
        return;
    }
    let cpu = guest_boot::cpu::cpu_id();
    if cpu >= MAX_CPUS {
        return;
    }
    // SAFETY: entry `cpu` is this CPU's alone: only this CPU feeds it
    // (reports are printed by the CPU that found them), and `record` reads
    // only completed ring entries.
    let p = unsafe { &mut (*core::ptr::addr_of_mut!(PARSE))[cpu] };
    for &b in s.as_bytes() {
        if b == b'\n' {
            line(p, cpu);
            p.len = 0;
        } else if p.len < LINE {
            p.line[p.len] = b;
            p.len += 1;
        }
    }
}

fn hex_after(l: &str, key: &str) -> Option<usize> {
    let rest = &l[l.find(key)? + key.len()..];
    let h = rest.split(' ').next()?;
    usize::from_str_radix(h, 16).ok()
}

fn line(p: &mut Parse, cpu: usize) {
    let l = &p.line[..p.len];
    if l == RULE {
        if !p.in_report {
            p.in_report = true;
            p.titles = 0;
            p.accesses = 0;
            p.cur = NO_RECORD;
            return;
        }
        p.in_report = false;
        p.cur.whole = p.titles == 1 && p.accesses == 1;
        let n = DONE[cpu].load(Relaxed);
        p.ring[n % RING] = p.cur;
        DONE[cpu].store(n + 1, Release);
        return;
    }
    if !p.in_report {
        return;
    }
    let Ok(l) = core::str::from_utf8(l) else { return };
    if let Some(t) = l.strip_prefix("BUG: KASAN: ") {
        p.titles += 1;
        p.cur.kind = t.split(' ').next().and_then(BugType::from_name);
    } else if l.contains(" by task ") && (l.contains(" at addr ") || l.starts_with("Free of addr ")) {
        p.accesses += 1;
        p.cur.addr = hex_after(l, "addr ").unwrap_or(0);
    }
}
