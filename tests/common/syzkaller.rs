//! syzkaller's rules for Linux KASAN reports (pkg/report/linux.go, as
//! published), checked on every report the tests see.

use regex::Regex;

/// One report's parsed title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title {
    /// Bug type ("slab-out-of-bounds").
    pub bug: String,
    /// Function named in the title.
    pub func: String,
}

const RULE: &str = "==================================================================";

/// Split a console log into reports (text between the rules).
pub fn reports(log: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<Vec<&str>> = None;
    for line in log.lines() {
        if line.trim_end() == RULE {
            match cur.take() {
                Some(lines) if !lines.is_empty() => out.push(lines.join("\n")),
                Some(_) => cur = Some(vec![]),
                None => cur = Some(vec![]),
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
    let func = r"([a-zA-Z0-9_]+)(?:\.|\+)";
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
    let frame = Regex::new(&format!(r"^ *(?:\[<[0-9a-f]+>\] ){{0,2}}{func}")).unwrap();
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
