//! The fuzz target's driver (`hybrid_shadow::host::fuzz`, see `fuzz/`) on
//! stable, as CI runs it: every input in `fuzz/regressions/` (what the
//! fuzzer found, kept so it stays fixed, and seeds covering each kind of
//! operation), then random inputs for a bounded number of cases
//! (`FUZZ_REPLAY_CASES`, default 1500, and a fifth of that forced to
//! KMSAN; about 15-30 s). A failing random
//! input is shrunk by proptest and printed: save its bytes in
//! `fuzz/regressions/` once fixed. Inputs whose first byte has its top two
//! bits set drive KMSAN; the `kmsan-*` regression inputs together must
//! execute every kind of KMSAN operation, and the `heap-*` ones every kind
//! of operation on the runtime's heap (init, alloc, free, access).

use hybrid_shadow::host::fuzz::{self, HEAP_OP_KINDS};
use hybrid_shadow::host::lockstep::kmsan::KOP_KINDS;
use proptest::prelude::*;
use std::path::Path;

#[test]
fn regression_inputs_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("fuzz/regressions").map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut kmsan = [0usize; KOP_KINDS];
    let mut heap = [0usize; HEAP_OP_KINDS];
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| fuzz::run(&data));
        assert!(r.is_ok(), "{} fails again", f.display());
        let ran = r.unwrap();
        if f.file_name().unwrap().to_string_lossy().starts_with("kmsan-") {
            assert!(ran.kmsan_ops.iter().sum::<usize>() > 0 && ran.kasan_ops == 0, "{} drives KMSAN", f.display());
            for (k, n) in ran.kmsan_ops.iter().enumerate() {
                kmsan[k] += n;
            }
        }
        if f.file_name().unwrap().to_string_lossy().starts_with("heap-") {
            assert!(ran.kasan_ops > 0, "{} drives KASAN", f.display());
            for (k, n) in ran.heap_ops.iter().enumerate() {
                heap[k] += n;
            }
        } else {
            // Opcode bytes 0xE0..=0xEF became heap operations: the older
            // inputs have none, so they decode as they did.
            assert_eq!(ran.heap_ops, [0; HEAP_OP_KINDS], "{} decodes as before the heap", f.display());
        }
    }
    assert!(kmsan.iter().all(|&n| n > 0), "the kmsan-* inputs execute every kind of KMSAN operation: {kmsan:?}");
    assert!(heap.iter().all(|&n| n > 0), "the heap-* inputs execute every kind of heap operation: {heap:?}");
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

proptest! {
    // A KMSAN run costs about 3 KASAN ones (random_inputs drives KMSAN in a
    // quarter of its inputs too).
    #![proptest_config(ProptestConfig { cases: cases() / 5, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_kmsan_inputs(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut data = data;
        data.insert(0, 0xC0);
        fuzz::run(&data);
    }
}
