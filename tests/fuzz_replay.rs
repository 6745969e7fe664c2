//! The fuzz target's driver (`hybrid_shadow::host::fuzz`, see `fuzz/`) on
//! stable, as CI runs it: every input in `fuzz/regressions/` (what the
//! fuzzer found, kept so it stays fixed, and seeds covering each kind of
//! operation), then random inputs for a bounded number of cases
//! (`FUZZ_REPLAY_CASES`, default 1500, about 15 s). A failing random
//! input is shrunk by proptest and printed: save its bytes in
//! `fuzz/regressions/` once fixed.

use hybrid_shadow::host::fuzz;
use proptest::prelude::*;
use std::path::Path;

#[test]
fn regression_inputs_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("fuzz/regressions").map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| fuzz::run(&data));
        assert!(r.is_ok(), "{} fails again", f.display());
    }
    assert!(files.len() >= 8, "the regression inputs are there ({})", files.len());
}

fn cases() -> u32 {
    std::env::var("FUZZ_REPLAY_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        fuzz::run(&data);
    }
}
