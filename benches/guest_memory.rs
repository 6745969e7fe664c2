//! Memory benchmark of the test guest: `cargo bench --bench guest_memory`.
//!
//! Boots the guest (release build, QEMU TCG) with the kernel-build-like
//! workload (`suite=workload`) in `off`, `full` and `hybrid` at 64, 128,
//! 256, 512 and 1024 MiB; below the smallest size at which a mode still
//! completes, probes smaller sizes (56, 48, 40, 32, 24 MiB) to find its
//! minimum (then bisects to 2 MiB). Several runs per configuration give
//! median workload times.
//!
//! Writes target/guest-bench/results.json (one object per mode and RAM
//! size), target/guest-bench/memory.svg (memory over time per mode),
//! target/guest-bench/table.md (the tables below), the serial logs under
//! target/guest-bench/logs/, and prints the tables and which DESIGN targets
//! are met.
//!
//! Options (after `--`), or environment variables GUEST_BENCH_<NAME>:
//!   --runs N        runs per mode and size for the time medians (3)
//!   --sizes a,b,..  RAM sizes in MiB (64,128,256,512,1024)
//!   --modes a,b     (off,full,hybrid)
//!   --units N --jobs N --seed N   workload size (240, 4, 1)
//!   --parallel N    QEMU instances at once (1; more skews the times)
//!   --no-probe      do not search below the smallest size
//!   --plot-ram N    RAM size whose samples are plotted (128)
//!   --append "..."  extra guest command-line words (e.g. kasan.mixed=private)
//!   --quick         runs 1, sizes 64,128, no probe
//!   --timeout S     per boot (1800)
//!   --icount        QEMU -icount shift=0: workload time = guest instructions
//!                   (1 ns each), immune to host load, ~3x slower to run
//!   --out DIR       output directory (target/guest-bench)
#[path = "../tests/guest_driver/mod.rs"]
mod guest_driver;

use guest_driver::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone)]
struct Cfg {
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
    timeout: u64,
    icount: bool,
    out: Option<String>,
}

fn parse_cfg() -> Cfg {
    let mut c = Cfg {
        runs: 3,
        sizes: vec![64, 128, 256, 512, 1024],
        modes: vec!["off".into(), "full".into(), "hybrid".into()],
        units: 240,
        jobs: 4,
        seed: 1,
        parallel: 1,
        probe: true,
        plot_ram: 128,
        append: String::new(),
        timeout: 1800,
        icount: false,
        out: None,
    };
    let mut args: Vec<String> = Vec::new();
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix("GUEST_BENCH_") {
            let name = name.to_ascii_lowercase().replace('_', "-");
            args.push(format!("--{name}"));
            if !v.is_empty() && name != "quick" && name != "no-probe" && name != "icount" {
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
            "--runs" => c.runs = val().parse().expect("--runs N"),
            "--sizes" => c.sizes = list(val()),
            "--modes" => c.modes = val().split(',').map(|s| s.trim().to_string()).collect(),
            "--units" => c.units = val().parse().expect("--units N"),
            "--jobs" => c.jobs = val().parse().expect("--jobs N"),
            "--seed" => c.seed = val().parse().expect("--seed N"),
            "--parallel" => c.parallel = val().parse::<usize>().expect("--parallel N").max(1),
            "--plot-ram" => c.plot_ram = val().parse().expect("--plot-ram N"),
            "--append" => c.append = val(),
            "--timeout" => c.timeout = val().parse().expect("--timeout S"),
            "--no-probe" => c.probe = false,
            "--icount" => c.icount = true,
            "--out" => c.out = Some(val()),
            "--quick" => {
                c.runs = 1;
                c.sizes = vec![64, 128];
                c.probe = false;
                c.plot_ram = 128;
            }
            "--bench" => {}
            other => eprintln!("guest_memory: ignoring argument {other}"),
        }
    }
    c.runs = c.runs.max(1);
    c
}

struct Run {
    mode: String,
    ram: u32,
    exit: i32,
    wall: Duration,
    result: Option<Fields>,
    samples: Vec<Fields>,
    reports_in_log: usize,
    failure: String,
}

impl Run {
    fn completed(&self) -> bool {
        self.exit == EXIT_SUCCESS
            && self.reports_in_log == 0
            && self.result.as_ref().is_some_and(|r| r.get("invariants") == Some("ok") && r.u64("reports") == Some(0))
    }
    fn r(&self, k: &str) -> u64 {
        self.result.as_ref().and_then(|r| r.u64(k)).unwrap_or(0)
    }
}

fn run_one(cfg: &Cfg, elf: &Path, dir: &Path, mode: &str, ram: u32, rep: usize) -> Run {
    let b = Boot {
        elf,
        san: San::Kasan,
        mode,
        suite: "workload",
        ram_mib: ram,
        append: format!("units={} jobs={} seed={} samples=300 {}", cfg.units, cfg.jobs, cfg.seed, cfg.append),
        timeout: Duration::from_secs(cfg.timeout),
        log: dir.join("logs").join(format!("{mode}-{ram}-{rep}.log")),
        icount: cfg.icount,
    };
    let out = boot(&b).unwrap_or_else(|e| panic!("{e}"));
    let failure = if out.succeeded() {
        String::new()
    } else {
        out.log
            .lines()
            .rev()
            .find(|l| l.starts_with("wl-oom") || l.starts_with("wl-fail") || l.starts_with("wl-error") || l.contains("PANIC") || l.contains("BUG:"))
            .unwrap_or(if out.exit == 124 { "timeout" } else { "no message" })
            .to_string()
    };
    Run {
        mode: mode.into(),
        ram,
        exit: out.exit,
        wall: out.wall,
        result: out.line("wl-result"),
        samples: out.lines("wl-sample"),
        reports_in_log: out.kasan_reports(),
        failure,
    }
}

/// Run `jobs` (mode, ram, rep) with `parallel` QEMUs at once.
fn run_all(cfg: &Cfg, elf: &Path, dir: &Path, jobs: Vec<(String, u32, usize)>) -> Vec<Run> {
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>());
    let out = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cfg.parallel {
            s.spawn(|| loop {
                let Some((i, (mode, ram, rep))) = queue.lock().unwrap().pop() else { break };
                let r = run_one(cfg, elf, dir, &mode, ram, rep);
                eprintln!(
                    "[{:>4.0}s] {:>6} {:>5} MiB run {}: exit {} {} wall {:.1}s workload {:.2}s{}",
                    t0.elapsed().as_secs_f64(),
                    mode,
                    ram,
                    rep,
                    r.exit,
                    if r.completed() { "ok  " } else { "FAIL" },
                    r.wall.as_secs_f64(),
                    r.r("workload_ns") as f64 / 1e9,
                    if r.failure.is_empty() { String::new() } else { format!(" ({})", r.failure) }
                );
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

/// One (mode, ram) configuration, over its runs.
struct Entry<'a> {
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
            "  {{\"mode\": \"{}\", \"ram_mib\": {}, \"completed\": {}, \"probe\": {}, \"exit\": {}, \
\"metadata_init_bytes\": {}, \"usable_bytes\": {}, \"ondemand_peak_bytes\": {}, \"ondemand_end_bytes\": {}, \
\"ondemand_before_bytes\": {}, \"min_free_bytes\": {}, \"workload_ns\": {}, \"workload_ns_runs\": [{}], \
\"slowpath_checks\": {}, \"reports\": {}, \"slab_allocs\": {}, \"tracked_peak_bytes\": {}, \
\"pagecache_peak_bytes\": {}, \"reclaimed_pages\": {}, \"managed_bytes\": {}, \"units\": {}, \"jobs\": {}, \"seed\": {}, \
\"checksum\": \"{}\", \"failure\": \"{}\"}}{}",
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
            g("tracked_peak_bytes"),
            g("pagecache_peak_bytes"),
            g("reclaimed_pages"),
            g("managed_bytes"),
            cfg.units,
            cfg.jobs,
            cfg.seed,
            r.result.as_ref().and_then(|x| x.get("checksum")).unwrap_or(""),
            json_escape(&r.failure),
            if i + 1 == entries.len() { "" } else { "," }
        );
    }
    s.push_str("]\n");
    std::fs::write(path, s).expect("write results.json");
}

fn plot(path: &Path, cfg: &Cfg, entries: &[Entry]) -> Result<(), String> {
    use plotters::prelude::*;
    let panels: Vec<&Entry> = cfg
        .modes
        .iter()
        .filter_map(|m| entries.iter().find(|e| &e.mode == m && e.ram == cfg.plot_ram && !e.probe))
        .collect();
    if panels.is_empty() {
        return Err(format!("no runs at {} MiB to plot", cfg.plot_ram));
    }
    let h = 330 * panels.len() as u32;
    let root = SVGBackend::new(path, (1400, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows = root.split_evenly((panels.len(), 1));
    let split: Vec<_> = rows.iter().map(|r| r.split_horizontally(900)).collect();
    let areas: Vec<_> = split.iter().map(|(l, _)| l.clone()).collect();
    let zooms: Vec<_> = split.iter().map(|(_, r)| r.clone()).collect();
    // Right column: what the sanitizer holds (metadata at init + on-demand shadow), same scale for all modes.
    let zmax = panels
        .iter()
        .map(|e| {
            let r = e.rep();
            let od = r.samples.iter().filter_map(|s| s.u64("ondemand")).max().unwrap_or(0);
            mib(r.r("metadata_init_bytes") + od.max(r.r("ondemand_peak_bytes")))
        })
        .fold(0.5f64, f64::max)
        * 1.15;
    let tmax = panels
        .iter()
        .flat_map(|e| e.rep().samples.iter().filter_map(|s| s.u64("t_ns")))
        .max()
        .unwrap_or(1) as f64
        / 1e9;
    for ((area, zoom), e) in areas.iter().zip(zooms.iter()).zip(panels) {
        let r = e.rep();
        let ram = e.ram as f64;
        let meta = mib(r.r("metadata_init_bytes"));
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{} at {} MiB: metadata at init {:.1} MiB, on-demand peak {:.2} MiB, workload {:.1} s",
                    e.mode,
                    e.ram,
                    meta,
                    mib(r.r("ondemand_peak_bytes")),
                    e.time_ns() as f64 / 1e9
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
        type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
        let series: Vec<Series> = vec![
            ("free", RGBColor(60, 160, 60), pts(&|s| get(s, "free"))),
            ("page cache", RGBColor(70, 110, 200), pts(&|s| get(s, "pagecache"))),
            ("slab+stacks+globals+vmalloc", RGBColor(230, 140, 20), pts(&|s| get(s, "tracked"))),
            ("anon (compiler heap)", RGBColor(150, 90, 170), pts(&|s| get(s, "anon"))),
            ("on-demand shadow", RGBColor(220, 30, 30), pts(&|s| get(s, "ondemand"))),
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
            .caption(format!("{}: sanitizer memory (MiB)", e.mode), ("sans-serif", 16))
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
            .label("on-demand shadow")
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

fn main() {
    let cfg = parse_cfg();
    let dir = cfg.out.as_ref().map(|o| root().join(o)).unwrap_or_else(|| root().join("target/guest-bench"));
    std::fs::create_dir_all(dir.join("logs")).expect("create the output directory");
    let t0 = Instant::now();
    let elf = build_guest("release", &root().join("target/guest-bench/build")).unwrap_or_else(|e| {
        eprintln!("guest_memory: {e}");
        std::process::exit(1)
    });
    eprintln!(
        "guest_memory: {} modes x {:?} MiB x {} run(s), units={} jobs={} seed={}, {} QEMU at once",
        cfg.modes.len(),
        cfg.sizes,
        cfg.runs,
        cfg.units,
        cfg.jobs,
        cfg.seed,
        cfg.parallel
    );
    // Interleave modes so that drift in the host's speed hits all alike.
    let mut jobs = Vec::new();
    for rep in 0..cfg.runs {
        for &ram in &cfg.sizes {
            for m in &cfg.modes {
                jobs.push((m.clone(), ram, rep));
            }
        }
    }
    let mut runs = run_all(&cfg, &elf, &dir, jobs);

    // The smallest RAM per mode: probe below the smallest size it completes
    // at (56, 48, .. MiB until a failure), then bisect down to 2 MiB between
    // the last success and the first failure. Modes in parallel when --parallel > 1.
    let mut probe_sizes = Vec::new();
    if cfg.probe {
        let smallest = *cfg.sizes.iter().min().unwrap_or(&64);
        let probe_mode = |m: &String| -> Vec<Run> {
            let mut out = Vec::new();
            let try_size = |ram: u32, out: &mut Vec<Run>| -> bool {
                let r = run_one(&cfg, &elf, &dir, m, ram, 0);
                eprintln!(
                    "probe {:>6} {:>3} MiB: exit {} {}{}",
                    m,
                    ram,
                    r.exit,
                    if r.completed() { "ok" } else { "FAIL" },
                    if r.failure.is_empty() { String::new() } else { format!(" ({})", r.failure) }
                );
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
        let eligible: Vec<&String> = cfg
            .modes
            .iter()
            .filter(|m| runs.iter().filter(|r| &r.mode == *m && r.ram == smallest).all(|r| r.completed()))
            .collect();
        let probed: Vec<Run> = if cfg.parallel > 1 {
            std::thread::scope(|s| {
                let hs: Vec<_> = eligible.iter().map(|m| s.spawn(|| probe_mode(m))).collect();
                hs.into_iter().flat_map(|h| h.join().expect("probe thread")).collect()
            })
        } else {
            eligible.iter().flat_map(|m| probe_mode(m)).collect()
        };
        for r in probed {
            probe_sizes.push((r.mode.clone(), r.ram));
            runs.push(r);
        }
    }

    // Group into entries.
    let mut keys: Vec<(String, u32)> = Vec::new();
    for r in &runs {
        if !keys.contains(&(r.mode.clone(), r.ram)) {
            keys.push((r.mode.clone(), r.ram));
        }
    }
    let mode_idx = |m: &str| cfg.modes.iter().position(|x| x == m).unwrap_or(9);
    keys.sort_by_key(|(m, ram)| (*ram, mode_idx(m)));
    let entries: Vec<Entry> = keys
        .iter()
        .map(|(m, ram)| Entry {
            mode: m.clone(),
            ram: *ram,
            probe: probe_sizes.contains(&(m.clone(), *ram)),
            runs: runs.iter().filter(|r| &r.mode == m && r.ram == *ram).collect(),
        })
        .collect();
    let find = |m: &str, ram: u32| entries.iter().find(|e| e.mode == m && e.ram == ram);

    write_json(&dir.join("results.json"), &cfg, &entries);
    let svg = dir.join("memory.svg");
    if let Err(e) = plot(&svg, &cfg, &entries) {
        eprintln!("guest_memory: plot failed: {e}");
    }

    // ---- tables --------------------------------------------------------------
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Workload: units={} jobs={} seed={} (kernel-build model, tests/guest/src/workload), {} run(s) per configuration, QEMU TCG{}, release guest{}.\n",
        cfg.units,
        cfg.jobs,
        cfg.seed,
        cfg.runs,
        if cfg.icount { " with -icount shift=0 (times = guest instructions x 1 ns)" } else { " (times = wall clock from the TSC, affected by host load)" },
        if cfg.append.is_empty() { String::new() } else { format!(", extra cmdline `{}`", cfg.append) }
    );
    let _ = writeln!(t, "| RAM MiB | mode | completes | metadata at init MiB | usable MiB | on-demand peak MiB | on-demand end MiB | lowest free MiB | workload s (median) | slow-path checks | reports | slab allocs |");
    let _ = writeln!(t, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for e in &entries {
        let r = e.rep();
        let _ = writeln!(
            t,
            "| {}{} | {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} |",
            e.ram,
            if e.probe { " (probe)" } else { "" },
            e.mode,
            if e.completed() { "yes".to_string() } else { format!("no: {}", r.failure.replace('|', "/")) },
            mib(r.r("metadata_init_bytes")),
            mib(r.r("usable_bytes")),
            mib(r.r("ondemand_peak_bytes")),
            mib(r.r("ondemand_end_bytes")),
            mib(r.r("min_free_bytes")),
            if e.time_ns() > 0 { format!("{:.2}", e.time_ns() as f64 / 1e9) } else { "-".into() },
            r.r("slowpath_checks"),
            r.r("reports") as usize + r.reports_in_log,
            r.r("slab_allocs")
        );
    }
    let _ = writeln!(t, "\nIn the 2017 per-page-shadow proposal's terms (MemTotal = RAM the page allocator has after init; net available = MemTotal - on-demand shadow at peak):\n");
    let _ = writeln!(t, "| RAM MiB | MemTotal full | MemTotal hybrid | on-demand at runtime (hybrid peak) | net available hybrid | net available / RAM | 2017 proposal (full / per-page / on-demand / net) |");
    let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---|");
    for &ram in &cfg.sizes {
        let (Some(f), Some(h)) = (find("full", ram), find("hybrid", ram)) else { continue };
        let (fr, hr) = (f.rep(), h.rep());
        let net = hr.r("usable_bytes").saturating_sub(hr.r("ondemand_peak_bytes"));
        let anchor = match ram {
            1024 => "858 / 987 / 30 / 957 MiB (kernel build)",
            4096 => "3477 / 4000 / 50 / 3950 MiB",
            _ => "",
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} MiB | {:.0} MiB | {:.1} MiB | {:.0} MiB | {:.1}% | {} |",
            ram,
            mib(fr.r("usable_bytes")),
            mib(hr.r("usable_bytes")),
            mib(hr.r("ondemand_peak_bytes")),
            mib(net),
            100.0 * net as f64 / (ram as f64 * MIB),
            anchor
        );
    }
    let _ = writeln!(t, "\nWorkload time, medians of {} run(s) (s), and ratios:\n", cfg.runs);
    let _ = writeln!(t, "| RAM MiB | off | full | hybrid | hybrid/full | hybrid/off | full/off | hybrid slow-path checks |");
    let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &ram in &cfg.sizes {
        let tm = |m: &str| find(m, ram).map(|e| e.time_ns()).unwrap_or(0) as f64 / 1e9;
        let ratio = |a: f64, b: f64| if a > 0.0 && b > 0.0 { format!("{:.3}", a / b) } else { "-".into() };
        let (o, f, h) = (tm("off"), tm("full"), tm("hybrid"));
        let _ = writeln!(
            t,
            "| {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            ram,
            o,
            f,
            h,
            ratio(h, f),
            ratio(h, o),
            ratio(f, o),
            find("hybrid", ram).map(|e| e.rep().r("slowpath_checks")).unwrap_or(0)
        );
    }
    let _ = writeln!(t, "\nSmallest RAM at which the workload completes:\n");
    for m in &cfg.modes {
        let smallest = entries.iter().filter(|e| &e.mode == m && e.completed()).map(|e| e.ram).min();
        let largest_fail = entries.iter().filter(|e| &e.mode == m && !e.completed()).map(|e| e.ram).filter(|&r| Some(r) < smallest.or(Some(u32::MAX))).max();
        let _ = writeln!(
            t,
            "- {}: {}{}",
            m,
            smallest.map(|s| format!("{s} MiB")).unwrap_or("none of the sizes".into()),
            largest_fail.map(|f| format!(" (fails at {f} MiB)")).unwrap_or_default()
        );
    }

    // ---- targets ----------------------------------------------------------------
    let _ = writeln!(t, "\nDESIGN / issue 4 targets (1024 MiB unless said):\n");
    let tr = 1024;
    let mut target = |ok: Option<bool>, text: String| {
        let _ = writeln!(t, "- [{}] {}", match ok { Some(true) => "met", Some(false) => "NOT met", None => "not measured" }, text);
    };
    match (find("hybrid", tr), find("full", tr)) {
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
    match find("hybrid", 64) {
        Some(h) => target(
            Some(h.completed() && h.rep().r("reports") == 0),
            format!(
                "at 64 MiB the workload completes in hybrid with no report: {}",
                if h.completed() { "completed, 0 reports".to_string() } else { format!("did not complete ({})", h.rep().failure) }
            ),
        ),
        None => target(None, "64 MiB hybrid (not run)".into()),
    }
    let _ = writeln!(t, "\nPlot: {}/memory.svg (samples at {} MiB); data: results.json; logs: logs/.", dir.display(), cfg.plot_ram);
    let _ = writeln!(t, "Total benchmark time: {:.0} s.", t0.elapsed().as_secs_f64());
    print!("{t}");
    std::fs::write(dir.join("table.md"), &t).expect("write table.md");

    // Mode-independent result: every completed run built the same image.
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
}
