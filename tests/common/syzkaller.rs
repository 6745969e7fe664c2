//! syzkaller's rules for Linux KASAN and KMSAN reports
//! (pkg/report/linux.go, as published), checked on every report the tests see.

use regex::Regex;

/// One report's parsed title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title {
    /// Bug type ("slab-out-of-bounds").
    pub bug: String,
    /// Function named in the title.
    pub func: String,
}

/// syzkaller's `{{FUNC}}`: a name followed by `+` or `.`.
const FUNC: &str = r"([a-zA-Z0-9_]+)(?:\.|\+)";

/// syzkaller's frame line: up to two `[<addr>]` then `{{FUNC}}`.
fn frame_regex() -> Regex {
    Regex::new(&format!(r"^ *(?:\[<[0-9a-f]+>\] ){{0,2}}{FUNC}")).unwrap()
}

const RULE: &str = "==================================================================";

/// Split a console log into reports (text between the rules).
pub fn reports(log: &str) -> Vec<String> {
    split_reports(log, RULE)
}

/// The text between pairs of `rule` lines.
fn split_reports(log: &str, rule: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<Vec<&str>> = None;
    for line in log.lines() {
        if line.trim_end() == rule {
            match cur.take() {
                Some(lines) if !lines.is_empty() => out.push(lines.join("\n")),
                _ => cur = Some(vec![]),
            }
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.push(line);
        }
    }
    out
}

/// Check one report against syzkaller's rules; returns its title.
pub fn check_report(report: &str) -> Result<Title, String> {
    let func = FUNC;
    let access = Regex::new(&format!(
        r"BUG: KASAN: ([a-z\-]+) in {func}(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)"
    ))
    .unwrap();
    let free = Regex::new(&format!(
        r"BUG: KASAN: (double-free or invalid-free|double-free|invalid-free) in {func}"
    ))
    .unwrap();
    let title = if let Some(c) = free.captures(report) {
        Title { bug: c[1].to_string(), func: c[2].to_string() }
    } else if let Some(c) = access.captures(report) {
        Title { bug: c[1].to_string(), func: c[2].to_string() }
    } else {
        return Err(format!("corrupted: no title matches syzkaller's KASAN regexps:\n{report}"));
    };
    let frame = frame_regex();
    let lines: Vec<&str> = report.lines().collect();
    let mut stacks = 0;
    for (i, l) in lines.iter().enumerate() {
        let header = l.starts_with("Call Trace")
            || (l.starts_with("Allocated by task ") && l.ends_with(':'))
            || (l.starts_with("Freed by task ") && l.ends_with(':'));
        if !header {
            continue;
        }
        if lines.len() < i + 4 {
            return Err(format!("corrupted: '{l}' not followed by 3 lines:\n{report}"));
        }
        let window = &lines[i + 1..lines.len().min(i + 16)];
        if !window.iter().any(|w| frame.is_match(w) || w.contains("(stack is not available)")) {
            return Err(format!("corrupted: '{l}' has no frame within 15 lines:\n{report}"));
        }
        stacks += 1;
    }
    if stacks == 0 {
        return Err(format!("corrupted: no stack in report:\n{report}"));
    }
    Ok(title)
}

/// Parse every report of a log; panics with the report on a corrupted one.
pub fn titles(log: &str) -> Vec<Title> {
    reports(log).iter().map(|r| check_report(r).unwrap_or_else(|e| panic!("{e}"))).collect()
}

const KMSAN_RULE: &str = "=====================================================";

/// Split a console log into KMSAN reports (text between the shorter rules).
pub fn kmsan_reports(log: &str) -> Vec<String> {
    split_reports(log, KMSAN_RULE)
}

/// Check one KMSAN report against syzkaller's rules: the title
/// `BUG: KMSAN: <type> in FUNC`, at least 16 lines (with the rules), a
/// frame in the first stack after the title and one in the origin stack
/// after `Uninit was created at:` / `Local variable ... created at:`.
pub fn check_kmsan_report(report: &str) -> Result<Title, String> {
    let func = FUNC;
    let title = Regex::new(&format!(r"BUG: KMSAN: ([a-z\-]+) in {func}")).unwrap();
    let Some(c) = title.captures(report) else {
        return Err(format!("corrupted: no title matches syzkaller's KMSAN regexp:\n{report}"));
    };
    let t = Title { bug: c[1].to_string(), func: c[2].to_string() };
    let lines: Vec<&str> = report.lines().collect();
    if lines.len() + 2 < 16 {
        return Err(format!("a KMSAN report needs at least 16 lines, this one has {}:\n{report}", lines.len() + 2));
    }
    let frame = frame_regex();
    if !lines.get(1).is_some_and(|l| frame.is_match(l)) {
        return Err(format!("corrupted: no frame right after the title:\n{report}"));
    }
    let origin = lines
        .iter()
        .position(|l| *l == "Uninit was created at:" || (l.starts_with("Local variable ") && l.ends_with(" created at:")));
    let Some(o) = origin else { return Err(format!("corrupted: no origin section:\n{report}")) };
    if !lines.get(o + 1).is_some_and(|l| frame.is_match(l)) {
        return Err(format!("corrupted: the origin section has no frame:\n{report}"));
    }
    Ok(t)
}
