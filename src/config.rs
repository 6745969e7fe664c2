//! Boot-time configuration: mode, fault action, report policy.
//!
//! Parsed from a kernel command line with Linux's knobs plus ours:
//! `kasan.shadow=off|full|hybrid`, `kasan.fault=report|panic`,
//! `kasan_multi_shot[=1|0]`, `kasan.mixed=`, `kasan.promote_max=`. Bad
//! values are returned as [`ConfigError`]s and the default stays; parsing
//! never fails as a whole.
//!
//! This is the one parser of these knobs: a kernel that wants to know what
//! its sanitizer runs with (the test guest's boot code does) calls
//! [`Config::parse_cmdline`] too rather than reading the words itself.
//! `kasan_multi_shot` takes an optional boolean (`1|y|on`, `0|n|off`), as
//! the test guest always read it; Linux's `__setup` ignores the value.

/// How the runtime backs the byte shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No checking at all: the speed and memory reference.
    Off,
    /// Classic KASAN: private byte shadow for all RAM from init on.
    Full,
    /// Per-page shadow for all RAM, byte shadow mapped only where tracked.
    Hybrid,
}

impl Mode {
    /// The name used on the command line and in figures.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Full => "full",
            Mode::Hybrid => "hybrid",
        }
    }

    /// Parse a command-line value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "full" => Some(Mode::Full),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }
}

/// How `hybrid` backs a block that mixes free and allocated pages but has
/// no tracked page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixedBlocks {
    /// The shared CONSULT page: no memory; an access to an allocated page
    /// of the block pays one more load (the per-page byte) and is counted as
    /// a slow-path check. The default: on the guest workload at 1 GiB it
    /// was faster and smaller than `Adaptive` (65.5 s / 12.1 MiB against
    /// 69.0 s / 13.8 MiB; full 55.3 s).
    Consult,
    /// A private page: one page of memory per such block, no slow path.
    Private,
    /// CONSULT until the block has taken [`PROMOTE_AFTER`] slow-path checks,
    /// then a private page until it stops being mixed: memory only for the
    /// mixed blocks that are actually hot.
    Adaptive,
}

/// Slow-path checks a mixed block takes before `Adaptive` maps it private.
pub const PROMOTE_AFTER: u8 = 32;

/// What happens after a report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Print the report and go on (Linux's `kasan.fault=report`).
    Report,
    /// Print the report, then panic through the platform.
    Panic,
}

impl FaultAction {
    /// Parse a command-line value (`report` or `panic`).
    #[must_use]
    pub fn from_name(s: &str) -> Option<FaultAction> {
        match s {
            "report" => Some(FaultAction::Report),
            "panic" => Some(FaultAction::Panic),
            _ => None,
        }
    }
}

/// A command-line word the parser could not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError<'a> {
    /// `kasan.shadow=` with a value other than off/full/hybrid.
    BadShadow(&'a str),
    /// `kasan.fault=` with a value other than report/panic.
    BadFault(&'a str),
    /// `kasan.mixed=` with a value other than consult/private/adaptive.
    BadMixed(&'a str),
    /// `kasan.promote_max=` without a number.
    BadPromoteMax(&'a str),
    /// `kmsan.shadow=` with a value other than off/full/hybrid.
    BadKmsanShadow(&'a str),
    /// `kmsan.fault=` with a value other than report/panic.
    BadKmsanFault(&'a str),
    /// `kasan_multi_shot=` with a value other than 1/y/on/0/n/off.
    BadMultiShot(&'a str),
    /// `kmsan_multi_shot=` with a value other than 1/y/on/0/n/off.
    BadKmsanMultiShot(&'a str),
}

impl core::fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::BadShadow(v) => write!(
                f,
                "kasan: bad value '{v}' for kasan.shadow (off|full|hybrid), keeping the default"
            ),
            ConfigError::BadFault(v) => write!(
                f,
                "kasan: bad value '{v}' for kasan.fault (report|panic), keeping the default"
            ),
            ConfigError::BadPromoteMax(v) => write!(
                f,
                "kasan: bad value '{v}' for kasan.promote_max (a number of blocks), keeping the default"
            ),
            ConfigError::BadKmsanShadow(v) => write!(
                f,
                "kmsan: bad value '{v}' for kmsan.shadow (off|full|hybrid), keeping the default"
            ),
            ConfigError::BadKmsanFault(v) => write!(
                f,
                "kmsan: bad value '{v}' for kmsan.fault (report|panic), keeping the default"
            ),
            ConfigError::BadMultiShot(v) => write!(
                f,
                "kasan: bad value '{v}' for kasan_multi_shot (1|0), keeping the default"
            ),
            ConfigError::BadKmsanMultiShot(v) => write!(
                f,
                "kmsan: bad value '{v}' for kmsan_multi_shot (1|0), keeping the default"
            ),
            ConfigError::BadMixed(v) => write!(
                f,
                "kasan: bad value '{v}' for kasan.mixed (consult|private|adaptive), keeping the default"
            ),
        }
    }
}

/// Runtime configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Shadow mode.
    pub mode: Mode,
    /// Action after a report.
    pub fault: FaultAction,
    /// Report every bug (`true`) or only the first one (Linux's default).
    pub multi_shot: bool,
    /// Quarantine size in bytes; `None` means 1/32 of the direct map's
    /// span (Linux: 1/32 of its RAM, `totalram_pages`; a kernel whose RAM
    /// has holes below its end, as at 4 GiB under the PCI hole, gives its
    /// RAM / 32 here).
    pub quarantine_bytes: Option<usize>,
    /// Backing of mixed blocks in `hybrid` (`kasan.mixed=consult|private|adaptive`).
    pub mixed: MixedBlocks,
    /// Most mixed blocks `Adaptive` keeps promoted at once
    /// (`kasan.promote_max=<n>`); `None`: one per 512 RAM pages (each
    /// costs a 4 KiB shadow page: at most 1/512 of RAM).
    pub promote_max: Option<usize>,
    /// Stack depot capacity in distinct stacks; 0 picks one from the RAM
    /// size (one per 128 pages, between 256 and 2048).
    pub depot_stacks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// A boolean knob's value: `1|y|Y|on|true` or `0|n|N|off|false`.
fn flag(v: &str) -> Option<bool> {
    match v {
        "1" | "y" | "Y" | "on" | "true" => Some(true),
        "0" | "n" | "N" | "off" | "false" => Some(false),
        _ => None,
    }
}

impl Config {
    /// The defaults (as [`Default`], usable in a `static`).
    #[must_use]
    pub const fn new() -> Self {
        Config {
            mode: Mode::Hybrid,
            fault: FaultAction::Report,
            multi_shot: false,
            quarantine_bytes: None,
            mixed: MixedBlocks::Consult,
            promote_max: None,
            depot_stacks: 0,
        }
    }

    /// The stack depot capacity for `ram_pages` pages of RAM.
    #[must_use]
    pub fn depot_capacity(&self, ram_pages: usize) -> usize {
        if self.mode == Mode::Off {
            0
        } else if self.depot_stacks != 0 {
            self.depot_stacks
        } else {
            (ram_pages / 128).clamp(256, 2048)
        }
    }

    /// The promotion budget for `ram_pages` pages of RAM (in blocks).
    #[must_use]
    pub fn promote_budget(&self, ram_pages: usize) -> usize {
        match self.mixed {
            MixedBlocks::Adaptive => self.promote_max.unwrap_or(ram_pages / 512),
            _ => 0,
        }
    }

    /// Apply the `kasan*` words of a command line; other words are ignored.
    /// Each unusable word is handed to `bad` and the default kept.
    pub fn parse_cmdline<'a>(&mut self, cmdline: &'a str, mut bad: impl FnMut(ConfigError<'a>)) {
        for word in cmdline.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix("kasan.shadow=") {
                match Mode::from_name(v) {
                    Some(m) => self.mode = m,
                    None => bad(ConfigError::BadShadow(v)),
                }
            } else if let Some(v) = word.strip_prefix("kasan.fault=") {
                match FaultAction::from_name(v) {
                    Some(f) => self.fault = f,
                    None => bad(ConfigError::BadFault(v)),
                }
            } else if let Some(v) = word.strip_prefix("kasan.mixed=") {
                match v {
                    "consult" => self.mixed = MixedBlocks::Consult,
                    "private" => self.mixed = MixedBlocks::Private,
                    "adaptive" => self.mixed = MixedBlocks::Adaptive,
                    _ => bad(ConfigError::BadMixed(v)),
                }
            } else if let Some(v) = word.strip_prefix("kasan.promote_max=") {
                match v.parse() {
                    Ok(n) => self.promote_max = Some(n),
                    Err(_) => bad(ConfigError::BadPromoteMax(v)),
                }
            } else if word == "kasan_multi_shot" {
                self.multi_shot = true;
            } else if let Some(v) = word.strip_prefix("kasan_multi_shot=") {
                match flag(v) {
                    Some(b) => self.multi_shot = b,
                    None => bad(ConfigError::BadMultiShot(v)),
                }
            }
        }
    }

    /// Apply the `kmsan*` words of a command line (a kernel built with
    /// KMSAN): `kmsan.shadow=off|full|hybrid`, `kmsan.fault=report|panic`
    /// (and Linux's `kmsan.panic=1`), `kmsan_multi_shot`. Other words are
    /// ignored; each unusable word goes to `bad` and the default stays.
    pub fn parse_kmsan_cmdline<'a>(&mut self, cmdline: &'a str, mut bad: impl FnMut(ConfigError<'a>)) {
        for word in cmdline.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix("kmsan.shadow=") {
                match Mode::from_name(v) {
                    Some(m) => self.mode = m,
                    None => bad(ConfigError::BadKmsanShadow(v)),
                }
            } else if let Some(v) = word.strip_prefix("kmsan.fault=") {
                match FaultAction::from_name(v) {
                    Some(f) => self.fault = f,
                    None => bad(ConfigError::BadKmsanFault(v)),
                }
            } else if let Some(v) = word.strip_prefix("kmsan.panic=") {
                match v {
                    "0" => self.fault = FaultAction::Report,
                    "1" => self.fault = FaultAction::Panic,
                    _ => bad(ConfigError::BadKmsanFault(v)),
                }
            } else if word == "kmsan_multi_shot" {
                self.multi_shot = true;
            } else if let Some(v) = word.strip_prefix("kmsan_multi_shot=") {
                match flag(v) {
                    Some(b) => self.multi_shot = b,
                    None => bad(ConfigError::BadKmsanMultiShot(v)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linux_knobs_and_keeps_defaults_on_bad_values() {
        let mut c = Config::default();
        let mut errs = [None; 4];
        let mut n = 0;
        c.parse_cmdline(
            "console=ttyS0 kasan.shadow=full kasan.fault=panic kasan_multi_shot kasan.mixed=private",
            |e| {
                errs[n] = Some(e);
                n += 1;
            },
        );
        assert_eq!(n, 0);
        assert_eq!(c.mode, Mode::Full);
        assert_eq!(c.fault, FaultAction::Panic);
        assert!(c.multi_shot);
        assert_eq!(c.mixed, MixedBlocks::Private);

        let mut c = Config::default();
        c.parse_cmdline("kasan.shadow=bogus kasan.fault= kasan.mixed=x", |e| {
            errs[n] = Some(e);
            n += 1;
        });
        assert_eq!(c.mode, Mode::Hybrid);
        assert_eq!(c.fault, FaultAction::Report);
        assert_eq!(errs[0], Some(ConfigError::BadShadow("bogus")));
        assert_eq!(errs[1], Some(ConfigError::BadFault("")));
        assert_eq!(errs[2], Some(ConfigError::BadMixed("x")));
    }

    /// The test guest's boot code used to read `kasan_multi_shot=1` as
    /// multi-shot while this parser ignored the word (one-shot): the same
    /// command line gave the guest's suites and the runtime different
    /// policies. The guest now calls this parser; these are its answers.
    #[test]
    fn kasan_multi_shot_with_a_value_means_what_it_says() {
        let parse = |line: &str| {
            let mut c = Config::default();
            let mut errs = std::vec::Vec::new();
            c.parse_cmdline(line, |e| errs.push(std::format!("{e}")));
            (c.multi_shot, errs)
        };
        assert_eq!(parse("kasan_multi_shot=1"), (true, std::vec![]));
        assert_eq!(parse("kasan_multi_shot=on"), (true, std::vec![]));
        assert_eq!(parse("kasan_multi_shot"), (true, std::vec![]));
        assert_eq!(parse("kasan_multi_shot kasan_multi_shot=0"), (false, std::vec![]));
        assert_eq!(parse("kasan_multi_shot=n"), (false, std::vec![]));
        let (multi, errs) = parse("kasan_multi_shot=maybe");
        assert!(!multi);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("kasan_multi_shot"), "{errs:?}");
        let mut c = Config::default();
        let mut errs = std::vec::Vec::new();
        c.parse_kmsan_cmdline("kmsan_multi_shot=1 kasan_multi_shot=0 kmsan_multi_shot=x", |e| errs.push(e));
        assert!(c.multi_shot);
        assert_eq!(errs, [ConfigError::BadKmsanMultiShot("x")]);
        assert_eq!(Config::new(), Config::default());
    }

    #[test]
    fn parses_kmsan_knobs_and_ignores_kasan_ones() {
        let mut c = Config::default();
        let mut errs = std::vec::Vec::new();
        c.parse_kmsan_cmdline("kasan.shadow=off kmsan.shadow=full kmsan.panic=1 kmsan_multi_shot", |e| errs.push(e));
        assert!(errs.is_empty());
        assert_eq!((c.mode, c.fault, c.multi_shot), (Mode::Full, FaultAction::Panic, true));
        let mut c = Config::default();
        c.parse_kmsan_cmdline("kmsan.shadow=half kmsan.fault=maybe", |e| errs.push(e));
        assert_eq!(c.mode, Mode::Hybrid);
        assert_eq!(errs, [ConfigError::BadKmsanShadow("half"), ConfigError::BadKmsanFault("maybe")]);
        assert!(std::format!("{}", errs[0]).contains("kmsan.shadow"));
    }
}
