//! A KMSAN runtime on the host backend, with the compiler's side of each
//! access emulated: what instrumented code does with the pointers that
//! `__msan_metadata_ptr_for_{load,store}_N` return.
//!
//! ```text
//!  store(addr, shadow, origin): p = meta_store(addr, n); p.shadow[..n] = shadow;
//!                               if shadow != 0 { p.origin[..ceil(n/4)] = origin }
//!  load(addr, n):               p = meta_load(addr, n); (p.shadow[..n], *p.origin)
//! ```
//!
//! Host tests and the differential test drive `full` and `hybrid` through
//! this with the same operations.

use crate::config::{Config, Mode};
use crate::host::mapper::HostMapper;
use crate::host::platform::HostPlatform;
use crate::host::sim::Arena;
use crate::host::space::{HostSpace, SpaceError};
use crate::kmsan::{Context, Kmsan, KmsanInitError, Origin};
use std::vec::Vec;

/// Why a host KMSAN could not start.
#[derive(Debug)]
pub enum KmsanHostError {
    /// Address space reservation failed.
    Space(SpaceError),
    /// The runtime refused to start.
    Init(KmsanInitError),
}

/// A KMSAN runtime over a reserved host slot, with one task context.
pub struct KmsanHost {
    /// The runtime (dropped before the address space it maps).
    pub kmsan: Kmsan<HostMapper, HostPlatform>,
    /// The platform (shares state with the runtime's copy).
    pub plat: HostPlatform,
    /// The current task's context.
    pub ctx: std::boxed::Box<Context>,
    _space: HostSpace,
    /// The runtime's arena, freed after it (field order).
    _arena: Arena,
}

impl KmsanHost {
    /// A runtime in `mode` over `ram` bytes of RAM, `vmalloc` bytes of
    /// vmalloc window and `image` bytes of image (multiples of 32 KiB),
    /// reporting every bug (multi-shot).
    pub fn new(mode: Mode, ram: usize, vmalloc: usize, image: usize) -> Result<Self, KmsanHostError> {
        let cfg = Config { mode, multi_shot: true, ..Config::default() };
        Self::with_config(cfg, ram, vmalloc, image)
    }

    /// As [`KmsanHost::new`] with a full configuration.
    pub fn with_config(cfg: Config, ram: usize, vmalloc: usize, image: usize) -> Result<Self, KmsanHostError> {
        let space = HostSpace::new_kmsan(ram, vmalloc, image).map_err(KmsanHostError::Space)?;
        let layout = space.kmsan_layout();
        let mapper = HostMapper::new(layout.meta_span());
        let plat = HostPlatform::new();
        let arena = Arena::new(Kmsan::<HostMapper, HostPlatform>::arena_bytes(&layout, &cfg));
        // SAFETY: handed over once; `kmsan` is declared before `_arena`, so
        // the runtime drops before its arena.
        let mem = unsafe { arena.hand_over() };
        let kmsan = Kmsan::new(cfg, layout, mapper, plat.clone(), mem).map_err(KmsanHostError::Init)?;
        if cfg.mode == Mode::Full {
            // Linux's cost, as a kernel pays it at boot: metadata for every page.
            for pfn in 0..layout.ram_pages() {
                kmsan.full_back_page(layout.direct_map.data.start + pfn * crate::mapper::PAGE_SIZE);
            }
        }
        Ok(KmsanHost { kmsan, plat, ctx: std::boxed::Box::new(Context::new()), _space: space, _arena: arena })
    }

    /// First RAM address.
    #[must_use]
    pub fn ram(&self) -> usize {
        self.kmsan.layout().direct_map.data.start
    }

    /// First vmalloc address.
    #[must_use]
    pub fn vmalloc(&self) -> usize {
        self.kmsan.layout().vmalloc.start
    }

    /// First image address.
    #[must_use]
    pub fn image(&self) -> usize {
        self.kmsan.layout().image.data.start
    }

    /// An instrumented store of `shadow.len()` bytes at `addr` whose value
    /// has shadow `shadow` and origin `origin`.
    pub fn store(&mut self, addr: usize, shadow: &[u8], origin: Origin) {
        let n = shadow.len();
        let p = self.kmsan.meta_store(&mut self.ctx, addr, n);
        // SAFETY: the runtime returned writable metadata for `n` bytes
        // (real private pages or the context's sink) and origin slots for
        // ceil(n / 4) + 1 slots.
        unsafe {
            core::ptr::copy_nonoverlapping(shadow.as_ptr(), p.shadow, n);
            if shadow.iter().any(|&b| b != 0) {
                for k in 0..n.div_ceil(4) {
                    p.origin.add(k).write(origin);
                }
            }
        }
    }

    /// An instrumented load of `n` bytes at `addr`: the value's shadow and
    /// origin.
    pub fn load(&mut self, addr: usize, n: usize) -> (Vec<u8>, Origin) {
        let p = self.kmsan.meta_load(&mut self.ctx, addr, n);
        // SAFETY: the runtime returned readable metadata for `n` bytes.
        unsafe { (core::slice::from_raw_parts(p.shadow, n).to_vec(), p.origin.read()) }
    }

    /// Map the RAM frames `pfns` together at vmalloc address `addr` (what a
    /// kernel's vmalloc or vmap does with its page tables).
    pub fn vmap(&mut self, addr: usize, pfns: &[usize]) {
        let ram: Vec<usize> = pfns.iter().map(|p| self.ram() + p * crate::mapper::PAGE_SIZE).collect();
        self.plat.map_vmalloc(addr, &ram);
    }

    /// Unmap `pages` pages at vmalloc address `addr`.
    pub fn vunmap(&mut self, addr: usize, pages: usize) {
        self.plat.unmap_vmalloc(addr, pages);
    }

    /// Settle the context's deferred store (what the next runtime entry does).
    pub fn settle(&mut self) {
        self.kmsan.settle(&mut self.ctx);
    }

    /// Run `f` as function `name` (its frame is on the fake stack).
    pub fn call<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.plat.enter(name);
        let r = f(self);
        self.plat.leave();
        r
    }

    /// Take the console text written so far.
    pub fn take_log(&self) -> std::string::String {
        self.plat.take_log()
    }
}
