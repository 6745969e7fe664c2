//! User memory and the kernel's copies across the user boundary: a user
//! range the guest maps (`vm_mmap`, user pages below the canonical hole),
//! Linux's user-copy routines (`copy_from_user`, `copy_to_user`, their `__`
//! and `_inatomic` variants, `strncpy_from_user`) and
//! `copy_to_kernel_nofault`. The copies are done in assembly, which the
//! compiler does not instrument, so each routine checks the kernel side
//! itself as made by its caller (Linux's `instrument_copy_from_user` /
//! `instrument_copy_to_user`, `kasan_check_write`): a bad range is
//! reported and nothing is copied.
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use guest_boot::paging::{self, PTE_NX, PTE_W};

use crate::kasan_glue;
use crate::mm::{buddy, PAGE_SIZE};

/// Where the user mappings start (PML4 slot 0, far from anything else).
pub const USER_BASE: usize = 0x0000_0040_0000_0000;
/// The end of user space (x86_64's lower canonical half).
pub const USER_END: usize = 0x0000_8000_0000_0000;
/// The user/supervisor bit of a page-table entry.
const PTE_U: u64 = 1 << 2;

static NEXT: AtomicUsize = AtomicUsize::new(USER_BASE);
/// Serializes the user range's page-table edits: two CPUs mapping user
/// pages at once could both find a table missing and both install one.
static MAP_LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn table_page() -> Option<u64> {
    let p = buddy::alloc_pages_flags(0, buddy::PG_META)?;
    paging::virt_to_phys(p as u64)
}

/// Map `pages` zeroed user pages (read, write) at a fresh user address
/// (Linux's `vm_mmap` of anonymous memory); `None` if out of memory.
pub fn vm_mmap(pages: usize) -> Option<usize> {
    let addr = NEXT.fetch_add((pages + 1) * PAGE_SIZE, Relaxed);
    let _g = MAP_LOCK.lock();
    for i in 0..pages {
        let pg = buddy::alloc_pages(0)?;
        // SAFETY: a page just allocated, PAGE_SIZE bytes of the direct map.
        unsafe { core::ptr::write_bytes(pg as *mut u8, 0, PAGE_SIZE) };
        let pa = paging::virt_to_phys(pg as u64)?;
        let mut alloc = table_page;
        // SAFETY: `addr + i pages` is a fresh user address (NEXT only
        // grows), mapped by nobody; `pa` is the page just allocated;
        // table_page hands out fresh pages for the tables; MAP_LOCK keeps
        // other CPUs out of the user range's tables.
        unsafe { paging::map_4k((addr + i * PAGE_SIZE) as u64, pa, PTE_W | PTE_U | PTE_NX, &mut alloc).ok()? };
    }
    Some(addr)
}

/// Unmap `pages` user pages at `addr` (from [`vm_mmap`]) and free them.
pub fn vm_munmap(addr: usize, pages: usize) {
    let _g = MAP_LOCK.lock();
    for i in 0..pages {
        // SAFETY: the caller's mapping from vm_mmap; nothing uses it any more.
        if let Some(pa) = unsafe { paging::unmap_4k((addr + i * PAGE_SIZE) as u64) } {
            buddy::free_pages(paging::phys_to_virt(pa) as usize, 0);
        }
    }
}

/// Whether `[addr, addr + n)` lies in user space (Linux's `access_ok`).
pub fn access_ok(addr: usize, n: usize) -> bool {
    addr.checked_add(n).is_some_and(|end| end <= USER_END)
}

/// Copy `n` bytes in assembly (not instrumented: no check of either side).
///
/// # Safety
///
/// `src` is readable and `dst` writable for `n` bytes, mapped.
unsafe fn raw_copy(dst: usize, src: usize, n: usize) {
    // SAFETY: the caller's contract; `rep movsb` moves rcx bytes from
    // [rsi] to [rdi] upwards (DF is clear in Rust code).
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
}

/// Whether every page of `[addr, addr + n)` is mapped.
fn mapped(addr: usize, n: usize) -> bool {
    let mut a = addr & !(PAGE_SIZE - 1);
    while a < addr + n.max(1) {
        if paging::virt_to_phys(a as u64).is_none() {
            return false;
        }
        a += PAGE_SIZE;
    }
    true
}

/// The copy from user space shared by the variants: `to` (kernel) checked
/// as written by the code at `ip`; returns the bytes not copied.
fn from_user(to: usize, from: usize, n: usize, ip: usize, check_user: bool) -> usize {
    if (check_user && !access_ok(from, n)) || !mapped(from, n) {
        return n;
    }
    if !kasan_glue::check_access(to, n, true, ip) {
        return n;
    }
    // SAFETY: the user range is mapped (checked), the kernel range is
    // valid for `n` bytes by the runtime's check (or, in `off` mode, the
    // caller's word).
    unsafe { raw_copy(to, from, n) };
    0
}

/// The copy to user space shared by the variants: `from` (kernel)
/// checked as read by the code at `ip`; returns the bytes not copied.
fn to_user(to: usize, from: usize, n: usize, ip: usize, check_user: bool) -> usize {
    if (check_user && !access_ok(to, n)) || !mapped(to, n) {
        return n;
    }
    if !kasan_glue::check_access(from, n, false, ip) {
        return n;
    }
    // SAFETY: as in from_user, directions swapped.
    unsafe { raw_copy(to, from, n) };
    0
}

/// `copy_from_user`: `n` bytes from user `from` to kernel `to`; the bytes
/// not copied.
#[inline(never)]
pub fn copy_from_user(to: *mut u8, from: usize, n: usize) -> usize {
    from_user(to as usize, from, n, crate::mm::caller_ip(), true)
}

/// `copy_to_user`: `n` bytes from kernel `from` to user `to`; the bytes
/// not copied.
#[inline(never)]
pub fn copy_to_user(to: usize, from: *const u8, n: usize) -> usize {
    to_user(to, from as usize, n, crate::mm::caller_ip(), true)
}

/// `__copy_from_user`: [`copy_from_user`] without the `access_ok` check
/// (the caller did it).
#[inline(never)]
pub fn __copy_from_user(to: *mut u8, from: usize, n: usize) -> usize {
    from_user(to as usize, from, n, crate::mm::caller_ip(), false)
}

/// `__copy_to_user`: [`copy_to_user`] without the `access_ok` check.
#[inline(never)]
pub fn __copy_to_user(to: usize, from: *const u8, n: usize) -> usize {
    to_user(to, from as usize, n, crate::mm::caller_ip(), false)
}

/// `__copy_from_user_inatomic`: as [`__copy_from_user`], callable where
/// sleeping is not allowed (nothing sleeps here).
#[inline(never)]
pub fn __copy_from_user_inatomic(to: *mut u8, from: usize, n: usize) -> usize {
    from_user(to as usize, from, n, crate::mm::caller_ip(), false)
}

/// `__copy_to_user_inatomic`: as [`__copy_to_user`], atomic context.
#[inline(never)]
pub fn __copy_to_user_inatomic(to: usize, from: *const u8, n: usize) -> usize {
    to_user(to, from as usize, n, crate::mm::caller_ip(), false)
}

/// `strncpy_from_user`: copy a NUL-terminated string of at most `count`
/// bytes from user `src` to kernel `dst`; its length (without the NUL, or
/// `count` if none was met), or -14 (EFAULT). As Linux's, the whole
/// destination is checked first.
#[inline(never)]
pub fn strncpy_from_user(dst: *mut u8, src: usize, count: usize) -> isize {
    let ip = crate::mm::caller_ip();
    if !access_ok(src, count) || !kasan_glue::check_access(dst as usize, count, true, ip) {
        return -14;
    }
    for i in 0..count {
        if !mapped(src + i, 1) {
            return -14;
        }
        let mut b = 0u8;
        // SAFETY: one mapped user byte into a local.
        unsafe { raw_copy(&mut b as *mut u8 as usize, src + i, 1) };
        // SAFETY: `dst + i` is inside the checked destination.
        unsafe { raw_copy(dst as usize + i, &b as *const u8 as usize, 1) };
        if b == 0 {
            return i as isize;
        }
    }
    count as isize
}

/// `copy_to_kernel_nofault`: copy `n` bytes from kernel `src` to kernel
/// `dst` unless either is unmapped; both ranges checked as accessed by the
/// caller (a corrupted source would be written into the kernel). Err
/// (-EFAULT) when a range is unmapped or reported.
#[inline(never)]
pub fn copy_to_kernel_nofault(dst: *mut u8, src: *const u8, n: usize) -> Result<(), i32> {
    let ip = crate::mm::caller_ip();
    let (d, s) = (dst as usize, src as usize);
    if !mapped(d, n) || !mapped(s, n) {
        return Err(-14);
    }
    if !kasan_glue::check_access(s, n, false, ip) || !kasan_glue::check_access(d, n, true, ip) {
        return Err(-14);
    }
    // SAFETY: both ranges are mapped (checked) and valid by the runtime's
    // checks (or, in `off` mode, the caller's word).
    unsafe { raw_copy(d, s, n) };
    Ok(())
}
