//! The public API driven as a buggy kernel would: `full` and `hybrid` in
//! lockstep against an oracle, KASAN or KMSAN as the input's first byte
//! says (see `hybrid_shadow::host::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hybrid_shadow::host::fuzz::run(data);
});
