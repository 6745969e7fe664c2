//! Host micro-benchmark: cost per check and per hook, `full` vs `hybrid`.
//!
//! `cargo bench --bench checks` prints, for each access class, the median
//! ns per check over several batches and the hybrid/full ratio; then, when
//! valgrind is installed, the instructions per check counted by callgrind
//! (repeatable where timings are noisy): each count runs this binary twice
//! under callgrind with N and 2N checks and divides the difference by N.
//!
//! Access classes:
//! * `tracked`: an 8-byte load inside a live kmalloc object (private shadow)
//! * `untracked`: an 8-byte load in a page of an all-allocated block
//!   (hybrid: the shared zero page)
//! * `mixed`: an 8-byte load in an allocated page of a block that also
//!   has free pages (hybrid: CONSULT, the counted slow path)
//! * `free`: the fast-path decision on a free page (`fast_ok` only: a
//!   full check would print a use-after-free report)
//!
//! Then KMSAN's metadata calls (`__msan_metadata_ptr_for_{load,store}_8`
//! as the compiler's code makes them, through the host backend; a store
//! is settled at the next call), `full` vs `hybrid`:
//! * `load page` / `store page`: an initialized page-granular page
//!   (hybrid: the shared zero page; a store goes through the sink)
//! * `load slab` / `store slab`: inside a slab object, every byte written
//!   (hybrid: private shadow, the page-wide origin: origins through the sink)
//! * `store slab uninit`: an uninitialized value (same origin each time)

use hybrid_shadow::{Ip, Size};
use hybrid_shadow::kmsan::AllocInit;
use hybrid_shadow::host::kmsan::KmsanHost;
use hybrid_shadow::host::sim::{SimConfig, SimKernel};
use hybrid_shadow::{MixedBlocks, Mode};
use std::hint::black_box;
use std::time::Instant;

const CLASSES: [&str; 4] = ["tracked", "untracked", "mixed", "free"];
const HOOKS: [&str; 3] = ["kmalloc+kfree(64)", "alloc+free page", "vmalloc+vfree(5000)"];
const KMSAN: [&str; 5] = ["load page", "store page", "load slab", "store slab", "store slab uninit"];
const KMSAN_MODES: [(&str, Mode); 2] = [("full", Mode::Full), ("hybrid", Mode::Hybrid)];

/// A KMSAN host with an initialized page and a slab object written whole.
fn kmsan_setup(mode: Mode) -> (KmsanHost, [usize; 2]) {
    let mut h = KmsanHost::new(mode, 16 << 20, 4 << 20, 64 << 10).unwrap();
    let (page, slab) = (h.ram() + 64 * 4096, h.ram() + 65 * 4096);
    h.kmsan.page_alloc(page, 0, AllocInit::Zeroed).unwrap();
    h.kmsan.page_alloc(slab, 0, AllocInit::Zeroed).unwrap();
    h.kmsan.slab_page_alloc(slab, 0).unwrap();
    h.call("kmalloc_site", |h| h.kmsan.slab_alloc(slab, Size(64), AllocInit::Uninit)).unwrap();
    h.store(slab, &[0; 64], 0);
    (h, [page, slab])
}

fn run_kmsan(h: &mut KmsanHost, at: [usize; 2], which: usize, n: usize) -> usize {
    let o = hybrid_shadow::kmsan::origin::make(5, 0, false);
    let mut acc = 0;
    for i in 0..n {
        let off = black_box((i & 3) * 8);
        match which {
            0 => acc += h.load(at[0] + off, 8).0[0] as usize,
            1 => h.store(at[0] + off, &[0; 8], 0),
            2 => acc += h.load(at[1] + off, 8).0[0] as usize,
            3 => h.store(at[1] + off, &[0; 8], 0),
            _ => h.store(at[1] + 32 + off, &[0xFF; 8], o),
        }
    }
    h.settle();
    acc
}

/// A model kernel with one address of each class.
struct Setup {
    k: SimKernel,
    addr: [usize; 4],
}

fn setup((mode, mixed): (Mode, MixedBlocks)) -> Setup {
    let mut cfg = SimConfig::small(mode);
    cfg.ram = 64 << 20;
    cfg.kasan.mixed = mixed;
    let mut k = SimKernel::new(cfg).unwrap();
    k.plat.enter("bench");
    let obj = k.kmalloc(64).unwrap();
    // a block of 8 allocated pages, and one mixed: 7 allocated + 1 freed
    let full_block = k.alloc_pages(3).unwrap();
    // 24 single pages hold at least two whole blocks; take one without a slab page
    let singles: Vec<usize> = (0..24).map(|_| k.alloc_pages(0).unwrap()).collect();
    let block = singles
        .iter()
        .copied()
        .find(|&p| p % (32 << 10) == 0 && (1..8).all(|i| singles.contains(&(p + i * 4096))))
        .expect("a whole block of single pages");
    let mixed: Vec<usize> = (0..8).map(|i| block + i * 4096).collect();
    k.free_pages(mixed[7], 0).unwrap();
    assert_eq!(k.read(mixed[7], 1).map_err(|b| b.kind), Err(hybrid_shadow::BugType::UseAfterFree));
    k.take_log();
    // warm the mixed block the way a workload would: adaptive promotes it
    // at the next hook that maps shadow
    for _ in 0..64 {
        k.read(mixed[2], 8).unwrap();
    }
    let st = k.stack_alloc().unwrap();
    k.stack_free(st).unwrap();
    let free = k.kasan.layout().direct_map.end - 4096;
    Setup { k, addr: [obj + 8, full_block + 4096, mixed[2] + 64, free] }
}

fn run_class(s: &Setup, class: usize, n: usize) -> usize {
    let a = s.addr[class];
    let mut bad = 0;
    for i in 0..n {
        let addr = black_box(a + (i & 3) * 8);
        let ok = if class == 3 { s.k.kasan.fast_ok(addr, Size(8)) } else { s.k.kasan.check(addr, Size(8), false, Ip(0)).is_ok() };
        bad += usize::from(!ok);
    }
    bad
}

fn run_hook(k: &mut SimKernel, hook: usize, n: usize) {
    for _ in 0..n {
        match hook {
            0 => {
                let p = k.kmalloc(black_box(64)).unwrap();
                k.kfree(p).unwrap();
            }
            1 => {
                let p = k.alloc_pages(0).unwrap();
                k.free_pages(p, 0).unwrap();
            }
            _ => {
                let p = k.vmalloc(black_box(5000)).unwrap();
                k.vfree(p);
            }
        }
    }
}

fn median_ns(mut f: impl FnMut() -> usize, per_batch: usize) -> f64 {
    let mut v: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The configurations compared: full, hybrid (mixed blocks CONSULT, the
/// default) and hybrid with adaptive promotion of hot mixed blocks.
const CONFIGS: [(&str, Mode, MixedBlocks); 3] = [
    ("full", Mode::Full, MixedBlocks::Consult),
    ("hybrid", Mode::Hybrid, MixedBlocks::Consult),
    ("adaptive", Mode::Hybrid, MixedBlocks::Adaptive),
];

fn config(name: &str) -> (Mode, MixedBlocks) {
    let c = CONFIGS.iter().find(|c| c.0 == name).unwrap();
    (c.1, c.2)
}

/// `checks --count <config> <class|hook-index> <n>`: run exactly n operations (for callgrind).
fn count_mode(args: &[String]) {
    if let Some(&(_, m)) = KMSAN_MODES.iter().find(|c| args[2] == format!("kmsan-{}", c.0)) {
        let (mut h, at) = kmsan_setup(m);
        black_box(run_kmsan(&mut h, at, args[3].parse().unwrap(), args[4].parse().unwrap()));
        return;
    }
    let mode = config(&args[2]);
    let which: usize = args[3].parse().unwrap();
    let n: usize = args[4].parse().unwrap();
    let mut s = setup(mode);
    if which < CLASSES.len() {
        black_box(run_class(&s, which, n));
    } else {
        run_hook(&mut s.k, which - CLASSES.len(), n);
    }
}

fn callgrind_ir(cfg: &str, which: usize, n: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let ir = |n: usize| -> Option<f64> {
        let out = std::env::temp_dir().join(format!("hs-cg-{cfg}-{which}-{n}-{}", std::process::id()));
        let st = std::process::Command::new("valgrind")
            .args(["--tool=callgrind", "--quiet"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&exe)
            .args(["--count", cfg, &which.to_string(), &n.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        if !st.success() {
            return None;
        }
        text.lines().find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))?.trim().parse().ok()
    };
    let (a, b) = (ir(n)?, ir(2 * n)?);
    Some((b - a) / n as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--count") {
        return count_mode(&args);
    }
    let mut setups: Vec<Setup> = CONFIGS.iter().map(|c| setup((c.1, c.2))).collect();
    let header = |what: &str| {
        println!("{what:<22} {:>10} {:>10} {:>10} {:>8} {:>8}", "full", "hybrid", "adaptive", "h/f", "a/f")
    };
    let row = |name: &str, v: &[f64], prec: usize| {
        println!("{name:<22} {:>10.prec$} {:>10.prec$} {:>10.prec$} {:>8.2} {:>8.2}", v[0], v[1], v[2], v[1] / v[0], v[2] / v[0])
    };
    println!("ns per check (median of 9 batches of 200000); hybrid = mixed blocks CONSULT (default), adaptive = hot mixed blocks promoted");
    header("class");
    for (c, name) in CLASSES.iter().enumerate() {
        let ns: Vec<f64> = setups.iter().map(|s| median_ns(|| run_class(s, c, 200_000), 200_000)).collect();
        row(name, &ns, 2);
    }
    let st: Vec<_> = setups.iter().map(|s| s.k.kasan.stats()).collect();
    println!(
        "slow-path checks: hybrid {}, adaptive {} (promotions {})",
        st[1].slow_path_checks, st[2].slow_path_checks, st[2].promotions
    );
    println!("\nns per hook pair (median of 9 batches of 2000)");
    header("hook");
    for (h, name) in HOOKS.iter().enumerate() {
        let ns: Vec<f64> = setups
            .iter_mut()
            .map(|s| median_ns(|| { run_hook(&mut s.k, h, 2000); 0 }, 2000))
            .collect();
        row(name, &ns, 0);
    }
    println!("\nKMSAN: ns per metadata call (median of 9 batches of 200000)");
    println!("{:<22} {:>10} {:>10} {:>8}", "access", "full", "hybrid", "h/f");
    let mut hosts: Vec<_> = KMSAN_MODES.iter().map(|c| kmsan_setup(c.1)).collect();
    for (w, name) in KMSAN.iter().enumerate() {
        let ns: Vec<f64> = hosts.iter_mut().map(|(h, at)| median_ns(|| run_kmsan(h, *at, w, 200_000), 200_000)).collect();
        println!("{name:<22} {:>10.2} {:>10.2} {:>8.2}", ns[0], ns[1], ns[1] / ns[0]);
    }
    let have_valgrind = std::process::Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_valgrind {
        println!("\n(valgrind not installed: no instruction counts; apt-get install valgrind)");
        return;
    }
    println!("\nKMSAN: instructions per metadata call (callgrind, (Ir(2N) - Ir(N)) / N)");
    println!("{:<22} {:>10} {:>10} {:>8}", "access", "full", "hybrid", "h/f");
    for (w, name) in KMSAN.iter().enumerate() {
        let ir: Option<Vec<f64>> = KMSAN_MODES.iter().map(|c| callgrind_ir(&format!("kmsan-{}", c.0), w, 20_000)).collect();
        match ir {
            Some(v) => println!("{name:<22} {:>10.1} {:>10.1} {:>8.2}", v[0], v[1], v[1] / v[0]),
            None => println!("{name:<22} (callgrind failed)"),
        }
    }
    println!("\ninstructions per operation (callgrind, (Ir(2N) - Ir(N)) / N)");
    header("operation");
    let names: Vec<&str> = CLASSES.iter().chain(HOOKS.iter()).copied().collect();
    for (w, name) in names.iter().enumerate() {
        let n = if w < CLASSES.len() { 20_000 } else { 500 };
        let ir: Vec<Option<f64>> = CONFIGS.iter().map(|c| callgrind_ir(c.0, w, n)).collect();
        match ir.iter().copied().collect::<Option<Vec<f64>>>() {
            Some(v) => row(name, &v, 1),
            None => println!("{name:<22} (callgrind failed)"),
        }
    }
}
