//! Memory benchmark of the test guest: `cargo bench --bench guest_memory`.
//!
//! Boots the guest kernels (optimized builds, QEMU TCG) with the
//! kernel-build-like workload (`suite=workload`) in `off`, `full` and
//! `hybrid` and compares their memory and time. Two presets:
//!
//! * the default (about 3 minutes of boots on 2 idle cores, 3 min 24 s
//!   for the whole command on 8da3872; see README "Guest figures"):
//!   the KASAN kernel at 1024 and 4096 MiB, one `-icount` run per mode and
//!   size (deterministic: the figures do not depend on the host's load),
//!   2 QEMU at once, no probing;
//! * `--matrix`, the full matrix (hours): both kernels (KASAN, and KMSAN,
//!   whose metadata is shadow 1:1 plus origins 1:1, "on-demand" counting
//!   its private shadow and origin pages) at 64, 128, 256, 512, 1024 and
//!   4096 MiB, 3 wall-clock runs per configuration for median times, one
//!   QEMU at a time; below the smallest size at which a (sanitizer, mode)
//!   still completes, probes smaller sizes (56, 48, 40, 32, 24 MiB) to find
//!   its minimum (then bisects to 2 MiB).
//!
//! A progress line is printed when each boot starts and ends (mode, size,
//! elapsed, estimated time left).
//!
//! Writes target/guest-bench/results.json (one object per sanitizer, mode
//! and RAM size, with `sanitizer`, `profile` and `checks` fields),
//! target/guest-bench/memory.svg (memory over time per sanitizer and mode),
//! target/guest-bench/table.md (the tables below, both sanitizers side by
//! side, and the 2017 per-page-shadow proposal's terms), the serial logs
//! under target/guest-bench/logs/<sanitizer>-<mode>-<ram>-<run>.log, and
//! prints the tables and which targets (KASAN kernel) are met.
//!
//! Options (after `--`; later ones override a preset given before them), or
//! environment variables GUEST_BENCH_<NAME>:
//!   --matrix        the full matrix (above): sanitizers kasan,kmsan, runs 3,
//!                   sizes 64,128,256,512,1024,4096, wall clock, parallel 1,
//!                   probing, plot-ram 128
//!   --sanitizers a,b  guest kernels to measure (kasan)
//!   --runs N        runs per mode and size for the time medians (1)
//!   --sizes a,b,..  RAM sizes in MiB (1024,4096)
//!   --modes a,b     (off,full,hybrid)
//!   --units N --jobs N --seed N   workload size (240, 4, 1)
//!   --parallel N    QEMU instances at once (2; more than 1 skews wall-clock
//!                   times, not -icount ones)
//!   --probe / --no-probe   search below the smallest size or not (no)
//!   --plot-ram N    RAM size whose samples are plotted (1024; the nearest
//!                   size run when N was not run)
//!   --append "..."  extra guest command-line words (e.g. kasan.mixed=private),
//!                   given to both kernels (each ignores the other's knobs)
//!   --profile P     the workload's profile: build (the default, calibrated to
//!                   a kernel build's slab) or light (the workload before that);
//!                   each results.json object says which (`profile`) and its
//!                   byte-tracked peak (`tracked_peak_bytes`)
//!   --quick         runs 1, sizes 64,128, no probe, plot-ram 128
//!   --timeout S     per boot (1800)
//!   --icount        QEMU -icount shift=0 (the default): workload time =
//!                   guest instructions (1 ns each), immune to host load,
//!                   ~1.3x slower to run
//!   --wall          no -icount: workload time from the TSC, wall clock
//!                   (affected by host load; use several --runs)
//!   --smp N         CPUs (1): N > 1 boots `-smp N` with `smp_sched=on`, so the
//!                   workload's jobs run on every CPU (multi-threaded TCG; with
//!                   --icount one thread runs them round-robin and the times
//!                   are the instructions of all CPUs); logs get `-smpN`, and a
//!                   "Several CPUs" table adds the TLB shootdowns per run
//!   --checks C      KASAN's checks: outline (default, a call per access;
//!                   profile release) or inline (Linux's default; profile
//!                   inline-release, its own ELF beside the other); each
//!                   results.json object says which (`checks`)
//!   --out DIR       output directory (target/guest-bench); the guests are
//!                   built under DIR/build and DIR/build-kmsan
#[path = "../tests/guest_driver/mod.rs"]
mod guest_driver;

use guest_driver::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone)]
struct Cfg {
    sanitizers: Vec<San>,
    runs: usize,
    sizes: Vec<u32>,
    modes: Vec<String>,
    units: u64,
    jobs: u64,
    seed: u64,
    parallel: usize,
    probe: bool,
    plot_ram: u32,
    append: String,
    /// `--profile`: the workload's `profile=` (None: the guest's default, build).
    profile: Option<String>,
    timeout: u64,
    icount: bool,
    /// `--checks`: how the KASAN kernel checks accesses (KMSAN: always calls).
    checks: Checks,
    out: Option<String>,
    /// `--smp`: CPUs (jobs on every CPU when above 1).
    smp: u32,
}

fn parse_sanitizers(s: &str) -> Vec<San> {
    let mut v: Vec<San> = Vec::new();
    for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let san = San::from_name(&w.to_ascii_lowercase()).unwrap_or_else(|| panic!("--sanitizers: unknown sanitizer {w:?} (kasan, kmsan)"));
        if !v.contains(&san) {
            v.push(san);
        }
    }
    assert!(!v.is_empty(), "--sanitizers needs at least one of kasan, kmsan");
    v
}

/// Options that take no value (also as GUEST_BENCH_<NAME> variables).
const FLAGS: [&str; 6] = ["quick", "no-probe", "probe", "icount", "wall", "matrix"];

/// `--matrix`: the full matrix, both kernels at every size, medians of
/// wall-clock runs, one QEMU at a time, probing for the smallest RAM.
fn matrix(c: &mut Cfg) {
    c.sanitizers = vec![San::Kasan, San::Kmsan];
    c.runs = 3;
    c.sizes = vec![64, 128, 256, 512, 1024, 4096];
    c.icount = false;
    c.parallel = 1;
    c.probe = true;
    c.plot_ram = 128;
}

fn parse_cfg() -> Cfg {
    let mut c = Cfg {
        sanitizers: vec![San::Kasan],
        runs: 1,
        sizes: vec![1024, 4096],
        modes: vec!["off".into(), "full".into(), "hybrid".into()],
        units: 240,
        jobs: 4,
        seed: 1,
        parallel: 2,
        probe: false,
        plot_ram: 1024,
        append: String::new(),
        profile: None,
        timeout: 1800,
        icount: true,
        checks: Checks::Outline,
        out: None,
        smp: 1,
    };
    let mut args: Vec<String> = Vec::new();
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix("GUEST_BENCH_") {
            let name = name.to_ascii_lowercase().replace('_', "-");
            args.push(format!("--{name}"));
            if !v.is_empty() && !FLAGS.contains(&name.as_str()) {
                args.push(v);
            }
        }
    }
    args.extend(std::env::args().skip(1));
    let mut it = args.into_iter();
    let list = |s: String| -> Vec<u32> { s.split(',').filter_map(|x| x.trim().parse().ok()).collect() };
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--sanitizers" | "--sanitizer" => c.sanitizers = parse_sanitizers(&val()),
            "--runs" => c.runs = val().parse().expect("--runs N"),
            "--sizes" => c.sizes = list(val()),
            "--modes" => c.modes = val().split(',').map(|s| s.trim().to_string()).collect(),
            "--units" => c.units = val().parse().expect("--units N"),
            "--jobs" => c.jobs = val().parse().expect("--jobs N"),
            "--seed" => c.seed = val().parse().expect("--seed N"),
            "--parallel" => c.parallel = val().parse::<usize>().expect("--parallel N").max(1),
            "--plot-ram" => c.plot_ram = val().parse().expect("--plot-ram N"),
            "--append" => c.append = val(),
            "--profile" => {
                let p = val();
                assert!(p == "build" || p == "light", "--profile build|light, not {p:?}");
                c.profile = Some(p);
            }
            "--timeout" => c.timeout = val().parse().expect("--timeout S"),
            "--no-probe" => c.probe = false,
            "--probe" => c.probe = true,
            "--icount" => c.icount = true,
            "--wall" => c.icount = false,
            "--matrix" => matrix(&mut c),
            "--checks" => c.checks = Checks::from_name(&val()).expect("--checks outline|inline"),
            "--out" => c.out = Some(val()),
            "--smp" => c.smp = val().parse::<u32>().expect("--smp N").clamp(1, 8),
            "--quick" => {
                c.runs = 1;
                c.sizes = vec![64, 128];
                c.probe = false;
                c.plot_ram = 128;
            }
            "--bench" => {}
            "--help" | "-h" => {
                // The options are this file's header.
                for l in include_str!("guest_memory.rs").lines().take_while(|l| l.starts_with("//!")) {
                    println!("{}", l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""));
                }
                std::process::exit(0);
            }
            other => eprintln!("guest_memory: ignoring argument {other}"),
        }
    }
    c.runs = c.runs.max(1);
    c
}

/// The cargo profile of `san`'s optimized kernel with `--checks`.
fn bench_profile(cfg: &Cfg, san: San) -> &'static str {
    profile_with(san, "release", cfg.checks).unwrap_or(san.release_profile())
}

/// How `san`'s benchmarked kernel checks accesses: `--checks` for KASAN;
/// KMSAN's instrumentation always calls the runtime (outlined).
fn checks_of(cfg: &Cfg, san: San) -> Checks {
    Checks::of_profile(bench_profile(cfg, san))
}

/// The target directory of a kernel's nested build (own per sanitizer, so
/// neither build invalidates the other), under the output directory.
fn build_dir(out: &Path, san: San) -> PathBuf {
    match san {
        San::Kasan => out.join("build"),
        San::Kmsan => out.join("build-kmsan"),
    }
}

/// The guest command line of the workload.
fn workload_append(cfg: &Cfg) -> String {
    let mut a = format!("units={} jobs={} seed={} samples=300", cfg.units, cfg.jobs, cfg.seed);
    if let Some(p) = &cfg.profile {
        a.push_str(" profile=");
        a.push_str(p);
    }
    if cfg.smp > 1 {
        a.push_str(" smp_sched=on");
    }
    if !cfg.append.is_empty() {
        a.push(' ');
        a.push_str(&cfg.append);
    }
    a
}

struct Run {
    san: San,
    mode: String,
    ram: u32,
    exit: i32,
    wall: Duration,
    result: Option<Fields>,
    /// `wl-start` (usable/managed bytes, also when the workload then fails).
    start: Option<Fields>,
    /// `kasan-meta:` / `kmsan-meta:` (metadata at init, also when the workload then fails).
    meta: Option<Fields>,
    samples: Vec<Fields>,
    reports_in_log: usize,
    failure: String,
    log: PathBuf,
}

impl Run {
    fn completed(&self) -> bool {
        self.exit == EXIT_SUCCESS
            && self.reports_in_log == 0
            && self.result.as_ref().is_some_and(|r| r.get("invariants") == Some("ok") && r.u64("reports") == Some(0))
    }
    /// A field of `wl-result`; when the workload did not get that far, the
    /// same field of `wl-start` or of the boot's metadata line.
    fn get(&self, k: &str) -> Option<u64> {
        [&self.result, &self.start, &self.meta].into_iter().find_map(|f| f.as_ref()?.u64(k))
    }
    fn r(&self, k: &str) -> u64 {
        self.get(k).unwrap_or(0)
    }
    /// The workload's profile, as the guest printed it (`wl-result` or
    /// `wl-start`), else what the command line asked for (the last
    /// `profile=` word wins, as in the guest's parser; default build).
    fn profile(&self, cfg: &Cfg) -> String {
        if let Some(p) = [&self.result, &self.start].into_iter().find_map(|f| f.as_ref()?.get("profile").map(str::to_string)) {
            return p;
        }
        workload_append(cfg).split_ascii_whitespace().filter_map(|w| w.strip_prefix("profile=")).next_back().unwrap_or("build").to_string()
    }
}

fn run_one(cfg: &Cfg, san: San, elf: &Path, dir: &Path, mode: &str, ram: u32, rep: usize) -> Run {
    let b = Boot {
        elf,
        san,
        mode,
        suite: "workload",
        ram_mib: ram,
        append: workload_append(cfg),
        timeout: Duration::from_secs(cfg.timeout),
        log: dir.join("logs").join(if cfg.smp > 1 {
            format!("{}-{mode}-{ram}-smp{}-{rep}.log", san.name(), cfg.smp)
        } else {
            format!("{}-{mode}-{ram}-{rep}.log", san.name())
        }),
        icount: cfg.icount,
    };
    let out = boot_with(&b, &Qemu { smp: cfg.smp, ..Qemu::default() }).unwrap_or_else(|e| panic!("{e}"));
    let failure = if out.succeeded() {
        String::new()
    } else {
        out.log
            .lines()
            .rev()
            .find(|l| {
                l.starts_with("wl-oom")
                    || l.starts_with("wl-fail")
                    || l.starts_with("wl-error")
                    || l.contains("PANIC")
                    || l.contains("BUG:")
                    || l.contains("init failed")
            })
            .unwrap_or(if out.exit == 124 { "timeout" } else { "no message" })
            .to_string()
    };
    Run {
        san,
        mode: mode.into(),
        ram,
        exit: out.exit,
        wall: out.wall,
        result: out.line("wl-result"),
        start: out.line("wl-start"),
        meta: out.line("kasan-meta:").or_else(|| out.line("kmsan-meta:")),
        samples: out.lines("wl-sample"),
        reports_in_log: out.reports(),
        failure,
        log: b.log.clone(),
    }
}

/// What a boot is: (sanitizer, mode, RAM MiB).
type Key = (San, String, u32);

/// Progress lines on stderr: one when a boot starts and one when it ends,
/// with the elapsed time and an estimate of the time left (from the boots
/// done so far: the mean wall time of the same sanitizer, mode and size,
/// else of the same sanitizer and mode (the mode weighs more than the size:
/// `off` takes a third of `full`), else of the same sanitizer and size,
/// else of the sanitizer).
struct Progress {
    t0: Instant,
    parallel: usize,
    /// Boots still to start (`None`: not known, as when probing).
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    pending: Option<Vec<Key>>,
    running: Vec<(Key, Instant)>,
    done: Vec<(Key, f64)>,
    started: usize,
    total: usize,
}

impl Progress {
    fn new(t0: Instant, parallel: usize, jobs: Option<Vec<Key>>) -> Self {
        let total = jobs.as_ref().map_or(0, Vec::len);
        Progress { t0, parallel: parallel.max(1), state: Mutex::new(ProgressState { pending: jobs, total, ..Default::default() }) }
    }

    fn estimate(done: &[(Key, f64)], k: &Key) -> Option<f64> {
        let mean = |f: &dyn Fn(&Key) -> bool| -> Option<f64> {
            let v: Vec<f64> = done.iter().filter(|(d, _)| f(d)).map(|(_, w)| *w).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        mean(&|d| d == k).or_else(|| mean(&|d| d.0 == k.0 && d.1 == k.1)).or_else(|| mean(&|d| d.0 == k.0 && d.2 == k.2)).or_else(|| mean(&|d| d.0 == k.0))
    }

    /// "about N s left", or why there is no estimate.
    fn left(&self, st: &ProgressState) -> String {
        let Some(pending) = &st.pending else { return "probing, time left unknown".into() };
        let mut sum = 0.0;
        for k in pending {
            match Self::estimate(&st.done, k) {
                Some(e) => sum += e,
                None => return "time left: estimated after the first boot".into(),
            }
        }
        for (k, t) in &st.running {
            let Some(e) = Self::estimate(&st.done, k) else { return "time left: estimated after the first boot".into() };
            sum += (e - t.elapsed().as_secs_f64()).max(0.0);
        }
        format!("about {:.0} s left", sum / self.parallel as f64)
    }

    fn start(&self, k: &Key, what: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(p) = st.pending.as_mut() {
            if let Some(i) = p.iter().position(|x| x == k) {
                p.remove(i);
            }
        }
        st.running.push((k.clone(), Instant::now()));
        st.started += 1;
        let n = if st.total > 0 { format!(" ({} of {})", st.started, st.total) } else { String::new() };
        eprintln!(
            "[{:>4.0}s] start {what}{} {:>6} {:>5} MiB{n}; {}",
            self.t0.elapsed().as_secs_f64(),
            k.0.name(),
            k.1,
            k.2,
            self.left(&st)
        );
    }

    fn end(&self, what: &str, r: &Run) {
        let mut st = self.state.lock().unwrap();
        let k: Key = (r.san, r.mode.clone(), r.ram);
        if let Some(i) = st.running.iter().position(|(x, _)| *x == k) {
            st.running.remove(i);
        }
        st.done.push((k, r.wall.as_secs_f64()));
        eprintln!(
            "[{:>4.0}s] end   {}{} {:>6} {:>5} MiB: exit {} {} wall {:.1}s workload {:.2}s{}; {}",
            self.t0.elapsed().as_secs_f64(),
            what,
            r.san.name(),
            r.mode,
            r.ram,
            r.exit,
            if r.completed() { "ok  " } else { "FAIL" },
            r.wall.as_secs_f64(),
            r.r("workload_ns") as f64 / 1e9,
            if r.failure.is_empty() { String::new() } else { format!(" ({}; {})", r.failure, r.log.display()) },
            self.left(&st)
        );
    }
}

/// The order boots start in. Wall-clock runs interleave sanitizers and
/// modes (as given), so that drift in the host's speed hits all alike;
/// `-icount` figures do not depend on it, so the longest boots (largest
/// RAM, sanitized modes) go first and the parallel QEMUs finish together.
fn order_jobs(cfg: &Cfg, jobs: &mut [(San, String, u32, usize)]) {
    if cfg.icount && cfg.parallel > 1 {
        let weight = |m: &str| match m {
            "off" => 0,
            "full" => 1,
            _ => 2,
        };
        jobs.sort_by_key(|(san, m, ram, rep)| (std::cmp::Reverse(*ram), std::cmp::Reverse(weight(m)), *san, *rep));
    }
}

/// Run `jobs` (sanitizer, mode, ram, rep) with `parallel` QEMUs at once.
fn run_all(cfg: &Cfg, elfs: &BTreeMap<San, PathBuf>, dir: &Path, jobs: Vec<(San, String, u32, usize)>, t0: Instant) -> Vec<Run> {
    let total = jobs.len();
    let progress = Progress::new(t0, cfg.parallel.min(total.max(1)), Some(jobs.iter().map(|(s, m, r, _)| (*s, m.clone(), *r)).collect()));
    let queue = Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>());
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..cfg.parallel.min(total.max(1)) {
            s.spawn(|| loop {
                let Some((i, (san, mode, ram, rep))) = queue.lock().unwrap().pop() else { break };
                let what = format!("run {rep} ");
                progress.start(&(san, mode.clone(), ram), &what);
                let r = run_one(cfg, san, &elfs[&san], dir, &mode, ram, rep);
                progress.end(&what, &r);
                out.lock().unwrap().push((i, r));
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    assert_eq!(v.len(), total);
    v.into_iter().map(|(_, r)| r).collect()
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// One (sanitizer, mode, ram) configuration, over its runs.
struct Entry<'a> {
    san: San,
    mode: String,
    ram: u32,
    probe: bool,
    runs: Vec<&'a Run>,
}

impl Entry<'_> {
    fn ok_runs(&self) -> Vec<&Run> {
        self.runs.iter().copied().filter(|r| r.completed()).collect()
    }
    fn completed(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(|r| r.completed())
    }
    /// The run whose memory figures are reported (the first that completed, else the first).
    fn rep(&self) -> &Run {
        self.ok_runs().first().copied().unwrap_or(self.runs[0])
    }
    fn time_ns(&self) -> u64 {
        let mut v: Vec<u64> = self.ok_runs().iter().map(|r| r.r("workload_ns")).collect();
        median(&mut v)
    }
    fn times(&self) -> Vec<u64> {
        self.ok_runs().iter().map(|r| r.r("workload_ns")).collect()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB
}

/// `--smp N`: the workload's times and TLB shootdowns per configuration
/// (the guest's `wl-result` fields: IPI rounds, those of shadow remaps,
/// IPIs served, TSC cycles serving them and from entering a shootdown to
/// its last acknowledgement; under --icount cycles are instructions, and
/// the shooters' latency includes what the other CPUs ran meanwhile).
fn smp_table(t: &mut String, cfg: &Cfg, entries: &[Entry]) {
    let _ = writeln!(t, "\nSeveral CPUs ({} CPUs, jobs on every CPU{}): time of each run (median; min-max), TLB shootdowns during the build:\n", cfg.smp, if cfg.icount { ", -icount: CPUs round-robin, times = instructions of all CPUs" } else { ", multi-threaded TCG: wall clock" });
    let _ = writeln!(t, "| RAM MiB | sanitizer | mode | workload s (median) | min-max s | shootdowns | shadow | per s | IPIs served | serving cycles | per IPI | share of time | shooter latency per shootdown |");
    let _ = writeln!(t, "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for e in entries.iter().filter(|e| e.completed()) {
        let r = e.rep();
        let v = e.times();
        let (lo, hi) = (v.iter().min().copied().unwrap_or(0), v.iter().max().copied().unwrap_or(0));
        let (n, ipis, serve) = (r.r("shootdowns"), r.r("shootdown_ipis"), r.r("shootdown_serve_tsc"));
        let secs = r.r("workload_ns") as f64 / 1e9;
        // Cycles to ns: the guest's TSC rate (1 GHz under -icount).
        let hz = r.r("tsc_hz").max(1) as f64;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} | {:.2}-{:.2} | {} | {} | {:.0} | {} | {} | {:.0} | {:.3}% | {:.0} |",
            e.ram,
            e.san.name(),
            e.mode,
            e.time_ns() as f64 / 1e9,
            lo as f64 / 1e9,
            hi as f64 / 1e9,
            n,
            r.r("shootdowns_shadow"),
            if secs > 0.0 { n as f64 / secs } else { 0.0 },
            ipis,
            serve,
            if ipis > 0 { serve as f64 / ipis as f64 } else { 0.0 },
            if secs > 0.0 { 100.0 * serve as f64 / hz / secs } else { 0.0 },
            if n > 0 { r.r("shootdown_tsc") as f64 / n as f64 } else { 0.0 }
        );
    }
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn write_json(path: &Path, cfg: &Cfg, entries: &[Entry]) {
    let mut s = String::from("[\n");
    for (i, e) in entries.iter().enumerate() {
        let r = e.rep();
        let g = |k: &str| r.r(k);
        let times: Vec<String> = e.times().iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            s,
            "  {{\"sanitizer\": \"{}\", \"mode\": \"{}\", \"ram_mib\": {}, \"completed\": {}, \"probe\": {}, \"exit\": {}, \
\"metadata_init_bytes\": {}, \"usable_bytes\": {}, \"ondemand_peak_bytes\": {}, \"ondemand_end_bytes\": {}, \
\"ondemand_before_bytes\": {}, \"min_free_bytes\": {}, \"workload_ns\": {}, \"workload_ns_runs\": [{}], \
\"slowpath_checks\": {}, \"reports\": {}, \"slab_allocs\": {}, \"profile\": \"{}\", \"checks\": \"{}\", \"tracked_peak_bytes\": {}, \
\"files\": {}, \"shrunk_dentries\": {}, \"shrunk_inodes\": {}, \
\"pagecache_peak_bytes\": {}, \"reclaimed_pages\": {}, \"managed_bytes\": {}, \"units\": {}, \"jobs\": {}, \"seed\": {}, \
\"checksum\": \"{}\", \"failure\": \"{}\", \"log\": \"{}\"}}{}",
            e.san.name(),
            e.mode,
            e.ram,
            e.completed(),
            e.probe,
            r.exit,
            g("metadata_init_bytes"),
            g("usable_bytes"),
            g("ondemand_peak_bytes"),
            g("ondemand_end_bytes"),
            g("ondemand_before_bytes"),
            g("min_free_bytes"),
            e.time_ns(),
            times.join(", "),
            g("slowpath_checks"),
            g("reports").max(r.reports_in_log as u64),
            g("slab_allocs"),
            json_escape(&r.profile(cfg)),
            checks_of(cfg, e.san).name(),
            g("tracked_peak_bytes"),
            g("files"),
            g("shrunk_dentries"),
            g("shrunk_inodes"),
            g("pagecache_peak_bytes"),
            g("reclaimed_pages"),
            g("managed_bytes"),
            cfg.units,
            cfg.jobs,
            cfg.seed,
            r.result.as_ref().and_then(|x| x.get("checksum")).unwrap_or(""),
            json_escape(&r.failure),
            json_escape(&r.log.display().to_string()),
            if i + 1 == entries.len() { "" } else { "," }
        );
    }
    s.push_str("]\n");
    std::fs::write(path, s).expect("write results.json");
}

/// The on-demand peak in units of the metadata the tracked peak needs:
/// KASAN 1 shadow byte per 8 (1.00 x tracked/8 = exactly the shadow of the
/// tracked memory), KMSAN 1:1 shadow + 1:1 origins (2.00 x tracked).
fn od_ratio(san: San, od: u64, tracked: u64) -> String {
    if tracked == 0 {
        return "-".into();
    }
    match san {
        San::Kasan => format!("{:.2} x tracked/8", od as f64 / (tracked as f64 / 8.0)),
        San::Kmsan => format!("{:.2} x tracked", od as f64 / tracked as f64),
    }
}

/// Issue 11's targets (KASAN kernel, on the workload's profile as run):
/// at 1 GiB on-demand <= 1.1 x tracked/8, net available >= 95% of RAM and
/// time hybrid/full <= 1.00; at 4 GiB net available >= 98% of RAM.
fn issue11_targets<'a>(t: &mut String, cfg: &Cfg, find: &dyn Fn(&str, u32) -> Option<&'a Entry<'a>>) {
    let profile = cfg.profile.as_deref().unwrap_or("build");
    let _ = writeln!(t, "\nIssue 11 targets, KASAN kernel, profile {profile}, checks {}:\n", checks_of(cfg, San::Kasan).name());
    let mut target = |ok: Option<bool>, text: String| {
        let _ = writeln!(t, "- [{}] {}", match ok { Some(true) => "met", Some(false) => "NOT met", None => "not measured" }, text);
    };
    let hybrid = |ram: u32| find("hybrid", ram).filter(|h| h.completed());
    let net = |h: &Entry, ram: u32| {
        let r = h.rep();
        let n = r.r("usable_bytes").saturating_sub(r.r("ondemand_peak_bytes"));
        (n as f64 / (ram as f64 * MIB), mib(n))
    };
    match hybrid(1024) {
        Some(h) => {
            let r = h.rep();
            let (od, tracked) = (r.r("ondemand_peak_bytes") as f64, r.r("tracked_peak_bytes") as f64);
            let x = if tracked > 0.0 { od / (tracked / 8.0) } else { f64::INFINITY };
            target(Some(x <= 1.1), format!("1 GiB: on-demand peak <= 1.1 x tracked/8: {x:.2} ({:.1} MiB for a tracked peak of {:.1} MiB)", od / MIB, tracked / MIB));
            let (frac, n) = net(h, 1024);
            target(Some(frac >= 0.95), format!("1 GiB: net available >= 95% of RAM: {:.1}% ({n:.0} MiB)", 100.0 * frac));
            match find("full", 1024).filter(|f| f.completed() && f.time_ns() > 0) {
                Some(f) => {
                    let q = h.time_ns() as f64 / f.time_ns() as f64;
                    target(
                        Some(q <= 1.0),
                        format!("1 GiB: time hybrid/full <= 1.00: {q:.3} ({:.2} s / {:.2} s; hybrid slow-path checks {})", h.time_ns() as f64 / 1e9, f.time_ns() as f64 / 1e9, r.r("slowpath_checks")),
                    );
                }
                None => target(None, "1 GiB: time hybrid/full <= 1.00 (no completed full run at 1024 MiB)".into()),
            }
        }
        None => target(None, "1 GiB targets (no completed hybrid run at 1024 MiB)".into()),
    }
    match hybrid(4096) {
        Some(h) => {
            let (frac, n) = net(h, 4096);
            target(Some(frac >= 0.98), format!("4 GiB: net available >= 98% of RAM: {:.1}% ({n:.0} MiB)", 100.0 * frac));
        }
        None => target(None, "4 GiB: net available >= 98% of RAM (no completed hybrid run at 4096 MiB)".into()),
    }
}

/// CPU seconds of this process's waited-for children (the nested cargo,
/// QEMU): cutime + cstime of /proc/self/stat, in USER_HZ (100 on Linux).
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_ascii_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // cutime and cstime are fields 16 and 17 (1-based), 13 and 14 here.
    (f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) as f64 / 100.0
}

/// The 1-minute load average (/proc/loadavg), "?" when unknown.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_ascii_whitespace().next().map(str::to_string)).unwrap_or_else(|| "?".into())
}

/// The RAM size whose samples are plotted: `--plot-ram` when it was run,
/// else the nearest size that was.
fn plot_size(cfg: &Cfg, entries: &[Entry]) -> Option<u32> {
    let run: Vec<u32> = entries.iter().filter(|e| !e.probe).map(|e| e.ram).collect();
    if run.contains(&cfg.plot_ram) {
        return Some(cfg.plot_ram);
    }
    run.into_iter().min_by_key(|&r| (r.abs_diff(cfg.plot_ram), r))
}

/// Memory over time: one row per (sanitizer, mode) at `ram` MiB, the
/// whole memory on the left, the sanitizer's memory on the right. Time and
/// sanitizer-memory axes are shared by the rows of one sanitizer.
fn plot(path: &Path, cfg: &Cfg, entries: &[Entry], ram: u32) -> Result<(), String> {
    use plotters::prelude::*;
    let panels: Vec<&Entry> = cfg
        .sanitizers
        .iter()
        .flat_map(|&san| cfg.modes.iter().map(move |m| (san, m)))
        .filter_map(|(san, m)| entries.iter().find(|e| e.san == san && &e.mode == m && e.ram == ram && !e.probe))
        .collect();
    if panels.is_empty() {
        return Err(format!("no runs at {ram} MiB to plot"));
    }
    let h = 330 * panels.len() as u32;
    let root = SVGBackend::new(path, (1400, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows = root.split_evenly((panels.len(), 1));
    let split: Vec<_> = rows.iter().map(|r| r.split_horizontally(900)).collect();
    let areas: Vec<_> = split.iter().map(|(l, _)| l.clone()).collect();
    let zooms: Vec<_> = split.iter().map(|(_, r)| r.clone()).collect();
    // Right column: what the sanitizer holds (metadata at init + on-demand
    // metadata), same scale for all modes of one sanitizer.
    let zmax = |san: San| {
        panels
            .iter()
            .filter(|e| e.san == san)
            .map(|e| {
                let r = e.rep();
                let od = r.samples.iter().filter_map(|s| s.u64("ondemand")).max().unwrap_or(0);
                mib(r.r("metadata_init_bytes") + od.max(r.r("ondemand_peak_bytes")))
            })
            .fold(0.5f64, f64::max)
            * 1.15
    };
    let tmax = |san: San| {
        panels
            .iter()
            .filter(|e| e.san == san)
            .flat_map(|e| e.rep().samples.iter().filter_map(|s| s.u64("t_ns")))
            .max()
            .unwrap_or(1) as f64
            / 1e9
    };
    for ((area, zoom), &e) in areas.iter().zip(zooms.iter()).zip(panels.iter()) {
        let r = e.rep();
        let (tmax, zmax) = (tmax(e.san), zmax(e.san));
        let ram = e.ram as f64;
        let meta = mib(r.r("metadata_init_bytes"));
        let status = if e.completed() {
            format!("workload {:.1} s", e.time_ns() as f64 / 1e9)
        } else {
            format!("DID NOT COMPLETE ({})", r.failure.chars().take(60).collect::<String>())
        };
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{} {} at {} MiB: metadata at init {:.1} MiB, on-demand peak {:.2} MiB, {}",
                    e.san.name().to_ascii_uppercase(),
                    e.mode,
                    e.ram,
                    meta,
                    mib(r.r("ondemand_peak_bytes")),
                    status
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..tmax.max(0.001), 0f64..ram)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time in workload (s)")
            .y_desc("MiB")
            .draw()
            .map_err(|e| e.to_string())?;
        let pts = |f: &dyn Fn(&Fields) -> f64| -> Vec<(f64, f64)> {
            r.samples.iter().filter_map(|s| Some((s.u64("t_ns")? as f64 / 1e9, f(s)))).collect()
        };
        let get = |s: &Fields, k: &str| mib(s.u64(k).unwrap_or(0));
        let od_name = match e.san {
            San::Kasan => "on-demand shadow",
            San::Kmsan => "on-demand shadow+origins",
        };
        type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
        let series: Vec<Series> = vec![
            ("free", RGBColor(60, 160, 60), pts(&|s| get(s, "free"))),
            ("page cache", RGBColor(70, 110, 200), pts(&|s| get(s, "pagecache"))),
            ("slab+stacks+globals+vmalloc", RGBColor(230, 140, 20), pts(&|s| get(s, "tracked"))),
            ("anon (compiler heap)", RGBColor(150, 90, 170), pts(&|s| get(s, "anon"))),
            (od_name, RGBColor(220, 30, 30), pts(&|s| get(s, "ondemand"))),
            ("metadata at init", RGBColor(0, 0, 0), vec![(0.0, meta), (tmax, meta)]),
        ];
        for (name, color, data) in series {
            chart
                .draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        // Zoom: sanitizer memory over time.
        let mut z = ChartBuilder::on(zoom)
            .caption(format!("{} {}: sanitizer memory (MiB)", e.san.name().to_ascii_uppercase(), e.mode), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..tmax.max(0.001), 0f64..zmax)
            .map_err(|e| e.to_string())?;
        z.configure_mesh().x_desc("time (s)").draw().map_err(|e| e.to_string())?;
        let total = pts(&|s| meta + get(s, "ondemand"));
        let od = pts(&|s| get(s, "ondemand"));
        let red = RGBColor(220, 30, 30);
        z.draw_series(LineSeries::new(total, BLACK.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("metadata at init + on-demand")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
        z.draw_series(LineSeries::new(od, red.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(od_name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
        z.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The smallest RAM per (sanitizer, mode): probe below the smallest size it
/// completes at (56, 48, .. MiB until a failure), then bisect down to 2 MiB
/// between the last success and the first failure. Up to `--parallel`
/// (sanitizer, mode) pairs at once.
fn probe_all(cfg: &Cfg, elfs: &BTreeMap<San, PathBuf>, dir: &Path, runs: &[Run], t0: Instant) -> Vec<Run> {
    let smallest = *cfg.sizes.iter().min().unwrap_or(&64);
    let progress = Progress::new(t0, cfg.parallel, None);
    let progress = &progress;
    let probe_one = |san: San, m: &str| -> Vec<Run> {
        let mut out = Vec::new();
        let try_size = |ram: u32, out: &mut Vec<Run>| -> bool {
            progress.start(&(san, m.to_string(), ram), "probe ");
            let r = run_one(cfg, san, &elfs[&san], dir, m, ram, 0);
            progress.end("probe ", &r);
            let ok = r.completed();
            out.push(r);
            ok
        };
        let mut pass = smallest;
        let mut fail = None;
        for ram in [56u32, 48, 40, 32, 24, 16].into_iter().filter(|&x| x < smallest) {
            if try_size(ram, &mut out) {
                pass = ram;
            } else {
                fail = Some(ram);
                break;
            }
        }
        if let Some(mut f) = fail {
            while pass - f > 2 {
                let mid = (f + (pass - f) / 2) & !1;
                if try_size(mid, &mut out) {
                    pass = mid;
                } else {
                    f = mid;
                }
            }
        }
        out
    };
    let eligible: Vec<(San, String)> = cfg
        .sanitizers
        .iter()
        .flat_map(|&san| cfg.modes.iter().map(move |m| (san, m.clone())))
        .filter(|(san, m)| {
            let at: Vec<&Run> = runs.iter().filter(|r| r.san == *san && &r.mode == m && r.ram == smallest).collect();
            !at.is_empty() && at.iter().all(|r| r.completed())
        })
        .collect();
    let queue = Mutex::new(eligible.into_iter().rev().collect::<Vec<_>>());
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..cfg.parallel {
            s.spawn(|| loop {
                let Some((san, m)) = queue.lock().unwrap().pop() else { break };
                let v = probe_one(san, &m);
                out.lock().unwrap().push(((san, m), v));
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    let mode_idx = |m: &str| cfg.modes.iter().position(|x| x == m).unwrap_or(9);
    v.sort_by_key(|((san, m), _)| (*san, mode_idx(m)));
    v.into_iter().flat_map(|(_, r)| r).collect()
}

fn main() {
    let cfg = parse_cfg();
    let dir = cfg.out.as_ref().map(|o| root().join(o)).unwrap_or_else(|| root().join("target/guest-bench"));
    std::fs::create_dir_all(dir.join("logs")).expect("create the output directory");
    let t0 = Instant::now();
    let load0 = loadavg();
    let mut elfs: BTreeMap<San, PathBuf> = BTreeMap::new();
    for &san in &cfg.sanitizers {
        let elf = build_guest_san(san, bench_profile(&cfg, san), &build_dir(&dir, san)).unwrap_or_else(|e| {
            eprintln!("guest_memory: {} kernel: {e}", san.name());
            std::process::exit(1)
        });
        elfs.insert(san, elf);
    }
    let (build_s, build_cpu) = (t0.elapsed().as_secs_f64(), children_cpu_s());
    let san_names: Vec<&str> = cfg.sanitizers.iter().map(|s| s.name()).collect();
    eprintln!(
        "guest_memory: {} x {} modes x {:?} MiB x {} run(s), units={} jobs={} seed={}, {} QEMU at once",
        san_names.join("+"),
        cfg.modes.len(),
        cfg.sizes,
        cfg.runs,
        cfg.units,
        cfg.jobs,
        cfg.seed,
        cfg.parallel
    );
    // Interleave sanitizers and modes so that drift in the host's speed hits all alike.
    let mut jobs = Vec::new();
    for rep in 0..cfg.runs {
        for &ram in &cfg.sizes {
            for &san in &cfg.sanitizers {
                for m in &cfg.modes {
                    jobs.push((san, m.clone(), ram, rep));
                }
            }
        }
    }
    order_jobs(&cfg, &mut jobs);
    let mut runs = run_all(&cfg, &elfs, &dir, jobs, t0);

    let mut probe_sizes: Vec<(San, String, u32)> = Vec::new();
    if cfg.probe {
        for r in probe_all(&cfg, &elfs, &dir, &runs, t0) {
            probe_sizes.push((r.san, r.mode.clone(), r.ram));
            runs.push(r);
        }
    }

    // Group into entries: by size, then sanitizer, then mode.
    let mut keys: Vec<(San, String, u32)> = Vec::new();
    for r in &runs {
        let k = (r.san, r.mode.clone(), r.ram);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mode_idx = |m: &str| cfg.modes.iter().position(|x| x == m).unwrap_or(9);
    let san_idx = |s: San| cfg.sanitizers.iter().position(|&x| x == s).unwrap_or(9);
    keys.sort_by_key(|(san, m, ram)| (*ram, san_idx(*san), mode_idx(m)));
    let entries: Vec<Entry> = keys
        .iter()
        .map(|(san, m, ram)| Entry {
            san: *san,
            mode: m.clone(),
            ram: *ram,
            probe: probe_sizes.contains(&(*san, m.clone(), *ram)),
            runs: runs.iter().filter(|r| r.san == *san && &r.mode == m && r.ram == *ram).collect(),
        })
        .collect();
    let find = |san: San, m: &str, ram: u32| entries.iter().find(|e| e.san == san && e.mode == m && e.ram == ram);

    write_json(&dir.join("results.json"), &cfg, &entries);
    let svg = dir.join("memory.svg");
    let plot_ram = plot_size(&cfg, &entries);
    match plot_ram {
        Some(ram) => {
            if let Err(e) = plot(&svg, &cfg, &entries, ram) {
                eprintln!("guest_memory: plot failed: {e}");
            }
        }
        None => eprintln!("guest_memory: nothing to plot"),
    }

    // ---- tables --------------------------------------------------------------
    let sec = |ns: u64| if ns > 0 { format!("{:.2}", ns as f64 / 1e9) } else { "-".to_string() };
    let ratio = |a: u64, b: u64| if a > 0 && b > 0 { format!("{:.3}", a as f64 / b as f64) } else { "-".into() };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Workload: profile {}, units={} jobs={} seed={} (kernel-build model, tests/guest/src/workload), {} run(s) per configuration, QEMU TCG{}, optimized guests ({}){}.\n",
        cfg.profile.as_deref().unwrap_or("build"),
        cfg.units,
        cfg.jobs,
        cfg.seed,
        cfg.runs,
        if cfg.icount { " with -icount shift=0 (times = guest instructions x 1 ns)" } else { " (times = wall clock from the TSC, affected by host load)" },
        cfg.sanitizers
            .iter()
            .map(|s| format!("{}: profile {}", s.name().to_ascii_uppercase(), bench_profile(&cfg, *s)))
            .collect::<Vec<_>>()
            .join("; "),
        if cfg.append.is_empty() { String::new() } else { format!(", extra cmdline `{}`", cfg.append) }
    );

    // Both sanitizers side by side, one row per (size, sanitizer).
    let _ = writeln!(t, "Per sanitizer and size (MemTotal = RAM the page allocator has when the workload starts; net available = hybrid MemTotal - hybrid on-demand peak; **no** = did not complete, see the per-run table):\n");
    let _ = writeln!(t, "| RAM MiB | sanitizer | completes off / full / hybrid | MemTotal off / full / hybrid MiB | hybrid metadata at init MiB | hybrid on-demand peak MiB | tracked peak MiB | on-demand / tracked peak | net available hybrid MiB | net / RAM | time off / full / hybrid (s) | hybrid/full | hybrid slow-path checks |");
    let _ = writeln!(t, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for &ram in &cfg.sizes {
        for &san in &cfg.sanitizers {
            let three = |f: &dyn Fn(&Entry) -> String| -> String {
                ["off", "full", "hybrid"].iter().map(|m| find(san, m, ram).map(f).unwrap_or_else(|| "-".into())).collect::<Vec<_>>().join(" / ")
            };
            if ["off", "full", "hybrid"].iter().all(|m| find(san, m, ram).is_none()) {
                continue;
            }
            let completes = three(&|e| if e.completed() { "yes".into() } else { "**no**".into() });
            let memtotal = three(&|e| match e.rep().get("usable_bytes") {
                Some(b) => format!("{:.0}", mib(b)),
                None => "?".into(),
            });
            let times = three(&|e| sec(e.time_ns()));
            let (full, hyb) = (find(san, "full", ram), find(san, "hybrid", ram));
            let (meta, od, tracked, odratio, net, netpct, checks) = match hyb {
                Some(h) => {
                    let hr = h.rep();
                    let tracked = hr.r("tracked_peak_bytes");
                    let od = hr.r("ondemand_peak_bytes");
                    let ok = h.completed();
                    // KASAN: 1 shadow byte per 8 (ideal 1.0 x tracked/8); KMSAN: 1:1 shadow + 1:1 origins (ideal 2.0 x tracked).
                    let odratio = if ok { od_ratio(san, od, tracked) } else { "-".to_string() };
                    let net = hr.r("usable_bytes").saturating_sub(od);
                    (
                        format!("{:.2}", mib(hr.r("metadata_init_bytes"))),
                        if ok { format!("{:.2}", mib(od)) } else { "-".into() },
                        if ok { format!("{:.2}", mib(tracked)) } else { "-".into() },
                        odratio,
                        if ok { format!("{:.0}", mib(net)) } else { "-".into() },
                        if ok { format!("{:.1}%", 100.0 * net as f64 / (ram as f64 * MIB)) } else { "-".into() },
                        if ok { hr.r("slowpath_checks").to_string() } else { "-".into() },
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ram,
                san.name(),
                completes,
                memtotal,
                meta,
                od,
                tracked,
                odratio,
                net,
                netpct,
                times,
                ratio(hyb.map(|e| e.time_ns()).unwrap_or(0), full.map(|e| e.time_ns()).unwrap_or(0)),
                checks
            );
        }
    }
    let _ = writeln!(t, "\non-demand / tracked peak: KASAN's shadow is 1 byte per 8 data bytes, so its on-demand peak is given in units of tracked/8 (1.00 = exactly the shadow of the tracked memory); KMSAN's metadata is 1:1 shadow + 1:1 origins, so its on-demand peak is given in units of the tracked peak itself (2.00 = exactly the shadow and origins of the tracked memory). Tracked = slab+stacks+globals+vmalloc.\n");

    let _ = writeln!(t, "Per run configuration:\n");
    let _ = writeln!(t, "| RAM MiB | sanitizer | mode | completes | metadata at init MiB | usable MiB | on-demand peak MiB | on-demand end MiB | lowest free MiB | workload s (median) | slow-path checks | reports | slab allocs |");
    let _ = writeln!(t, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for e in &entries {
        let r = e.rep();
        let _ = writeln!(
            t,
            "| {}{} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} |",
            e.ram,
            if e.probe { " (probe)" } else { "" },
            e.san.name(),
            e.mode,
            if e.completed() {
                "yes".to_string()
            } else {
                format!(
                    "**no** (exit {}): {} (log {})",
                    r.exit,
                    r.failure.replace('|', "/"),
                    r.log.strip_prefix(&dir).unwrap_or(&r.log).display()
                )
            },
            mib(r.r("metadata_init_bytes")),
            mib(r.r("usable_bytes")),
            mib(r.r("ondemand_peak_bytes")),
            mib(r.r("ondemand_end_bytes")),
            mib(r.r("min_free_bytes")),
            sec(e.time_ns()),
            r.r("slowpath_checks"),
            r.r("reports") as usize + r.reports_in_log,
            r.r("slab_allocs")
        );
    }
    let _ = writeln!(t, "\nIn the 2017 per-page-shadow proposal's terms (MemTotal = RAM the page allocator has when the workload starts; on-demand = hybrid's shadow mapped at runtime, at its peak; net available = hybrid MemTotal - on-demand peak; time = workload time hybrid/full; the proposal's figures are for KASAN, its time a kernel build's):\n");
    let _ = writeln!(t, "| RAM MiB | sanitizer | profile | MemTotal off / full / hybrid MiB | on-demand peak (hybrid) | tracked peak | on-demand / tracked | net available hybrid | net / RAM | time hybrid/full | 2017 proposal (MemTotal full / per-page, on-demand, net, time) |");
    let _ = writeln!(t, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for &ram in &cfg.sizes {
        for &san in &cfg.sanitizers {
            let Some(h) = find(san, "hybrid", ram) else { continue };
            let hr = h.rep();
            let memtotal = ["off", "full", "hybrid"]
                .iter()
                .map(|m| match find(san, m, ram) {
                    Some(e) => format!("{:.0}{}", mib(e.rep().r("usable_bytes")), if e.completed() { "" } else { " (**no**)" }),
                    None => "-".into(),
                })
                .collect::<Vec<_>>()
                .join(" / ");
            let anchor = match (san, ram) {
                (San::Kasan, 1024) => "858 / 987 MiB, 30 MiB, 957 MiB (93.5%), 1.10",
                (San::Kasan, 4096) => "3477 / 4000 MiB, 50 MiB, 3950 MiB (96.4%)",
                _ => "",
            };
            let (od, tracked) = (hr.r("ondemand_peak_bytes"), hr.r("tracked_peak_bytes"));
            let net = hr.r("usable_bytes").saturating_sub(od);
            // A hybrid run that did not complete has no on-demand peak to subtract.
            let (od_s, tr_s, ratio_s, net_s, netpct) = if h.completed() {
                (
                    format!("{:.1} MiB", mib(od)),
                    format!("{:.1} MiB", mib(tracked)),
                    od_ratio(san, od, tracked),
                    format!("{:.0} MiB", mib(net)),
                    format!("{:.1}%", 100.0 * net as f64 / (ram as f64 * MIB)),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into(), "-".into())
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ram,
                san.name(),
                hr.profile(&cfg),
                memtotal,
                od_s,
                tr_s,
                ratio_s,
                net_s,
                netpct,
                ratio(h.time_ns(), find(san, "full", ram).map(|f| f.time_ns()).unwrap_or(0)),
                anchor
            );
        }
    }
    let _ = writeln!(t, "\nWorkload time, medians of {} run(s) (s), and ratios (- = did not complete):\n", cfg.runs);
    let _ = writeln!(t, "| RAM MiB | sanitizer | off | full | hybrid | hybrid/full | hybrid/off | full/off | hybrid slow-path checks |");
    let _ = writeln!(t, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for &ram in &cfg.sizes {
        for &san in &cfg.sanitizers {
            if ["off", "full", "hybrid"].iter().all(|m| find(san, m, ram).is_none()) {
                continue;
            }
            let tm = |m: &str| find(san, m, ram).map(|e| e.time_ns()).unwrap_or(0);
            let (o, f, h) = (tm("off"), tm("full"), tm("hybrid"));
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ram,
                san.name(),
                sec(o),
                sec(f),
                sec(h),
                ratio(h, f),
                ratio(h, o),
                ratio(f, o),
                find(san, "hybrid", ram).filter(|e| e.completed()).map(|e| e.rep().r("slowpath_checks").to_string()).unwrap_or_else(|| "-".into())
            );
        }
    }
    if cfg.smp > 1 {
        smp_table(&mut t, &cfg, &entries);
    }
    let _ = writeln!(
        t,
        "\nSmallest RAM at which the workload completes{}:\n",
        if cfg.probe { "" } else { " (among the sizes run; no probing)" }
    );
    for &san in &cfg.sanitizers {
        for m in &cfg.modes {
            let mine = || entries.iter().filter(|e| e.san == san && &e.mode == m);
            let smallest = mine().filter(|e| e.completed()).map(|e| e.ram).min();
            let largest_fail = mine().filter(|e| !e.completed()).map(|e| e.ram).filter(|&r| Some(r) < smallest.or(Some(u32::MAX))).max();
            let _ = writeln!(
                t,
                "- {} {}: {}{}",
                san.name(),
                m,
                smallest.map(|s| format!("{s} MiB")).unwrap_or("none of the sizes".into()),
                largest_fail.map(|f| format!(" (fails at {f} MiB)")).unwrap_or_default()
            );
        }
    }

    // ---- targets ----------------------------------------------------------------
    let tr = 1024;
    if cfg.sanitizers.contains(&San::Kasan) {
        let _ = writeln!(t, "\nDESIGN / issue 4 targets, KASAN kernel (1024 MiB unless said):\n");
        let mut target = |ok: Option<bool>, text: String| {
            let _ = writeln!(t, "- [{}] {}", match ok { Some(true) => "met", Some(false) => "NOT met", None => "not measured" }, text);
        };
        match (find(San::Kasan, "hybrid", tr), find(San::Kasan, "full", tr)) {
            (Some(h), f) => {
                let hr = h.rep();
                let ram = tr as f64 * MIB;
                let meta = hr.r("metadata_init_bytes") as f64;
                target(
                    Some(meta <= 0.001 * ram),
                    format!(
                        "hybrid metadata at init <= 0.1% of RAM: {:.3}% ({:.2} MiB){}",
                        100.0 * meta / ram,
                        meta / MIB,
                        f.map(|f| format!("; full {:.2}%", 100.0 * f.rep().r("metadata_init_bytes") as f64 / ram)).unwrap_or_default()
                    ),
                );
                let tracked = hr.r("tracked_peak_bytes") as f64;
                let od = hr.r("ondemand_peak_bytes") as f64;
                target(
                    Some(tracked > 0.0 && od <= 1.15 * tracked / 8.0),
                    format!(
                        "hybrid on-demand peak <= 1.15 x (slab+stacks+globals+vmalloc peak)/8: {:.2} MiB vs {:.2} MiB (tracked peak {:.2} MiB; ratio {:.2} x tracked/8)",
                        od / MIB,
                        1.15 * tracked / 8.0 / MIB,
                        tracked / MIB,
                        if tracked > 0.0 { od / (tracked / 8.0) } else { 0.0 }
                    ),
                );
                let net = hr.r("usable_bytes").saturating_sub(hr.r("ondemand_peak_bytes")) as f64;
                target(Some(net >= 0.97 * ram), format!("net available (usable - on-demand peak) >= 97% of RAM: {:.2}% ({:.0} MiB)", 100.0 * net / ram, net / MIB));
                match f {
                    Some(f) if f.time_ns() > 0 && h.time_ns() > 0 => {
                        let ratio = h.time_ns() as f64 / f.time_ns() as f64;
                        target(
                            Some(ratio <= 1.03),
                            format!(
                                "workload time hybrid/full <= 1.03: {:.3} (medians {:.2} s / {:.2} s of {} run(s); hybrid slow-path checks {})",
                                ratio,
                                h.time_ns() as f64 / 1e9,
                                f.time_ns() as f64 / 1e9,
                                cfg.runs,
                                hr.r("slowpath_checks")
                            ),
                        );
                    }
                    _ => target(None, "workload time hybrid/full <= 1.03 (needs completed full and hybrid runs at 1024 MiB)".into()),
                }
            }
            _ => target(None, "1024 MiB targets (no hybrid run at 1024 MiB)".into()),
        }
        match find(San::Kasan, "hybrid", 64) {
            Some(h) => target(
                Some(h.completed() && h.rep().r("reports") == 0),
                format!(
                    "at 64 MiB the workload completes in hybrid with no report: {}",
                    if h.completed() { "completed, 0 reports".to_string() } else { format!("did not complete ({})", h.rep().failure) }
                ),
            ),
            None => target(None, "64 MiB hybrid (not run)".into()),
        }
    }
    if cfg.sanitizers.contains(&San::Kasan) {
        issue11_targets(&mut t, &cfg, &|m, ram| find(San::Kasan, m, ram));
    }
    // KMSAN has no DESIGN targets: the same figures, at the largest size run.
    if cfg.sanitizers.contains(&San::Kmsan) {
        if let Some(ram) = cfg.sizes.iter().copied().filter(|&r| find(San::Kmsan, "hybrid", r).is_some()).max() {
            let _ = writeln!(t, "\nKMSAN kernel at {ram} MiB (no DESIGN targets; metadata = 1:1 shadow + 1:1 origins):\n");
            let h = find(San::Kmsan, "hybrid", ram).expect("hybrid entry");
            let f = find(San::Kmsan, "full", ram);
            let hr = h.rep();
            let ramb = ram as f64 * MIB;
            let _ = writeln!(
                t,
                "- hybrid metadata at init: {:.3}% of RAM ({:.2} MiB){}",
                100.0 * hr.r("metadata_init_bytes") as f64 / ramb,
                mib(hr.r("metadata_init_bytes")),
                f.map(|f| format!(
                    "; full {:.2}% ({:.0} MiB), leaving full {:.0} MiB usable ({:.1}% of RAM{})",
                    100.0 * f.rep().r("metadata_init_bytes") as f64 / ramb,
                    mib(f.rep().r("metadata_init_bytes")),
                    mib(f.rep().r("usable_bytes")),
                    100.0 * f.rep().r("usable_bytes") as f64 / ramb,
                    if f.completed() { "" } else { "; full did not complete" }
                ))
                .unwrap_or_default()
            );
            if h.completed() {
                let tracked = hr.r("tracked_peak_bytes") as f64;
                let od = hr.r("ondemand_peak_bytes") as f64;
                let net = hr.r("usable_bytes").saturating_sub(hr.r("ondemand_peak_bytes")) as f64;
                let _ = writeln!(
                    t,
                    "- hybrid on-demand peak: {:.2} MiB for a tracked peak of {:.2} MiB ({:.2} x tracked; 2.00 = shadow + origins of exactly the tracked memory)",
                    od / MIB,
                    tracked / MIB,
                    if tracked > 0.0 { od / tracked } else { 0.0 }
                );
                let _ = writeln!(t, "- net available (usable - on-demand peak): {:.2}% of RAM ({:.0} MiB)", 100.0 * net / ramb, net / MIB);
                let _ = writeln!(
                    t,
                    "- workload time hybrid/full: {} ({} s / {} s; hybrid slow-path checks {})",
                    ratio(h.time_ns(), f.map(|f| f.time_ns()).unwrap_or(0)),
                    sec(h.time_ns()),
                    sec(f.map(|f| f.time_ns()).unwrap_or(0)),
                    hr.r("slowpath_checks")
                );
            } else {
                let _ = writeln!(t, "- hybrid did not complete: {} (log {})", hr.failure, hr.log.display());
            }
        }
    }
    let _ = writeln!(
        t,
        "\nPlot: {}/memory.svg ({}); data: results.json; logs: logs/<sanitizer>-<mode>-<ram>-<run>.log.",
        dir.display(),
        match plot_ram {
            Some(r) if r == cfg.plot_ram => format!("samples at {r} MiB"),
            Some(r) => format!("samples at {r} MiB, the size run nearest to --plot-ram {}", cfg.plot_ram),
            None => "no runs to plot".into(),
        }
    );
    // QEMU's CPU time does not depend on the host's load: divided by the
    // QEMUs run at once, it is about what the boots take on idle cores.
    let qemu_cpu = children_cpu_s() - build_cpu;
    let _ = writeln!(
        t,
        "Total benchmark time: {:.0} s (guest builds {:.0} s; the boots took {:.0} s of QEMU CPU time, {:.0} s with {} at once on idle cores; load average {} at the start, {} at the end).",
        t0.elapsed().as_secs_f64(),
        build_s,
        qemu_cpu,
        qemu_cpu / cfg.parallel as f64,
        cfg.parallel,
        load0,
        loadavg()
    );
    print!("{t}");
    std::fs::write(dir.join("table.md"), &t).expect("write table.md");

    // Mode- and sanitizer-independent result: every completed run built the same image.
    let sums: BTreeMap<&str, usize> = runs
        .iter()
        .filter(|r| r.completed())
        .filter_map(|r| r.result.as_ref()?.get("checksum"))
        .fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c).or_default() += 1;
            m
        });
    if sums.len() > 1 {
        eprintln!("guest_memory: WARNING: completed runs disagree on the build checksum: {sums:?}");
    }
    // Problems worth a look: sanitizer reports or broken invariants in any
    // run, or a kernel that says it ran another sanitizer or mode.
    for r in &runs {
        for (k, want) in [("sanitizer", r.san.name()), ("mode", r.mode.as_str())] {
            if let Some(got) = r.result.as_ref().and_then(|x| x.get(k)).filter(|&got| got != want) {
                eprintln!("guest_memory: WARNING: {} {} {} MiB: wl-result says {k}={got}: {}", r.san.name(), r.mode, r.ram, r.log.display());
            }
        }
        let inv = r.result.as_ref().and_then(|x| x.get("invariants"));
        if r.reports_in_log > 0 || r.r("reports") > 0 || inv == Some("bad") {
            eprintln!(
                "guest_memory: WARNING: {} {} {} MiB: {} report(s) in the log, invariants={}: {}",
                r.san.name(),
                r.mode,
                r.ram,
                r.reports_in_log,
                inv.unwrap_or("?"),
                r.log.display()
            );
        }
    }
}
