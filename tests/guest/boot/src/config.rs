//! Boot command line: the sanitizer's knobs (`kasan.shadow=`,
//! `kasan.fault=`, `kasan_multi_shot[=1|0]`, ...; `kmsan.*` in the KMSAN
//! kernel), read by hybrid-shadow's own parser (`hybrid_shadow::config`),
//! so the suites see what the runtime runs with; and the guest's own
//! `suite=<name>`, `seed=<n>`, `pageblocks=on|off` (group the page
//! allocator's small allocations by pool). A bad value of the guest's own
//! is reported and the default kept (the runtime reports its own knobs' at
//! init); words other parts read (`OTHER_KEYS`) pass; unknown words are
//! reported and ignored.
use crate::println;

#[derive(Clone, Copy)]
pub struct Config {
    /// The sanitizer's configuration, as the runtime parses it from the
    /// same command line.
    pub sanitizer: hybrid_shadow::Config,
    /// `sanitizer.multi_shot`: report every bug, not only the first.
    pub multi_shot: bool,
    suite: [u8; 64],
    suite_len: usize,
    pub seed: u64,
    /// The page allocator groups allocations below a pageblock by pool.
    pub pageblocks: bool,
}

pub const DEFAULT_SUITE: &str = "smoke";

/// Whether `key` is one of the sanitizers' knobs (hybrid-shadow's parser
/// reads them, and reports bad values at init).
fn sanitizer_key(key: &str) -> bool {
    key.starts_with("kasan.") || key.starts_with("kmsan.") || key == "kasan_multi_shot" || key == "kmsan_multi_shot"
}

/// Keys read by other parts: the workload's parameters
/// (`tests/guest/src/workload`).
const OTHER_KEYS: &[&str] = &[
    "units",
    "jobs",
    "anon",
    "anon_base",
    "samples",
    "obj",
    "folio",
];

impl Config {
    pub const fn default() -> Self {
        let mut suite = [0u8; 64];
        let d = DEFAULT_SUITE.as_bytes();
        let mut i = 0;
        while i < d.len() {
            suite[i] = d[i];
            i += 1;
        }
        let sanitizer = hybrid_shadow::Config::new();
        Config { sanitizer, multi_shot: sanitizer.multi_shot, suite, suite_len: d.len(), seed: 0, pageblocks: true }
    }

    pub fn suite(&self) -> &str {
        core::str::from_utf8(&self.suite[..self.suite_len]).unwrap_or(DEFAULT_SUITE)
    }

    pub fn parse(cmdline: &str) -> Self {
        let mut c = Self::default();
        // The runtime's own parser; its complaints come from the runtime's init.
        if cfg!(feature = "kmsan") {
            c.sanitizer.parse_kmsan_cmdline(cmdline, |_| {});
        } else {
            c.sanitizer.parse_cmdline(cmdline, |_| {});
        }
        c.multi_shot = c.sanitizer.multi_shot;
        for word in cmdline.split(|ch: char| ch.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
            let (key, val) = match word.find('=') {
                Some(i) => (&word[..i], Some(&word[i + 1..])),
                None => (word, None),
            };
            match (key, val) {
                (k, _) if sanitizer_key(k) => {}
                ("suite", Some(v)) if !v.is_empty() && v.len() <= c.suite.len() => {
                    c.suite[..v.len()].copy_from_slice(v.as_bytes());
                    c.suite_len = v.len();
                }
                ("suite", _) => println!("cmdline: bad value for suite, using {}", c.suite()),
                ("seed", Some(v)) => {
                    let parsed = if let Some(h) = v.strip_prefix("0x") {
                        u64::from_str_radix(h, 16)
                    } else {
                        v.parse::<u64>()
                    };
                    match parsed {
                        Ok(n) => c.seed = n,
                        Err(_) => println!("cmdline: bad value seed={}, using {}", v, c.seed),
                    }
                }
                ("pageblocks", Some(v)) => match v {
                    "on" | "1" => c.pageblocks = true,
                    "off" | "0" => c.pageblocks = false,
                    _ => println!("cmdline: bad value pageblocks={} (want on|off), using {}", v, c.pageblocks),
                },
                (k, Some(_)) if OTHER_KEYS.contains(&k) => {}
                _ => println!("cmdline: ignoring unknown parameter '{}'", word),
            }
        }
        c
    }
}
