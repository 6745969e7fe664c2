//! Boot command line: `kasan.shadow=off|full|hybrid`, `kasan.fault=report|panic`,
//! `kasan_multi_shot`, `suite=<name>`, `seed=<n>`, `pageblocks=on|off`
//! (group the page allocator's small allocations by pool). A bad value is
//! reported and the default kept; words other parts read (`OTHER_KEYS`)
//! pass; unknown words are reported and ignored.
use crate::println;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowMode {
    Off,
    Full,
    Hybrid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    Report,
    Panic,
}

#[derive(Clone, Copy)]
pub struct Config {
    pub shadow: ShadowMode,
    pub fault: FaultMode,
    pub multi_shot: bool,
    suite: [u8; 64],
    suite_len: usize,
    pub seed: u64,
    /// The page allocator groups allocations below a pageblock by pool.
    pub pageblocks: bool,
}

pub const DEFAULT_SUITE: &str = "smoke";

/// Keys read by other parts: the sanitizer runtime's own `kasan.*` and
/// `kmsan.*` knobs (hybrid-shadow's `Config` parses them) and the
/// workload's parameters (`tests/guest/src/workload`).
const OTHER_KEYS: &[&str] = &[
    "kasan.mixed",
    "kasan.promote_max",
    "kmsan.shadow",
    "kmsan.fault",
    "kmsan.panic",
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
        Config { shadow: ShadowMode::Hybrid, fault: FaultMode::Report, multi_shot: false, suite, suite_len: d.len(), seed: 0, pageblocks: true }
    }

    pub fn suite(&self) -> &str {
        core::str::from_utf8(&self.suite[..self.suite_len]).unwrap_or(DEFAULT_SUITE)
    }

    pub fn parse(cmdline: &str) -> Self {
        let mut c = Self::default();
        for word in cmdline.split(|ch: char| ch.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
            let (key, val) = match word.find('=') {
                Some(i) => (&word[..i], Some(&word[i + 1..])),
                None => (word, None),
            };
            match (key, val) {
                ("kasan.shadow", Some(v)) => match v {
                    "off" => c.shadow = ShadowMode::Off,
                    "full" => c.shadow = ShadowMode::Full,
                    "hybrid" => c.shadow = ShadowMode::Hybrid,
                    _ => println!("cmdline: bad value kasan.shadow={} (want off|full|hybrid), using {:?}", v, c.shadow),
                },
                ("kasan.fault", Some(v)) => match v {
                    "report" => c.fault = FaultMode::Report,
                    "panic" => c.fault = FaultMode::Panic,
                    _ => println!("cmdline: bad value kasan.fault={} (want report|panic), using {:?}", v, c.fault),
                },
                ("kasan_multi_shot", None) => c.multi_shot = true,
                ("kmsan_multi_shot", None) => {}
                ("kasan_multi_shot", Some(v)) => match v {
                    "1" | "y" | "on" => c.multi_shot = true,
                    "0" | "n" | "off" => c.multi_shot = false,
                    _ => println!("cmdline: bad value kasan_multi_shot={}, using {}", v, c.multi_shot),
                },
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
