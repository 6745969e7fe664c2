//! The KASAN instance: `Kasan<X86ShadowMapper<BuddyFrames>, GuestPlatform>`
//! and the non-generic hook wrappers `kasan_glue.rs` calls.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use hybrid_shadow::mapper::{Flush, MapError, SharedPage, ShadowMapper};
use hybrid_shadow::{Ip, Size};
use guest_boot::println;
use hybrid_shadow::{
    Backing, CacheId, Config, Freed, Kasan, Layout, Mode, Region, StatsSnapshot,
};
use hybrid_shadow_x86_64::{init as xinit, OffsetPhysMem, PhysAddr, X86ShadowMapper};

pub use hybrid_shadow::page_state::PageState;

use crate::{build_ranges, refused, BuddyFrames, FreeAction, GuestOps, GuestPlatform, Params, OPS};

/// The x86-64 page-table mapper of the guest: TLB flushes shoot down every CPU.
pub type X86Mapper = X86ShadowMapper<BuddyFrames, OffsetPhysMem, crate::SmpTlb>;
/// The mapper type of the guest: [`X86Mapper`], its one-page remaps counted.
pub type Mapper = CountingMapper;

/// One-page shadow remaps (shared to private, private to shared, shared
/// to another shared page): each one a shadow page changing its backing.
static REMAPS: AtomicUsize = AtomicUsize::new(0);

/// Shadow transitions so far: the mapper's one-page remaps (`map_shared`,
/// `map_private`; the runtime calls them only when a page's backing
/// changes), as the host mapper counts them.
pub fn shadow_remaps() -> usize {
    REMAPS.load(Relaxed)
}

/// [`X86Mapper`] with a count of its one-page remaps ([`shadow_remaps`]).
pub struct CountingMapper(X86Mapper);

// SAFETY: every call goes unchanged to the inner mapper, which keeps the
// trait's contract; the flush tokens returned are the inner mapper's, for
// the pages it remapped, and `flush_page` is its own.
unsafe impl ShadowMapper for CountingMapper {
    fn map_shared_range(&mut self, start: usize, end: usize, kind: SharedPage) -> Result<(), MapError> {
        self.0.map_shared_range(start, end, kind)
    }

    fn map_shared(&mut self, page: usize, kind: SharedPage) -> Result<Flush, MapError> {
        let r = self.0.map_shared(page, kind);
        if r.is_ok() {
            REMAPS.fetch_add(1, Relaxed);
        }
        r
    }

    fn map_private(&mut self, page: usize, fill: u8) -> Result<Flush, MapError> {
        let r = self.0.map_private(page, fill);
        if r.is_ok() {
            REMAPS.fetch_add(1, Relaxed);
        }
        r
    }

    fn flush_page(&mut self, page: usize) {
        self.0.flush_page(page);
    }

    fn table_bytes(&self) -> usize {
        self.0.table_bytes()
    }

    fn table_peak_bytes(&self) -> usize {
        self.0.table_peak_bytes()
    }

    fn reshare(&mut self) -> usize {
        self.0.reshare()
    }
}
/// The runtime type of the guest.
pub type Rt = Kasan<Mapper, GuestPlatform>;

static KASAN: spin::Once<Rt> = spin::Once::new();

/// The runtime, once [`init`] ran.
pub fn rt() -> Option<&'static Rt> {
    KASAN.get()
}

const BLOCK: usize = hybrid_shadow::layout::BLOCK_SIZE;
const fn up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Start the runtime: shadow mapper over the guest's PML4, direct-map
/// shadow tables pre-unshared (so remaps never allocate tables), metadata
/// arena from the buddy allocator, initial shadow. The caller then marks
/// reserved RAM ([`mark_reserved`]) and calls [`install`].
pub fn init(p: &Params, guest: &'static GuestOps) -> Result<(), &'static str> {
    OPS.call_once(|| guest);
    build_ranges();
    let mut cfg = Config::default();
    cfg.parse_cmdline(p.cmdline, |e| println!("{}", e));
    // Linux sizes the quarantine at 1/32 of its RAM (totalram_pages), not
    // of the physical span the direct map covers (the runtime's default):
    // at 4 GiB the span is 5 GiB, 1 GiB of it the PCI hole.
    if cfg.quarantine_bytes.is_none() {
        cfg.quarantine_bytes = Some(p.ram_bytes as usize / 32);
    }
    let dm_start = hybrid_shadow_x86_64::DIRECT_MAP_BASE;
    let layout = Layout {
        offset: hybrid_shadow_x86_64::SHADOW_OFFSET,
        direct_map: Region { start: dm_start, end: dm_start + up(p.ram_end as usize, BLOCK) },
        vmalloc: Region { start: p.vmalloc.0, end: p.vmalloc.1 },
        image: Region {
            start: p.kernel_vma + (p.kernel_phys.0 as usize & !(BLOCK - 1)),
            end: p.kernel_vma + up(p.kernel_phys.1 as usize, BLOCK),
        },
        covered: Region { start: 0xffff_8000_0000_0000, end: 0xffff_ffff_ffff_f000 },
        user_end: 0x0000_8000_0000_0000,
    };
    layout.validate().map_err(|_| "bad layout")?;
    // SAFETY: the PML4 is the live one; its shadow slots (472..=503) are
    // left to the mapper by the guest's paging code, and map the early
    // zero shadow (guest_boot's early_shadow: a read-only zero page in the
    // image, never a buddy frame) until the mapper points them at its own
    // zero tables; all RAM is mapped at DIRECT_MAP_BASE
    // (OffsetPhysMem::direct_map); SmpTlb flushes every CPU that uses the
    // PML4 (CPL 0); EFER.NXE was set at boot (every CPU).
    let mut mapper = unsafe {
        X86Mapper::new_over_early(
            PhysAddr::new(p.pml4),
            OffsetPhysMem::direct_map(),
            BuddyFrames,
            crate::SmpTlb,
            hybrid_shadow_x86_64::Config::linux(),
        )
    }
    .map_err(|_| "shadow mapper init failed")?;
    if cfg.mode != Mode::Off {
        xinit::unshare_shadow_of(&mut mapper, layout.direct_map.start, layout.direct_map.end)
            .map_err(|_| "no memory for the direct map's shadow page tables")?;
    }
    let arena = crate::alloc_arena(Rt::arena_bytes(&layout, &cfg), guest)?;
    let k = Rt::new(cfg, layout, CountingMapper(mapper), GuestPlatform, arena).map_err(|_| "runtime init failed")?;
    KASAN.call_once(|| k);
    Ok(())
}

/// Route the compiler's `__asan_*` calls to the runtime (no-op in `off`).
pub fn install() {
    if let Some(k) = rt() {
        hybrid_shadow::abi::install(k);
    }
}

/// The runtime's configuration (None before init).
pub(crate) fn config() -> Option<&'static Config> {
    rt().map(|k| k.config())
}

/// Counters.
pub fn stats() -> Option<StatsSnapshot> {
    rt().map(|k| k.stats())
}

/// The runtime's shrinker: give back promoted mixed-block shadow pages.
pub fn shrink() -> usize {
    rt().map_or(0, |k| k.shrink())
}

/// Backing of the shadow page of a direct-map address.
pub fn backing_of(addr: usize) -> Option<Backing> {
    let k = rt()?;
    let pfn = k.pages().pfn(addr)?;
    Some(k.backing_of_pfn(pfn))
}

/// Per-page state of a direct-map address.
pub fn page_state(addr: usize) -> Option<PageState> {
    let k = rt()?;
    let pfn = k.pages().pfn(addr)?;
    Some(k.pages().get(pfn).state)
}

/// RAM outside every allocator: valid.
pub fn mark_reserved(addr: usize, len: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.mark_reserved(addr, Size(len)) {
            refused("mark_reserved", addr, e);
        }
    }
}

pub fn page_alloc(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.page_alloc(addr, order) {
            refused("page_alloc", addr, e);
        }
    }
}

/// False when the runtime reported a bad free.
pub fn page_free(addr: usize, order: u32, ip: usize) -> bool {
    rt().is_none_or(|k| k.page_free(addr, order, Ip(ip)).is_ok())
}

/// Register a cache: (id, slot size, offset of the first slot in a slab).
pub fn cache_create(name: &'static str, size: usize, align: usize) -> Option<(u16, usize, usize)> {
    let k = rt()?;
    match k.cache_create(name, size, align) {
        Ok(id) => {
            let info = k.cache_info(id).ok()?;
            Some((id.0, info.slot_size, info.slab_offset))
        }
        Err(e) => {
            refused("cache_create", size, e);
            None
        }
    }
}

pub fn cache_destroy(id: u16) {
    if let Some(k) = rt() {
        if let Err(e) = k.cache_destroy(CacheId(id)) {
            refused("cache_destroy", id as usize, e);
        }
    }
}

pub fn slab_page_alloc(id: u16, base: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_page_alloc(CacheId(id), base, order) {
            refused("slab_page_alloc", base, e);
        }
    }
}

pub fn slab_page_free(base: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_page_free(base, order) {
            refused("slab_page_free", base, e);
        }
    }
}

pub fn slab_alloc(id: u16, ptr: usize, size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_alloc(CacheId(id), ptr, Size(size)) {
            refused("slab_alloc", ptr, e);
        }
    }
}

pub fn slab_free(id: u16, ptr: usize, ip: usize) -> FreeAction {
    match rt().map(|k| k.slab_free(CacheId(id), ptr, Ip(ip))) {
        None | Some(Ok(Freed::FreeNow)) => FreeAction::Now,
        Some(Ok(Freed::Quarantined)) => FreeAction::Deferred,
        Some(Err(_)) => FreeAction::Bug,
    }
}

/// Next object the quarantine lets go (over its limit).
pub fn quarantine_pop() -> Option<usize> {
    rt()?.quarantine_pop().map(|r| r.ptr)
}

/// Next object of an emptying quarantine.
pub fn quarantine_drain() -> Option<usize> {
    rt()?.quarantine_drain().map(|r| r.ptr)
}

/// Queue a cache's quarantined objects for release (before destroy).
pub fn quarantine_release_cache(id: u16) -> usize {
    rt().map_or(0, |k| k.quarantine_release_cache(CacheId(id)))
}

pub fn ksize(id: u16, ptr: usize, ip: usize) -> usize {
    rt().map_or(0, |k| k.ksize(CacheId(id), ptr, Ip(ip)))
}

pub fn slab_resize(id: u16, ptr: usize, new_size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.slab_resize(CacheId(id), ptr, Size(new_size)) {
            refused("slab_resize", ptr, e);
        }
    }
}

/// First byte of `ptr` accessible? (reports if not)
pub fn check_byte(ptr: usize, ip: usize) -> bool {
    rt().is_none_or(|k| k.check_byte(ptr, Ip(ip)))
}

/// Whether the runtime sees the object at `ptr` as allocated.
pub fn slab_object_live(id: u16, ptr: usize) -> bool {
    rt().is_some_and(|k| k.slab_object_live(CacheId(id), ptr))
}

pub fn kmalloc_large(addr: usize, order: u32, size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.kmalloc_large(addr, order, Size(size)) {
            refused("kmalloc_large", addr, e);
        }
    }
}

pub fn kfree_large(ptr: usize, order: u32, ip: usize) -> bool {
    rt().is_none_or(|k| k.kfree_large(ptr, order, Ip(ip)).is_ok())
}

/// A mempool takes slab object `ptr` (cache `id`, slab's first slot at
/// `base`) into its reserve: poisoned as freed. False if the runtime
/// reported a double or invalid free (the pool must not take it).
pub fn mempool_poison_object(id: u16, base: usize, ptr: usize, ip: usize) -> bool {
    rt().is_none_or(|k| k.mempool_poison_object(CacheId(id), base, ptr, Ip(ip)).is_ok())
}

/// A mempool hands slab object `ptr` out again for `size` bytes.
pub fn mempool_unpoison_object(id: u16, ptr: usize, size: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.mempool_unpoison_object(CacheId(id), ptr, Size(size)) {
            refused("mempool_unpoison_object", ptr, e);
        }
    }
}

/// A mempool takes the page-backed kmalloc at `ptr` (2^order pages) into
/// its reserve: its pages poisoned as free. False if the runtime reported
/// a double or invalid free.
pub fn mempool_poison_large(ptr: usize, order: u32, ip: usize) -> bool {
    rt().is_none_or(|k| k.mempool_poison_large(ptr, order, Ip(ip)).is_ok())
}

/// A bad free the guest's allocator found itself.
pub fn report_invalid_free(ptr: usize, ip: usize) {
    if let Some(k) = rt() {
        k.report_invalid_free(ptr, ip);
    }
}

pub fn stack_alloc(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.stack_alloc(addr, order) {
            refused("stack_alloc", addr, e);
        }
    }
}

pub fn stack_free(addr: usize, order: u32) {
    if let Some(k) = rt() {
        if let Err(e) = k.stack_free(addr, order) {
            refused("stack_free", addr, e);
        }
    }
}

pub fn vmalloc_alloc(addr: usize, size: usize, area_len: usize) {
    if let Some(k) = rt() {
        match k.vmalloc_alloc(addr, Size(size), Size(area_len)) {
            Ok(_) => {}
            Err(e) => refused("vmalloc_alloc", addr, e),
        }
    }
}

pub fn vmalloc_free(addr: usize, area_len: usize) {
    if let Some(k) = rt() {
        if let Err(e) = k.vmalloc_free(addr, Size(area_len)) {
            refused("vmalloc_free", addr, e);
        }
    }
}

/// A checked access the suite cannot perform (it would fault): the check
/// the compiler emits before it, attributed to `ip`.
pub fn check_access(addr: usize, size: usize, write: bool, ip: usize) -> bool {
    rt().is_none_or(|k| k.check(addr, Size(size), write, Ip(ip)).is_ok())
}

