//! The fuzz target's driver: bytes decoded into a [`Setup`] and a sequence
//! of [`Op`]s that [`Lockstep`] runs on a `full` and a `hybrid` model
//! kernel against its oracle. The cargo-fuzz target (`fuzz/`) and the
//! stable replay test (`tests/fuzz_replay.rs`) both call [`run`]; a failure
//! is a panic.
//!
//! ```text
//!  byte 0: bits 0-5 mixed-block scheme, quarantine (default | keeps all | tiny),
//!          raw alignment; bits 6-7 = 3: KMSAN (else KASAN)
//!  byte 1: raw cache object size (KASAN)
//!  then per operation: opcode byte, operands (sizes skewed to 0, small,
//!  page-sized, page-backed, huge, near usize::MAX; targets: a live or freed
//!  object and an offset, a region and an offset, an absolute address)
//!  KASAN opcode bytes 0xE0..=0xEF: the runtime's heap (init, alloc of any
//!  size and alignment, free of any pointer, accesses in and around it);
//!  any other opcode byte means its value modulo 32, as before the heap
//! ```
//!
//! KASAN operations run in [`Lockstep`], KMSAN ones ([`KOp`]: page, slab,
//! stack and vmalloc hooks at any address and order, instrumented loads and
//! stores, copies, poisoning, checks, warnings) in [`KLockstep`].
//!
//! Input that runs out ends the sequence; everything is then freed and
//! the kernels are checked for leaks.

use crate::config::MixedBlocks;
use crate::host::lockstep::kmsan::{KAt, KLockstep, KOp, KSet, KSetup, KOP_KINDS};
use crate::host::lockstep::{Lockstep, Op, Setup, Target};
use crate::host::sim::ZERO_SIZE_PTR;
use std::vec::Vec;

/// Operations a run makes at most (a bound on an input's time).
pub const MAX_OPS: usize = 2000;

/// What a run executed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ran {
    /// KASAN operations.
    pub kasan_ops: usize,
    /// KMSAN operations, by [`KOp::kind`].
    pub kmsan_ops: [usize; KOP_KINDS],
    /// Heap operations among the KASAN ones, by [`heap_op_kind`].
    pub heap_ops: [usize; HEAP_OP_KINDS],
}

/// Kinds of heap operation [`Ran::heap_ops`] counts.
pub const HEAP_OP_KINDS: usize = 4;

/// The kind of a heap operation (init, alloc, free, access), if `op` is one.
#[must_use]
pub fn heap_op_kind(op: &Op) -> Option<usize> {
    match op {
        Op::HeapInit { .. } => Some(0),
        Op::HeapAlloc { .. } => Some(1),
        Op::HeapFree { .. } => Some(2),
        Op::HeapAccess { .. } => Some(3),
        _ => None,
    }
}

/// The sanitizer and operations an input encodes.
#[derive(Clone, Debug)]
pub enum Decoded {
    /// KASAN in [`Lockstep`].
    Kasan(Setup, Vec<Op>),
    /// KMSAN in [`KLockstep`].
    Kmsan(KSetup, Vec<KOp>),
}

/// Decode `data` and run it; panics on any disagreement or leak.
pub fn run(data: &[u8]) -> Ran {
    let mut ran = Ran::default();
    match decode(data) {
        Decoded::Kasan(setup, ops) => {
            let mut l = Lockstep::new(setup);
            for (i, op) in ops.into_iter().enumerate() {
                if let Some(k) = heap_op_kind(&op) {
                    ran.heap_ops[k] += 1;
                }
                l.apply(op);
                if i % 64 == 63 {
                    l.check_live();
                }
                ran.kasan_ops += 1;
            }
            l.check_live();
            l.finish();
        }
        Decoded::Kmsan(setup, ops) => {
            let mut l = KLockstep::new(setup);
            for (i, op) in ops.into_iter().enumerate() {
                l.apply(op);
                if i % 64 == 63 {
                    l.compare(i, 61);
                }
            }
            ran.kmsan_ops = l.counts();
            l.finish();
        }
    }
    ran
}

/// The sanitizer, setup and operations `data` encodes.
#[must_use]
pub fn decode(data: &[u8]) -> Decoded {
    let mut input = Input { data, pos: 0 };
    if data.first().is_some_and(|&a| a >> 6 == 3) {
        input.pos = 2;
        let setup = KSetup::tiny();
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS {
            match input.kop(&setup) {
                Some(op) => ops.push(op),
                None => break,
            }
        }
        return Decoded::Kmsan(setup, ops);
    }
    let setup = input.setup();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match input.op(&setup) {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    Decoded::Kasan(setup, ops)
}

/// A cursor over the input; `None` once it runs out.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }

    fn setup(&mut self) -> Setup {
        let (a, b) = (self.u8().unwrap_or(0), self.u8().unwrap_or(0));
        let mixed = [MixedBlocks::Consult, MixedBlocks::Private, MixedBlocks::Adaptive][a as usize % 3];
        let mut s = Setup::tiny(mixed);
        s.quarantine = [None, Some(usize::MAX / 2), Some(16 << 10)][(a as usize >> 2) % 3];
        s.raw = (1 + (b as usize * 13) % 1500, [8, 16, 64, 128][(a as usize >> 4) % 4]);
        s
    }

    /// A size skewed to the classes allocators treat differently.
    fn size(&mut self) -> Option<usize> {
        Some(match self.u8()? % 16 {
            0 => 0,
            1 => 1 + self.u8()? as usize % 16,
            2..=4 => 1 + self.u16()? as usize % 256,
            5..=7 => 1 + self.u16()? as usize % 4096,
            8 => 4096 + self.u16()? as usize % 4200,
            9 => 8193 + self.u16()? as usize,
            10 => 1 + self.u32()? as usize % (1 << 22),
            11 => 1usize << (self.u8()? % 64),
            12 => usize::MAX - self.u16()? as usize,
            13 => self.u32()? as usize,
            14 => self.u8()? as usize * 4096,
            _ => self.u16()? as usize,
        })
    }

    /// An access size: mostly what instrumented loads and stores use.
    fn access_size(&mut self) -> Option<usize> {
        self.access_size_or(Self::size)
    }

    /// [`Self::access_size`] whose rare odd sizes come from `odd`.
    fn access_size_or(&mut self, odd: fn(&mut Self) -> Option<usize>) -> Option<usize> {
        Some(match self.u8()? % 8 {
            k @ 0..=5 => [1, 2, 4, 8, 16, 3][k as usize],
            6 => 1 + self.u16()? as usize % 512,
            _ => odd(self)?,
        })
    }

    fn target(&mut self) -> Option<Target> {
        Some(match self.u8()? % 10 {
            0..=3 => Target::Near { pick: self.u16()?, at: self.u16()? },
            4 => Target::Live { pick: self.u16()?, off: 0 },
            5 => Target::Live { pick: self.u16()?, off: self.u8()? as i8 as isize },
            6 => Target::Freed { pick: self.u16()?, off: (self.u8()? % 64) as isize },
            7 => Target::Region { which: self.u8()?, off: self.u32()? as usize },
            8 => Target::Abs(match self.u8()? % 4 {
                0 => self.u8()? as usize,
                1 => ZERO_SIZE_PTR,
                2 => 0x1000 + self.u32()? as usize,
                _ => usize::MAX - self.u16()? as usize,
            }),
            _ => Target::Region { which: self.u8()?, off: self.u16()? as usize * 4096 },
        })
    }

    /// An offset into the image: aligned as compilers place globals (32)
    /// and inside, mostly.
    fn image_offset(&mut self, setup: &Setup) -> Option<usize> {
        let v = self.u16()? as usize;
        let align = crate::hooks::GLOBAL_ALIGN;
        Some(match self.u8()? % 8 {
            0 => v,
            1 => v * 4096,
            2 => (v % (setup.image / 8)) * 8,
            _ => (v % (setup.image / align)) * align,
        })
    }

    fn op(&mut self, setup: &Setup) -> Option<Op> {
        let code = self.u8()?;
        if (0xE0..=0xEF).contains(&code) {
            return self.heap_op(code, setup);
        }
        Some(match code % 32 {
            0..=3 => Op::Kmalloc { size: self.size()? },
            4 => Op::CacheCreate { size: self.size()? },
            5 => Op::CacheAlloc { cache: self.u8()?, size: self.size()? },
            6 => Op::CacheDestroy { cache: self.u8()? },
            7 => Op::AllocPages { order: (self.u8()? % 13) as u32 },
            8 => Op::StackAlloc,
            9 => Op::Vmalloc { size: self.size()? },
            10..=12 => Op::Free { pick: self.u16()? },
            13 => Op::Kfree { at: self.target()? },
            14 => Op::KfreeSensitive { at: self.target()? },
            15 => Op::Krealloc { at: self.target()?, size: self.size()? },
            16 => Op::Ksize { at: self.target()? },
            17 => Op::FreePages { at: self.target()?, order: (self.u8()? % 13) as u32 },
            18 => Op::StackFree { at: self.target()? },
            19 => Op::Vfree { at: self.target()? },
            20 => Op::CacheFree { cache: self.u8()?, at: self.target()? },
            21..=24 => Op::Access { at: self.target()?, size: self.access_size()?, write: self.u8()? & 1 != 0 },
            k @ (25 | 26) => {
                let off = self.image_offset(setup)?;
                let size = if self.u8()? & 1 == 0 { self.u8()? as usize } else { self.size()? };
                let with_rz = match self.u8()? % 4 {
                    0 => size.wrapping_sub(self.u8()? as usize % 8),
                    1 => self.size()?,
                    2 => size.wrapping_add(self.u8()? as usize),
                    // As compilers lay a global out: the span ends on 32.
                    _ => {
                        let extra = crate::hooks::GLOBAL_ALIGN * (self.u8()? as usize % 4);
                        size.checked_next_multiple_of(crate::hooks::GLOBAL_ALIGN).map_or(size, |n| n.wrapping_add(extra))
                    }
                };
                if k == 25 {
                    Op::RegisterGlobal { off, size, with_rz }
                } else {
                    Op::UnregisterGlobal { off, size, with_rz }
                }
            }
            27 => {
                let stack = self.u16()?;
                let off = (self.u16()? as usize % 512) * 32 + if self.u8()? % 8 == 0 { 8 } else { 0 };
                let size = if self.u8()? % 4 == 0 { self.size()? } else { self.u16()? as usize % 2048 };
                Op::AllocaPoison { stack, off, size }
            }
            28 => Op::AllocasUnpoison { stack: self.u16()?, top: self.u16()? as usize, bottom: self.u16()? as usize },
            29 => {
                let slot = self.u16()?;
                let delta = if self.u8()? % 4 == 0 { self.u8()? as usize } else { 0 };
                Op::RawAlloc { slot, delta, size: self.u16()? as usize % (2 * setup.raw.0 + 1) }
            }
            30 => {
                let slot = self.u16()?;
                let delta = if self.u8()? % 4 == 0 { self.u8()? as usize } else { 0 };
                Op::RawFree { slot, delta }
            }
            _ => match self.u8()? % 4 {
                0 => Op::Drain,
                _ => Op::Misuse { hook: self.u8()?, at: self.target()?, arg: self.u64()? as usize },
            },
        })
    }

    /// An alignment: mostly small powers of two, sometimes up to past
    /// the heap, or not a power of two.
    fn align(&mut self) -> Option<usize> {
        Some(match self.u8()? % 16 {
            k @ 0..=5 => [1, 2, 4, 8, 16, 8][k as usize],
            6..=10 => 1usize << (self.u8()? % 23),
            11 => 1usize << (self.u8()? % 64),
            12 => self.u16()? as usize,
            13 => 0,
            _ => [32, 64, 4096][self.u8()? as usize % 3],
        })
    }

    /// A heap object's size: any ([`Self::size`]), a size class's, a
    /// few pages.
    fn heap_size(&mut self) -> Option<usize> {
        Some(match self.u8()? % 4 {
            0 => self.size()?,
            1 | 2 => self.u16()? as usize % 2100,
            _ => self.u16()? as usize * 4 % (64 << 10),
        })
    }

    /// A target in or around the heap's range, or any ([`Self::target`]).
    fn heap_target(&mut self, setup: &Setup) -> Option<Target> {
        Some(match self.u8()? % 4 {
            0 => Target::Heap { off: self.u32()? as usize % (setup.heap + 2 * 4096) },
            1 => Target::Heap { off: (self.u16()? as usize % (setup.heap / 4096 + 1)) * 4096 + self.u8()? as usize % 64 },
            _ => self.target()?,
        })
    }

    /// The heap operation opcode byte `code` (0xE0..=0xEF) names.
    fn heap_op(&mut self, code: u8, setup: &Setup) -> Option<Op> {
        Some(match code % 16 {
            0 | 1 => {
                let at = self.u8()?;
                let len = match self.u8()? % 4 {
                    0 => self.size()?,
                    _ => (2 + self.u8()? as usize % (setup.heap / crate::layout::BLOCK_SIZE - 1)) * crate::layout::BLOCK_SIZE,
                };
                Op::HeapInit { at, len }
            }
            2..=7 => Op::HeapAlloc { size: self.heap_size()?, align: self.align()? },
            8..=11 => Op::HeapFree { at: self.heap_target(setup)? },
            _ => Op::HeapAccess { at: self.heap_target(setup)?, size: self.access_size()?, write: self.u8()? & 1 != 0 },
        })
    }

    /// A KMSAN target: mostly allocations and page starts, region ends
    /// (ranges that cross them), anywhere.
    fn kat(&mut self, setup: &KSetup) -> Option<KAt> {
        Some(match self.u8()? % 12 {
            0..=3 => KAt::Live { pick: self.u16()?, off: 0 },
            4 | 5 => KAt::Live { pick: self.u16()?, off: self.u16()? as i16 as isize },
            6 | 7 => KAt::Ram((self.u16()? as usize % (setup.ram / 4096 + 1)) * 4096),
            8 => KAt::Ram(self.u32()? as usize % (setup.ram + 8192)),
            9 => match self.u8()? % 4 {
                0 => KAt::Ram(setup.ram.wrapping_sub(1 + self.u8()? as usize)),
                1 => KAt::Image(setup.image.wrapping_sub(1 + self.u8()? as usize)),
                2 => KAt::Ram((self.u8()? as usize).wrapping_neg()),
                _ => KAt::Vmalloc(setup.vmalloc.wrapping_sub(1 + self.u8()? as usize)),
            },
            10 => match self.u8()? % 2 {
                0 => KAt::Vmalloc(self.u32()? as usize % (setup.vmalloc + 4096)),
                _ => KAt::Image(self.u32()? as usize % (setup.image + 4096)),
            },
            _ => KAt::Abs(match self.u8()? % 3 {
                0 => self.u8()? as usize,
                1 => 0x1000 + self.u32()? as usize,
                _ => usize::MAX - self.u16()? as usize,
            }),
        })
    }

    /// A KMSAN range's length (objects, copies, memsets, checks, odd
    /// accesses): [`Self::size`]'s bytes and spread, except that a length
    /// between three pages and the overflowing ones is folded into three
    /// pages seven times out of eight (the class byte's high bits decide).
    /// The runtime and the oracle walk ranges byte by byte in both modes,
    /// so a 4 MiB range costs about 4M steps three times over; with
    /// [`Self::size`] a quarter of the ranges were MiB-sized and a KMSAN
    /// input ran about 10 times a second.
    fn kspan(&mut self) -> Option<usize> {
        let c = *self.data.get(self.pos)?;
        let v = self.size()?;
        const FOLD: usize = 3 * 4096;
        Some(if v > FOLD && v < usize::MAX - 0xFFFF && (c >> 4) & 7 != 0 { 1 + v % FOLD } else { v })
    }

    /// A page order: mostly small, sometimes past RAM or the hooks' limit.
    fn order(&mut self) -> Option<u32> {
        let b = self.u8()?;
        Some(if b & 0x80 == 0 { u32::from(b % 4) } else { u32::from(b % 24) })
    }

    fn kop(&mut self, setup: &KSetup) -> Option<KOp> {
        Some(match self.u8()? % 16 {
            0 | 1 => KOp::PageAlloc { at: self.kat(setup)?, order: self.order()?, zeroed: self.u8()? & 1 != 0 },
            2 => KOp::PageFree { at: self.kat(setup)?, order: self.order()? },
            3 => KOp::KmallocLarge { at: self.kat(setup)?, order: self.order()?, zeroed: self.u8()? & 1 != 0 },
            4 => {
                let (at, order, b) = (self.kat(setup)?, self.order()?, self.u8()?);
                KOp::Track { at, order, stack: b & 1 != 0, free: b & 2 != 0 }
            }
            5 | 6 => KOp::SlabAlloc { at: self.kat(setup)?, size: self.kspan()?, zeroed: self.u8()? & 1 != 0 },
            7 => KOp::SlabFree { at: self.kat(setup)?, size: self.kspan()? },
            8 => KOp::Vmalloc { pages: 1 + self.u8()? as usize % 8, zeroed: self.u8()? & 1 != 0 },
            9 => KOp::Vfree { pick: self.u16()? },
            10 | 11 => KOp::Store { at: self.kat(setup)?, size: self.access_size_or(Self::kspan)?, pattern: self.u8()?, from: self.kat(setup)? },
            12 => KOp::Load { at: self.kat(setup)?, size: self.access_size_or(Self::kspan)? },
            13 => KOp::Copy { dst: self.kat(setup)?, src: self.kat(setup)?, size: self.kspan()? },
            14 => {
                let (at, size, b) = (self.kat(setup)?, self.kspan()?, self.u8()?);
                let how = [KSet::Unpoison, KSet::Poison, KSet::Memset, KSet::PoisonAlloca, KSet::UnpoisonAlloca, KSet::AsmStore][b as usize % 6];
                KOp::Set { at, size, how }
            }
            _ => match self.u8()? % 3 {
                0 => KOp::Warning { at: self.kat(setup)? },
                _ => KOp::Check { at: self.kat(setup)?, size: self.kspan()? },
            },
        })
    }
}
