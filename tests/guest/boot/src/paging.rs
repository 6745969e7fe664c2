//! Kernel page tables: direct map of all RAM (2 MiB pages) at
//! 0xffff888000000000, kernel image at 0xffffffff80000000 + phys, and 4 KiB
//! map/unmap helpers (vmalloc). PML4 slots 472..=503 (shadow) are never
//! touched here: the runtime's mapper owns them.
use core::arch::asm;

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

static mut POOL: Pool = Pool([[0; 512]; POOL_PAGES]);
static mut POOL_USED: usize = 0;
static mut PML4_PHYS: u64 = 0;
/// Highest physical address covered by the direct map.
static mut DIRECT_MAP_END: u64 = 0;

extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_end: u8;
}

pub fn kernel_phys_range() -> (u64, u64) {
    unsafe {
        let s = &__kernel_phys_start as *const u8 as u64;
        let e = &__kernel_end as *const u8 as u64 - KERNEL_VMA;
        (s, e)
    }
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
    unsafe { DIRECT_MAP_END }
}

pub fn pml4_phys() -> u64 {
    unsafe { PML4_PHYS }
}

/// Boot-time page-table page from the static pool (kernel-image address).
fn pool_page() -> u64 {
    unsafe {
        if POOL_USED >= POOL_PAGES {
            crate::println!("boot: page-table pool exhausted (too much RAM?)");
            crate::serial::exit(crate::serial::code::BAD_BOOT);
        }
        let p = core::ptr::addr_of_mut!(POOL.0[POOL_USED]) as u64;
        POOL_USED += 1;
        p - KERNEL_VMA
    }
}

/// Table entry pointer, by physical address of the table, while the boot
/// identity map (pool pages in the kernel image) or the direct map is active.
unsafe fn table(pa: u64) -> *mut u64 {
    if !LOADED {
        (pa + KERNEL_VMA) as *mut u64 // boot map: 0xffffffff80000000 -> 0..1 GiB (pool pages)
    } else {
        phys_to_virt(pa) as *mut u64
    }
}

static mut LOADED: bool = false;

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
pub unsafe fn init(ram: &[(u64, u64)]) {
    let pml4 = pool_page();
    PML4_PHYS = pml4;
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
    DIRECT_MAP_END = (max + 0x1f_ffff) & !0x1f_ffff;
    // Kernel image: 0xffffffff80000000 -> 0..1 GiB, 2 MiB pages.
    let pdpt = next_table(pml4, 511, &mut alloc).unwrap();
    let pd = next_table(pdpt, 510, &mut alloc).unwrap();
    for i in 0..512u64 {
        *table(pd).add(i as usize) = (i << 21) | PTE_P | PTE_W | PTE_PS | PTE_G;
    }
    asm!("mov cr3, {}", in(reg) pml4, options(nostack));
    LOADED = true;
}

#[inline]
pub fn pml4_idx(va: u64) -> usize {
    (va >> 39) as usize & 511
}

/// Map one 4 KiB page. `alloc` returns the physical address of a fresh page
/// for intermediate tables (it is zeroed here). Refuses the shadow slots.
pub unsafe fn map_4k(va: u64, pa: u64, flags: u64, alloc: &mut dyn FnMut() -> Option<u64>) -> Result<(), ()> {
    if SHADOW_PML4_SLOTS.contains(&pml4_idx(va)) {
        return Err(());
    }
    let pdpt = next_table(PML4_PHYS, pml4_idx(va), alloc).ok_or(())?;
    let pd = next_table(pdpt, (va >> 30) as usize & 511, alloc).ok_or(())?;
    let pde = *table(pd).add((va >> 21) as usize & 511);
    if pde & PTE_PS != 0 {
        return Err(());
    }
    let pt = next_table(pd, (va >> 21) as usize & 511, alloc).ok_or(())?;
    *table(pt).add((va >> 12) as usize & 511) = (pa & ADDR_MASK) | flags | PTE_P;
    flush(va);
    Ok(())
}

/// Unmap one 4 KiB page, returning the physical address it mapped.
pub unsafe fn unmap_4k(va: u64) -> Option<u64> {
    let e = pte_ptr(va)?;
    let old = *e;
    if old & PTE_P == 0 {
        return None;
    }
    *e = 0;
    flush(va);
    Some(old & ADDR_MASK)
}

unsafe fn pte_ptr(va: u64) -> Option<*mut u64> {
    let mut tab = PML4_PHYS;
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
    unsafe {
        let mut tab = PML4_PHYS;
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
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack)) };
}

/// Flush the whole TLB, global entries included (toggle CR4.PGE).
pub fn flush_all() {
    unsafe {
        let cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nostack));
        asm!("mov cr4, {}", in(reg) cr4 & !(1u64 << 7), options(nostack));
        asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
}
