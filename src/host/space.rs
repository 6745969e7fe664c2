//! Reservation of a slot of the host address space for one runtime.

use crate::layout::{Layout, Region, BLOCK_SIZE};
use std::sync::Mutex;
use std::vec::Vec;

/// The shadow offset used by the host backend.
pub const HOST_OFFSET: usize = 0x1000_0000_0000;
/// First data slot.
const SLOT_BASE: usize = 0x4000_0000_0000;
/// Data bytes per slot.
const SLOT_SIZE: usize = 16 << 30;
/// Slots available.
const SLOTS: usize = 1024;
/// KMSAN: shadow of a data address = address + this (1:1).
pub const KMSAN_SHADOW_OFFSET: usize = 0x1000_0000_0000;
/// KMSAN: origin of a data address = address + this (1:1).
pub const KMSAN_ORIGIN_OFFSET: usize = 0x2000_0000_0000;

static USED: Mutex<Vec<bool>> = Mutex::new(Vec::new());

/// Why a host slot could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceError {
    /// All slots are in use.
    NoSlot,
    /// The sizes do not fit a slot or are not block multiples.
    BadSize,
    /// `mmap` refused (address taken or out of memory).
    Mmap,
}

/// One reserved slot: data regions mapped read-write (no reserve) and the
/// shadow range reserved inaccessible until a mapper maps it.
pub struct HostSpace {
    slot: usize,
    layout: Layout,
    data: Region,
    shadow: Region,
    /// KMSAN's origin range (empty for KASAN slots).
    origin: Region,
    /// Covered memory after the image outside every layout region (a heap
    /// or stack to register as a tracked region); may be empty.
    extra: Region,
}

fn mmap_fixed(addr: usize, len: usize, prot: i32, noreplace: bool) -> Result<(), SpaceError> {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | libc::MAP_NORESERVE
        | if noreplace { libc::MAP_FIXED_NOREPLACE } else { libc::MAP_FIXED };
    // SAFETY: mapping anonymous memory at a fixed address in a range this
    // process reserved for the slot (or, with NOREPLACE, a free range).
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED || p as usize != addr {
        return Err(SpaceError::Mmap);
    }
    Ok(())
}

impl HostSpace {
    /// Reserve a slot with `ram`, `vmalloc` and `image` bytes (block multiples).
    pub fn new(ram: usize, vmalloc: usize, image: usize) -> Result<Self, SpaceError> {
        Self::reserve(ram, vmalloc, image, 0, false)
    }

    /// As [`HostSpace::new`], with `extra` more covered bytes after the
    /// image that belong to no layout region ([`HostSpace::extra`]).
    pub fn with_extra(ram: usize, vmalloc: usize, image: usize, extra: usize) -> Result<Self, SpaceError> {
        if !extra.is_multiple_of(BLOCK_SIZE) {
            return Err(SpaceError::BadSize);
        }
        Self::reserve(ram, vmalloc, image, extra, false)
    }

    /// Reserve a slot for KMSAN: the data regions plus a shadow and an
    /// origin range as large as the data, at [`KMSAN_SHADOW_OFFSET`] and
    /// [`KMSAN_ORIGIN_OFFSET`] from it.
    pub fn new_kmsan(ram: usize, vmalloc: usize, image: usize) -> Result<Self, SpaceError> {
        Self::reserve(ram, vmalloc, image, 0, true)
    }

    fn reserve(ram: usize, vmalloc: usize, image: usize, extra: usize, kmsan: bool) -> Result<Self, SpaceError> {
        if [ram, vmalloc, image].iter().any(|&n| n == 0 || n % BLOCK_SIZE != 0)
            || ram + vmalloc + image + extra > SLOT_SIZE
        {
            return Err(SpaceError::BadSize);
        }
        let slot = {
            let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
            if used.is_empty() {
                used.resize(SLOTS, false);
            }
            let i = used.iter().position(|u| !u).ok_or(SpaceError::NoSlot)?;
            used[i] = true;
            i
        };
        let base = SLOT_BASE + slot * SLOT_SIZE;
        let dm = Region::new(base, ram);
        let vm = Region::new(dm.end, vmalloc);
        let img = Region::new(vm.end, image);
        let extra = Region::new(img.end, extra);
        let covered = Region { start: base, end: extra.end };
        let layout = Layout { offset: HOST_OFFSET, direct_map: dm, vmalloc: vm, image: img, covered, user_end: base };
        let (shadow, origin) = if kmsan {
            (
                Region::new(covered.start + KMSAN_SHADOW_OFFSET, covered.len()),
                Region::new(covered.start + KMSAN_ORIGIN_OFFSET, covered.len()),
            )
        } else {
            (layout.shadow_of(covered), Region { start: 0, end: 0 })
        };
        let space = HostSpace { slot, layout, data: covered, shadow, origin, extra };
        mmap_fixed(covered.start, covered.len(), libc::PROT_READ | libc::PROT_WRITE, true)?;
        mmap_fixed(shadow.start, shadow.len(), libc::PROT_NONE, true)?;
        if kmsan {
            mmap_fixed(origin.start, origin.len(), libc::PROT_NONE, true)?;
        }
        Ok(space)
    }

    /// The layout to give the runtime.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The covered range after the image that no layout region holds.
    #[must_use]
    pub fn extra(&self) -> Region {
        self.extra
    }

    /// The reserved shadow range.
    #[must_use]
    pub fn shadow(&self) -> Region {
        self.shadow
    }

    /// The KMSAN layout of a slot made by [`HostSpace::new_kmsan`].
    #[must_use]
    pub fn kmsan_layout(&self) -> crate::kmsan::KmsanLayout {
        let r = |d: Region| crate::kmsan::MetaRegion {
            data: d,
            shadow: d.start + KMSAN_SHADOW_OFFSET,
            origin: d.start + KMSAN_ORIGIN_OFFSET,
        };
        let l = &self.layout;
        crate::kmsan::KmsanLayout { direct_map: r(l.direct_map), vmalloc: l.vmalloc, image: r(l.image) }
    }
}

impl Drop for HostSpace {
    fn drop(&mut self) {
        // SAFETY: both ranges were mapped by `new` for this slot only; the
        // runtime using them is dropped before the space (field order of
        // its owner), so nothing reads them any more.
        unsafe {
            libc::munmap(self.data.start as *mut libc::c_void, self.data.len());
            libc::munmap(self.shadow.start as *mut libc::c_void, self.shadow.len());
            if !self.origin.is_empty() {
                libc::munmap(self.origin.start as *mut libc::c_void, self.origin.len());
            }
        }
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        used[self.slot] = false;
    }
}
