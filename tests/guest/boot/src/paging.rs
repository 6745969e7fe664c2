//! Kernel page tables: direct map of all RAM (2 MiB pages) at
//! 0xffff888000000000, kernel image at 0xffffffff80000000 + phys, and 4 KiB
//! map/unmap helpers (vmalloc). PML4 slots 472..=503 (shadow) are never
//! touched here: the runtime's mapper owns them.
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

pub const PAGE_SIZE: usize = 4096;
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
pub const VMALLOC_END: u64 = 0xffff_e900_0000_0000;
pub const VMEMMAP_BASE: u64 = 0xffff_ea00_0000_0000;
pub const SHADOW_START: u64 = 0xffff_ec00_0000_0000;
pub const SHADOW_END: u64 = 0xffff_fc00_0000_0000;
pub const KASAN_SHADOW_OFFSET: u64 = 0xdfff_fc00_0000_0000;
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// PML4 slots reserved for the shadow (runtime mapper).
pub const SHADOW_PML4_SLOTS: core::ops::RangeInclusive<usize> = 472..=503;

pub const PTE_P: u64 = 1;
pub const PTE_W: u64 = 2;
pub const PTE_PS: u64 = 1 << 7;
pub const PTE_G: u64 = 1 << 8;
pub const PTE_NX: u64 = 1 << 63;
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const POOL_PAGES: usize = 160; // enough for ~150 GiB of RAM with 2 MiB pages

#[repr(C, align(4096))]
struct Pool([[u64; 512]; POOL_PAGES]);

/// Page-table pages for boot (handed out once each by `pool_page`, then
/// only reached through page-table entries).
static mut POOL: Pool = Pool([[0; 512]; POOL_PAGES]);
static POOL_USED: AtomicUsize = AtomicUsize::new(0);
static PML4_PHYS: AtomicU64 = AtomicU64::new(0);
/// Highest physical address covered by the direct map.
static DIRECT_MAP_END: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_end: u8;
}

pub fn kernel_phys_range() -> (u64, u64) {
    // Only the addresses of the linker script's symbols are taken (no read).
    let s = core::ptr::addr_of!(__kernel_phys_start) as u64;
    let e = core::ptr::addr_of!(__kernel_end) as u64 - KERNEL_VMA;
    (s, e)
}

#[inline]
pub fn phys_to_virt(pa: u64) -> u64 {
    pa + DIRECT_MAP_BASE
}

/// Physical address of a direct-map or kernel-image address, else a page-table walk.
pub fn virt_to_phys(va: u64) -> Option<u64> {
    if va >= KERNEL_VMA {
        return Some(va - KERNEL_VMA);
    }
    if va >= DIRECT_MAP_BASE && va < DIRECT_MAP_BASE + direct_map_end() {
        return Some(va - DIRECT_MAP_BASE);
    }
    translate(va)
}

pub fn direct_map_end() -> u64 {
    DIRECT_MAP_END.load(Relaxed)
}

pub fn pml4_phys() -> u64 {
    PML4_PHYS.load(Relaxed)
}

/// Boot-time page-table page from the static pool (kernel-image address).
fn pool_page() -> u64 {
    let used = POOL_USED.fetch_add(1, Relaxed);
    if used >= POOL_PAGES {
        crate::println!("boot: page-table pool exhausted (too much RAM?)");
        crate::serial::exit(crate::serial::code::BAD_BOOT);
    }
    // SAFETY: only the address of pool page `used` is taken (in bounds:
    // checked above), no reference to the `static mut` is made.
    let p = unsafe { core::ptr::addr_of_mut!(POOL.0[used]) } as u64;
    p - KERNEL_VMA
}

/// Table entry pointer, by physical address of the table, while the boot
/// identity map (pool pages in the kernel image) or the direct map is active.
///
/// # Safety
///
/// `pa` is the physical address of a page-table page: a pool page before
/// `init` loads CR3, any RAM page after.
unsafe fn table(pa: u64) -> *mut u64 {
    if !LOADED.load(Relaxed) {
        (pa + KERNEL_VMA) as *mut u64 // boot map: 0xffffffff80000000 -> 0..1 GiB (pool pages)
    } else {
        phys_to_virt(pa) as *mut u64
    }
}

/// CR3 holds the kernel's page tables (`init` is done).
static LOADED: AtomicBool = AtomicBool::new(false);

/// The table entry `idx` of table `tab` points at, allocated (zeroed) with
/// `alloc` if not present.
///
/// # Safety
///
/// `tab` is a live page-table page (see [`table`]); `alloc` returns unused
/// pages reachable through [`table`].
unsafe fn next_table(tab: u64, idx: usize, alloc: &mut dyn FnMut() -> Option<u64>) -> Option<u64> {
    let e = table(tab).add(idx);
    if *e & PTE_P == 0 {
        let n = alloc()?;
        core::ptr::write_bytes(table(n) as *mut u8, 0, PAGE_SIZE);
        *e = n | PTE_P | PTE_W;
    }
    Some(*e & ADDR_MASK)
}

/// Build the kernel page tables and load CR3. `ram` lists (start, end) RAM ranges.
///
/// # Safety
///
/// Once, at boot, while the boot page tables (kernel image at
/// 0xffffffff80000000 -> 0..1 GiB) are live and `ram` is the firmware's RAM:
/// the new tables replace them.
pub unsafe fn init(ram: &[(u64, u64)]) {
    let pml4 = pool_page();
    PML4_PHYS.store(pml4, Relaxed);
    let mut alloc = || Some(pool_page());
    // Direct map: every 2 MiB chunk that overlaps RAM.
    let mut max = 0;
    for &(s, e) in ram {
        let mut pa = s & !0x1f_ffff;
        while pa < e {
            let va = phys_to_virt(pa);
            let pdpt = next_table(pml4, pml4_idx(va), &mut alloc).unwrap();
            let pd = next_table(pdpt, (va >> 30) as usize & 511, &mut alloc).unwrap();
            *table(pd).add((va >> 21) as usize & 511) = pa | PTE_P | PTE_W | PTE_PS | PTE_G | PTE_NX;
            pa += 0x20_0000;
        }
        if e > max {
            max = e;
        }
    }
    DIRECT_MAP_END.store((max + 0x1f_ffff) & !0x1f_ffff, Relaxed);
    // Kernel image: 0xffffffff80000000 -> 0..1 GiB, 2 MiB pages.
    let pdpt = next_table(pml4, 511, &mut alloc).unwrap();
    let pd = next_table(pdpt, 510, &mut alloc).unwrap();
    for i in 0..512u64 {
        *table(pd).add(i as usize) = (i << 21) | PTE_P | PTE_W | PTE_PS | PTE_G;
    }
    asm!("mov cr3, {}", in(reg) pml4, options(nostack));
    LOADED.store(true, Relaxed);
}

#[inline]
pub fn pml4_idx(va: u64) -> usize {
    (va >> 39) as usize & 511
}

/// Why [`map_4k`] mapped nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The address lies in the sanitizer's shadow slots (the runtime's mapper owns them).
    ShadowSlot,
    /// A 2 MiB page already maps the address.
    HugePage,
    /// An intermediate table was missing and `alloc` gave no page for it.
    NoTablePage,
}

/// Map one 4 KiB page. `alloc` returns the physical address of a fresh page
/// for intermediate tables (it is zeroed here). Refuses the shadow slots.
///
/// # Safety
///
/// After `init`; `va` is not mapped by anyone who relies on its old
/// translation, `pa` is a frame the caller owns, and `alloc` returns unused
/// RAM pages. No other CPU maps pages under the same PML4 slot at the same
/// time (callers serialize per range: vmalloc and the user range each hold
/// a lock), or both could install the same missing table.
pub unsafe fn map_4k(va: u64, pa: u64, flags: u64, alloc: &mut dyn FnMut() -> Option<u64>) -> Result<(), MapError> {
    if SHADOW_PML4_SLOTS.contains(&pml4_idx(va)) {
        return Err(MapError::ShadowSlot);
    }
    let pdpt = next_table(pml4_phys(), pml4_idx(va), alloc).ok_or(MapError::NoTablePage)?;
    let pd = next_table(pdpt, (va >> 30) as usize & 511, alloc).ok_or(MapError::NoTablePage)?;
    let pde = *table(pd).add((va >> 21) as usize & 511);
    if pde & PTE_PS != 0 {
        return Err(MapError::HugePage);
    }
    let pt = next_table(pd, (va >> 21) as usize & 511, alloc).ok_or(MapError::NoTablePage)?;
    *table(pt).add((va >> 12) as usize & 511) = (pa & ADDR_MASK) | flags | PTE_P;
    flush(va);
    Ok(())
}

/// Unmap one 4 KiB page, returning the physical address it mapped.
///
/// # Safety
///
/// After `init`; nothing uses `va` any more.
pub unsafe fn unmap_4k(va: u64) -> Option<u64> {
    // SAFETY: forwarded.
    let pa = unsafe { unmap_4k_local(va) }?;
    // Every CPU may hold the old translation.
    crate::smp::flush_page(va);
    Some(pa)
}

/// [`unmap_4k`] with a flush of this CPU's TLB only: the caller shoots the
/// other CPUs down ([`crate::smp::flush_range`]) before the frame is reused.
///
/// # Safety
///
/// After `init`; nothing uses `va` any more; the frame is not reused before
/// every CPU dropped the translation.
pub unsafe fn unmap_4k_local(va: u64) -> Option<u64> {
    let e = pte_ptr(va)?;
    let old = *e;
    if old & PTE_P == 0 {
        return None;
    }
    *e = 0;
    flush(va);
    Some(old & ADDR_MASK)
}

/// The 4 KiB PTE of `va`, if its tables exist (no large page on the way).
///
/// # Safety
///
/// After `init` (the tables are reached through the direct map).
unsafe fn pte_ptr(va: u64) -> Option<*mut u64> {
    let mut tab = pml4_phys();
    for (shift, _level) in [(39u64, 4), (30, 3), (21, 2)] {
        let e = *table(tab).add((va >> shift) as usize & 511);
        if e & PTE_P == 0 || e & PTE_PS != 0 {
            return None;
        }
        tab = e & ADDR_MASK;
    }
    Some(table(tab).add((va >> 12) as usize & 511))
}

/// Walk the page tables (handles 1 GiB / 2 MiB / 4 KiB pages).
pub fn translate(va: u64) -> Option<u64> {
    // SAFETY: reads only, from the live tables (CR3's, reached through the
    // boot map before init and the direct map after, as `table` picks);
    // every entry followed is present, so its address is a table page.
    unsafe {
        let mut tab = pml4_phys();
        for shift in [39u64, 30, 21, 12] {
            let e = *table(tab).add((va >> shift) as usize & 511);
            if e & PTE_P == 0 {
                return None;
            }
            if shift == 12 || (shift != 39 && e & PTE_PS != 0) {
                let mask = (1u64 << shift) - 1;
                return Some((e & ADDR_MASK & !mask) | (va & mask));
            }
            tab = e & ADDR_MASK;
        }
        None
    }
}

#[inline]
pub fn flush(va: u64) {
    // SAFETY: invlpg only drops a TLB entry; the next access walks the tables.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack)) };
}

/// Flush the whole TLB, global entries included (toggle CR4.PGE).
pub fn flush_all() {
    // SAFETY: clearing and restoring CR4.PGE (bit 7) only flushes the TLB;
    // every other CR4 bit is written back unchanged.
    unsafe {
        let cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nostack));
        asm!("mov cr4, {}", in(reg) cr4 & !(1u64 << 7), options(nostack));
        asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
}
