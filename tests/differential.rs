//! Differential property test: the same random sequence of allocations,
//! frees and accesses is driven through a `full` and a `hybrid` model
//! kernel by the lockstep driver (`hybrid_shadow::host::lockstep`, the one
//! the fuzz target uses). Every verdict and bug type must match, and its
//! oracle of byte states must agree with both: an access passes exactly
//! when every byte of it lies in a live allocation's valid bytes.
//!
//! Each case picks the hybrid scheme for mixed blocks (CONSULT page, a
//! private page, or adaptive promotion) at random.
//!
//! 20 cases x 5000 operations = 100k operations per run (more with
//! `PROPTEST_CASES`).

use hybrid_shadow::host::lockstep::{Lockstep, Op, Setup, Target};
use hybrid_shadow::host::sim::KMALLOC_MAX_CACHE;
use hybrid_shadow::MixedBlocks;
use proptest::prelude::*;

const OPS_PER_CASE: usize = 5000;

/// One generated step as an operation of the driver: mostly allocations,
/// frees and accesses around live objects (some of them page-long ranges),
/// some bad frees, ksize and quarantine drains.
fn op(op: u8, a: u16, b: u16, c: u8) -> Op {
    match op % 16 {
        0..=2 => Op::Kmalloc {
            // skewed small sizes, sometimes large
            size: match c % 8 {
                0 => KMALLOC_MAX_CACHE + 1 + a as usize % 20000,
                1..=3 => 1 + a as usize % 64,
                4..=5 => 1 + a as usize % 512,
                _ => 1 + a as usize % 4096,
            },
        },
        3 => Op::CacheAlloc { cache: 0, size: 192 },
        4 => Op::AllocPages { order: (a % 4) as u32 },
        5 if c.is_multiple_of(4) => Op::StackAlloc,
        5 => Op::Vmalloc { size: 1 + a as usize % 20000 },
        6..=8 => Op::Free { pick: a },
        9..=12 => Op::Access {
            at: Target::Near { pick: a, at: b },
            size: [1, 2, 4, 8, 16, 3, 24, 64][c as usize % 8],
            write: c & 0x80 != 0,
        },
        13 if c & 0x40 == 0 => {
            Op::Access { at: Target::Freed { pick: a, off: (b % 64) as isize }, size: 1 + (c % 8) as usize, write: false }
        }
        // long ranges (a page copy, a user copy): hybrid passes blocks of
        // allocated pages with one load (`blocks_ok`), full scans them
        13 => Op::Access {
            at: Target::Live { pick: a, off: (b % 48) as isize - 16 },
            size: [512, 4096, 4097, 3 * 4096 + 8, 16384, 32768, 700, 8192][c as usize % 8],
            write: c & 0x80 != 0,
        },
        14 if c.is_multiple_of(2) => Op::Kfree { at: Target::Live { pick: a, off: 1 + (a % 7) as isize } },
        14 => Op::Kfree { at: Target::Freed { pick: a, off: 0 } },
        _ if c.is_multiple_of(16) => Op::Drain,
        _ => Op::Ksize { at: Target::Live { pick: a, off: 0 } },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn differential_full_vs_hybrid(
        scheme in 0u8..3,
        ops in proptest::collection::vec(any::<(u8, u16, u16, u8)>(), OPS_PER_CASE),
    ) {
        let mixed = [MixedBlocks::Consult, MixedBlocks::Private, MixedBlocks::Adaptive][scheme as usize];
        let mut p = Lockstep::new(Setup::small(mixed));
        p.apply(Op::CacheCreate { size: 192 });
        for (i, (o, a, b, c)) in ops.into_iter().enumerate() {
            p.apply(op(o, a, b, c));
            if i % 100 == 0 {
                p.check_live();
            }
        }
        assert!(p.checks > 500 && p.bugs > 100, "the sequence exercised checks and bugs");
        let s = (p.full.kasan.stats(), p.hybrid.kasan.stats());
        assert_eq!(s.0.reports, s.1.reports, "same number of reports");
        // hybrid's extra slow-path checks are exactly its clean CONSULT resolutions
        assert_eq!(s.1.slow_path_checks - s.0.slow_path_checks, s.1.slow_path_clean - s.0.slow_path_clean);
        if mixed == MixedBlocks::Private {
            assert_eq!(s.1.slow_path_checks, s.0.slow_path_checks, "private mixed blocks: no slow path beyond full's");
        }
        p.finish();
    }
}
