//! KMSAN differential test: random sequences of page, slab, stack and
//! vmalloc allocations and frees, instrumented stores and loads, copies,
//! memsets, poisonings, checks and warnings, driven through the library's
//! lockstep driver (`hybrid_shadow::host::lockstep::kmsan`, the one
//! oracle, shared with the fuzz target): every result, loaded shadow and
//! origin and report text of `full` and `hybrid` must match, and the
//! per-byte oracle must agree with both.
//!
//! 20 cases x 5000 operations = 100k operations per run (more with
//! `PROPTEST_CASES`); `KMSAN_DIFF_DEEP=1` compares every byte after every
//! operation. The misuse test drives the same driver with wild addresses,
//! orders and sizes: every refused call must give the error the oracle
//! expects, none may panic.

use hybrid_shadow::host::lockstep::kmsan::{KAt, KLockstep, KOp, KSet, KSetup};
use proptest::prelude::*;

const OPS_PER_CASE: usize = 5000;
const PAGE: usize = 4096;
const SETUP: KSetup = KSetup { ram: 4 << 20, vmalloc: 4 << 20, image: 64 << 10 };

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

/// A target: mostly inside what was allocated; with `wild`, anywhere.
fn at(r: &mut Rng, wild: bool) -> KAt {
    if wild && r.chance(40) {
        return match r.below(6) {
            0 => KAt::Ram(r.below(SETUP.ram + 2 * PAGE)),
            1 => KAt::Ram(SETUP.ram - 1 - r.below(64)),
            2 => KAt::Abs(usize::MAX - r.below(64)),
            3 => KAt::Abs(r.next() as usize),
            4 => KAt::Vmalloc(r.below(SETUP.vmalloc + PAGE)),
            _ => KAt::Image(r.below(SETUP.image + PAGE)),
        };
    }
    KAt::Live { pick: r.next() as u16, off: r.below(PAGE) as isize }
}

fn size(r: &mut Rng, max: usize, wild: bool) -> usize {
    if wild && r.chance(30) {
        return [0, usize::MAX, usize::MAX / 2, 1 << 20][r.below(4)];
    }
    1 + r.below(max)
}

fn op(r: &mut Rng, wild: bool) -> KOp {
    let page = |r: &mut Rng| KAt::Ram(r.below(SETUP.ram / PAGE) * PAGE);
    let order = |r: &mut Rng| if wild && r.chance(20) { r.below(24) as u32 } else { r.below(3) as u32 };
    match r.below(100) {
        0..=9 => KOp::PageAlloc { at: page(r), order: order(r), zeroed: r.chance(40) },
        10..=13 => KOp::Track { at: KAt::Live { pick: r.next() as u16, off: 0 }, order: 0, stack: r.chance(20), free: r.chance(30) },
        14..=21 => KOp::SlabAlloc { at: at(r, wild), size: size(r, 96, wild), zeroed: r.chance(30) },
        22..=23 => KOp::Vmalloc { pages: 1 + r.below(4), zeroed: r.chance(30) },
        24..=25 => KOp::Vfree { pick: r.next() as u16 },
        26..=29 => KOp::PageFree { at: KAt::Live { pick: r.next() as u16, off: 0 }, order: order(r) },
        30..=33 => KOp::SlabFree { at: at(r, wild), size: size(r, 96, wild) },
        34 => KOp::KmallocLarge { at: KAt::Live { pick: r.next() as u16, off: 0 }, order: order(r), zeroed: r.chance(50) },
        35..=57 => KOp::Store { at: at(r, wild), size: [1, 2, 4, 8, 16][r.below(5)], pattern: r.next() as u8 % 4, from: at(r, wild) },
        58..=77 => KOp::Load { at: at(r, wild), size: [1, 2, 4, 8, 16][r.below(5)] },
        78..=84 => KOp::Copy { dst: at(r, wild), src: at(r, wild), size: size(r, 600, wild) },
        85..=90 => {
            let how = [KSet::Unpoison, KSet::Poison, KSet::Memset, KSet::PoisonAlloca, KSet::UnpoisonAlloca, KSet::AsmStore][r.below(6)];
            KOp::Set { at: at(r, wild), size: size(r, 5000, wild), how }
        }
        91..=97 => KOp::Check { at: at(r, wild), size: size(r, 300, wild) },
        _ => KOp::Warning { at: at(r, wild) },
    }
}

fn run(seed: u64) {
    let mut l = KLockstep::new(SETUP);
    let mut r = Rng(seed | 1);
    let deep = std::env::var_os("KMSAN_DIFF_DEEP").is_some();
    for k in 0..OPS_PER_CASE {
        l.apply(op(&mut r, false));
        if deep {
            l.compare(k, 1);
        } else if k % 1000 == 999 {
            l.compare(k, 61);
        }
    }
    l.compare(OPS_PER_CASE, 7);
    let (hybrid_peak, full_pages) = l.pages();
    assert!(hybrid_peak < full_pages, "hybrid maps less than full");
    let c = l.counts();
    assert!(l.bugs() > 0 && c.iter().all(|&n| n > 0), "every kind of operation ran, some found bugs: {c:?}");
    eprintln!("kmsan-differential seed={seed:#x} ops={c:?} bugs={} hybrid_peak_pages={hybrid_peak}", l.bugs());
    l.finish();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn kmsan_differential_full_vs_hybrid(seed in any::<u64>()) {
        run(seed);
    }
}

#[test]
fn kmsan_differential_fixed_seeds() {
    for seed in [1u64, 0xdead_beef, 42] {
        run(seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn kmsan_misuse_is_refused_not_fatal(seed in any::<u64>(), n in 1usize..200) {
        let mut l = KLockstep::new(SETUP);
        let mut r = Rng(seed | 1);
        for _ in 0..n {
            l.apply(op(&mut r, true));
        }
        l.finish();
    }
}
