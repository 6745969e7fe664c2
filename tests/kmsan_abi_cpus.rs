//! KMSAN's compiler ABI on several CPUs (host threads, numbered by
//! `Platform::cpu`): each CPU keeps its own current context, runtime
//! nesting and interrupt levels, so CPUs that store into the same pages at
//! once (each into its own bytes, with interrupts in between) read back
//! exactly what they stored; a task's deferred store follows it to another
//! CPU; a CPU that never registered runs untracked without touching the
//! others. One process, one installed runtime (the ABI is global): one test.

use std::sync::{mpsc, Arc, Barrier};

use hybrid_shadow::kmsan::AllocInit;
use hybrid_shadow::host::kmsan::KmsanHost;
use hybrid_shadow::kmsan::abi::{self, CpuContexts, CpuError, TaskContext, MAX_CPUS};
use hybrid_shadow::kmsan::origin::{self, Origin, NO_ORIGIN};
use hybrid_shadow::kmsan::MetaPtrs;
use hybrid_shadow::platform::Platform;
use hybrid_shadow::Mode;

/// Registered CPUs (the test thread is CPU 0).
const CPUS: usize = 4;
/// Pages every CPU stores into (each into its own 64 bytes of each).
const PAGES: usize = 8;
/// Stores (and loads) per CPU (more with `KMSAN_CPU_ROUNDS`).
const ROUNDS: usize = 20_000;
const PAGE: usize = 4096;

/// What the compiler's code does for an 8-byte store: ask, then write the
/// shadow and, for an uninitialized value, the origin of both slots.
fn store8(addr: usize, shadow: [u8; 8], o: Origin) {
    let p: MetaPtrs = abi::__msan_metadata_ptr_for_store_8(addr);
    // SAFETY: the ABI hands out writable metadata for an 8-byte store (real
    // pages, this CPU's sink, or the dummy page).
    unsafe {
        p.shadow.cast::<[u8; 8]>().write_unaligned(shadow);
        if shadow != [0; 8] {
            p.origin.write(o);
            p.origin.add(1).write(o);
        }
    }
}

/// Shadow and origin of an 8-byte load through the ABI.
fn load8(addr: usize) -> ([u8; 8], Origin) {
    let p = abi::__msan_metadata_ptr_for_load_8(addr);
    // SAFETY: the ABI hands out readable metadata for 8 bytes.
    unsafe { (p.shadow.cast::<[u8; 8]>().read_unaligned(), p.origin.read()) }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// CPU `cpu`'s run: random 8-byte stores of initialized and uninitialized
/// values into its own bytes of the shared pages, some from an interrupt
/// handler that arrives between a store's metadata call and its write,
/// each checked by a load; returns the mismatches.
fn run_cpu(cpu: usize, base: usize, rounds: usize) -> Vec<String> {
    let task: &'static mut TaskContext = Box::leak(Box::new(TaskContext::new()));
    // SAFETY: the task context is this thread's alone, for the whole run.
    unsafe { abi::set_current(task) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (cpu as u64 + 1));
    // Expected shadow of each of this CPU's 8-byte slots, per page.
    let mut want = vec![[[0u8; 8]; 8]; PAGES];
    let mut bad = Vec::new();
    let own = |page: usize, slot: usize| base + page * PAGE + cpu * 64 + slot * 8;
    let o_task = origin::make(100 + cpu as u32, 0, false);
    let o_irq = origin::make(200 + cpu as u32, 0, false);
    for r in 0..rounds {
        let (page, slot) = (rng.below(PAGES), rng.below(7));
        let shadow = if rng.below(2) == 0 { [0xFF; 8] } else { [0; 8] };
        if rng.below(8) == 0 {
            // The store's metadata call, then an interrupt whose handler
            // stores into slot 7 of another page, then the store's write.
            let p = abi::__msan_metadata_ptr_for_store_8(own(page, slot));
            abi::interrupt_enter();
            let q = rng.below(PAGES);
            let irq_shadow = if r % 2 == 0 { [0xFF; 8] } else { [0; 8] };
            store8(own(q, 7), irq_shadow, o_irq);
            want[q][7] = irq_shadow;
            let got = load8(own(q, 7));
            if got.0 != irq_shadow || (irq_shadow != [0; 8] && got.1 != o_irq) {
                bad.push(format!("cpu {cpu} round {r}: handler's store read back as {got:x?}"));
            }
            abi::interrupt_exit();
            // SAFETY: `p` is this task's metadata for the 8-byte store.
            unsafe {
                p.shadow.cast::<[u8; 8]>().write_unaligned(shadow);
                if shadow != [0; 8] {
                    p.origin.write(o_task);
                    p.origin.add(1).write(o_task);
                }
            }
        } else {
            store8(own(page, slot), shadow, o_task);
        }
        want[page][slot] = shadow;
        // Read back this store, and one earlier slot of this CPU's.
        for (pg, sl) in [(page, slot), (rng.below(PAGES), rng.below(8))] {
            let (sh, o) = load8(own(pg, sl));
            let w = want[pg][sl];
            let wo = if sl == 7 { o_irq } else { o_task };
            if sh != w || (w != [0; 8] && o != wo) {
                bad.push(format!("cpu {cpu} round {r}: page {pg} slot {sl} read {sh:x?}/{o:#x}, stored {w:x?}/{wo:#x}"));
            }
        }
        if bad.len() > 10 {
            break;
        }
    }
    // SAFETY: back to this CPU's own context; the task's store settles.
    unsafe { abi::set_current(core::ptr::null_mut()) };
    bad
}

#[test]
fn cpus_keep_their_own_contexts() {
    let rounds = std::env::var("KMSAN_CPU_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROUNDS);
    let h: &'static mut KmsanHost = Box::leak(Box::new(KmsanHost::new(Mode::Hybrid, 4 << 20, 4 << 20, 64 << 10).unwrap()));
    let k = &h.kmsan;
    assert_eq!(k.platform().cpu(), 0, "the test thread asks first: cpu 0");
    let base = h.ram() + 16 * PAGE;
    for p in 0..PAGES {
        k.page_alloc(base + p * PAGE, 0, AllocInit::Zeroed).unwrap();
    }
    let moved = h.ram() + 40 * PAGE;
    k.page_alloc(moved, 0, AllocInit::Zeroed).unwrap();
    abi::install(k);

    assert_eq!(abi::register_cpu(0, Box::leak(Box::new(CpuContexts::new()))), Err(CpuError::BootCpu));
    assert_eq!(abi::register_cpu(MAX_CPUS, Box::leak(Box::new(CpuContexts::new()))), Err(CpuError::TooMany));

    // A task's deferred store follows it to another CPU: stored on CPU 0
    // into an initialized page (the store waits in the task's sink), the
    // task switched out here, then run on CPU 1, which loads it.
    let task: &'static mut TaskContext = Box::leak(Box::new(TaskContext::new()));
    let task_ptr = task as *mut TaskContext as usize;
    let o_moved = origin::make(77, 0, false);
    let moved_shadow = [0, 0, 0xFF, 0xFF, 0, 0, 0, 0];
    // SAFETY: the task runs here until the switch below, then on CPU 1.
    unsafe { abi::set_current(task_ptr as *mut TaskContext) };
    store8(moved + 8, moved_shadow, o_moved);
    // SAFETY: the task leaves this CPU (its store lands now).
    unsafe { abi::set_current(core::ptr::null_mut()) };

    // The other CPUs learn their numbers, the test thread registers them
    // (as a kernel does before it starts a CPU), then all run at once.
    let start = Arc::new(Barrier::new(CPUS + 1));
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for _ in 1..CPUS {
        let (tx, start) = (tx.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            let cpu = k.platform().cpu();
            tx.send((cpu, true)).unwrap();
            start.wait();
            let mut bad = run_cpu(cpu, base, rounds);
            if cpu == 1 {
                // SAFETY: the task left CPU 0 before the threads started.
                unsafe { abi::set_current(task_ptr as *mut TaskContext) };
                let got = load8(moved + 8);
                // SAFETY: done with the task.
                unsafe { abi::set_current(core::ptr::null_mut()) };
                if got != (moved_shadow, o_moved) {
                    bad.push(format!("the task's store read on cpu 1 as {got:x?}"));
                }
            }
            bad
        }));
    }
    let mut asked: Vec<(usize, bool)> = (1..CPUS).map(|_| rx.recv().unwrap()).collect();
    // Then one more CPU that never registers: untracked, and harmless to the others.
    let (utx, ustart) = (tx, start.clone());
    let untracked = std::thread::spawn(move || {
        let cpu = k.platform().cpu();
        utx.send((cpu, false)).unwrap();
        ustart.wait();
        let mut seen = Vec::new();
        for r in 0..rounds / 4 {
            // Into bytes of its own in the pages the others use.
            let addr = base + (r % PAGES) * PAGE + CPUS * 64 + (r % 8) * 8;
            store8(addr, [0xFF; 8], origin::make(999, 0, false));
            seen.push(load8(addr).0);
            abi::interrupt_enter();
            abi::interrupt_exit();
        }
        (cpu, seen)
    });
    asked.push(rx.recv().unwrap());
    let mut all: Vec<usize> = asked.iter().map(|a| a.0).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=CPUS).collect::<Vec<_>>(), "threads are numbered in the order they ask");
    let cpus: Vec<usize> = asked.iter().filter(|a| a.1).map(|a| a.0).collect();
    for &c in &cpus {
        abi::register_cpu(c, Box::leak(Box::new(CpuContexts::new()))).unwrap();
        assert_eq!(abi::register_cpu(c, Box::leak(Box::new(CpuContexts::new()))), Err(CpuError::Registered));
    }
    start.wait();
    let mut bad = run_cpu(0, base, rounds);
    for t in threads {
        bad.extend(t.join().unwrap());
    }
    let (ucpu, seen) = untracked.join().unwrap();
    assert!(!cpus.contains(&ucpu));
    assert!(bad.is_empty(), "{} mismatches, first: {:#?}", bad.len(), &bad[..bad.len().min(10)]);
    assert!(seen.iter().all(|s| *s == [0; 8]), "an unregistered cpu reads through the dummy page (initialized)");
    // What the unregistered CPU stored went nowhere: its bytes read as the
    // page's initialized state.
    assert_eq!(load8(base + CPUS * 64), ([0; 8], NO_ORIGIN));

    assert_eq!(k.stats().reports, 0, "{}", h.take_log());
}
