//! Slab caches as the runtime sees them: slot layout with redzones, and the
//! per-object metadata kept in each slot's redzone.
//!
//! ```text
//!  slot (slot_size bytes, a multiple of the cache's alignment)
//!  ┌──────────────────────────┬──────────────┬──────────────────────┐
//!  │ object (object_size,     │ redzone      │ ObjMeta (32 bytes)   │
//!  │  rounded up to 8)        │ 0xFC         │ 0xFC in the shadow   │
//!  └──────────────────────────┴──────────────┴──────────────────────┘
//!  kmalloc(n): [0, n) accessible, [n, slot) poisoned 0xFC
//!  after free: [0, object) poisoned 0xFB, metadata keeps the stacks
//!
//!  slab page: [left redzone: slab_offset bytes][slot 0][slot 1] ... [tail]
//!             (all poisoned 0xFC until a slot is handed out)
//! ```

use crate::depot::{StackHandle, NO_STACK};
use arrayvec::ArrayVec;

/// Caches the runtime can know at once.
pub const MAX_CACHES: usize = 128;
/// Largest object a cache may hold.
pub const MAX_OBJECT: usize = 1 << 22;
/// Bytes of [`ObjMeta`].
pub const META_SIZE: usize = core::mem::size_of::<ObjMeta>();

/// A cache's handle: its slot in the runtime's table (low 7 bits) and the
/// slot's generation (high 9 bits). Destroyed slots are reused with the
/// next generation, so a stale handle (double destroy, free to a destroyed
/// cache) is told apart from the cache that took its slot, for 512 reuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheId(pub u16);

impl CacheId {
    const INDEX_BITS: u32 = 7;
    fn index(self) -> usize {
        (self.0 & ((1 << Self::INDEX_BITS) - 1)) as usize
    }
    fn generation(self) -> u16 {
        self.0 >> Self::INDEX_BITS
    }
    fn new(index: usize, generation: u16) -> Self {
        CacheId(index as u16 | (generation << Self::INDEX_BITS))
    }
}

/// Why a cache operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheError {
    /// [`MAX_CACHES`] caches exist already.
    TooManyCaches,
    /// Object size is zero or above [`MAX_OBJECT`].
    BadSize,
    /// Alignment is not a power of two or above a page.
    BadAlign,
    /// No cache has this id.
    UnknownCache,
    /// The cache was destroyed already (double destroy).
    AlreadyDestroyed,
    /// The cache still has allocated or quarantined objects.
    Busy,
}

impl core::fmt::Display for CacheError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CacheError::TooManyCaches => "too many caches",
            CacheError::BadSize => "bad object size",
            CacheError::BadAlign => "bad alignment",
            CacheError::UnknownCache => "unknown cache",
            CacheError::AlreadyDestroyed => "cache already destroyed",
            CacheError::Busy => "cache still has objects",
        })
    }
}

/// A cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheInfo {
    /// Name shown in reports ("kmalloc-128", "dentry").
    pub name: &'static str,
    /// Object size the cache was created with.
    pub object_size: usize,
    /// Slot stride the slab allocator must use.
    pub slot_size: usize,
    /// Offset of the first slot in a slab page: a left redzone, so the
    /// first object of a page has poison before it too.
    pub slab_offset: usize,
    /// Objects allocated and not yet freed.
    pub live: usize,
    /// Objects in quarantine.
    pub quarantined: usize,
    /// False after destroy.
    pub alive: bool,
    /// Generation of the table slot (see [`CacheId`]).
    generation: u16,
}

impl CacheInfo {
    /// Offset of the metadata inside a slot.
    #[must_use]
    pub const fn meta_offset(&self) -> usize {
        self.slot_size - META_SIZE
    }
    /// Object size rounded up to the granule.
    #[must_use]
    pub const fn object_span(&self) -> usize {
        (self.object_size + 7) & !7
    }
}

/// Redzone after an object, growing with its size (never below the metadata).
#[must_use]
pub const fn redzone_for(object_size: usize) -> usize {
    let rz = if object_size <= 64 - 16 {
        16
    } else if object_size <= 128 - 32 {
        32
    } else if object_size <= 512 - 64 {
        64
    } else if object_size <= 4096 - 128 {
        128
    } else if object_size <= (1 << 14) - 256 {
        256
    } else if object_size <= (1 << 15) - 512 {
        512
    } else if object_size <= (1 << 16) - 1024 {
        1024
    } else {
        2048
    };
    if rz < META_SIZE {
        META_SIZE
    } else {
        rz
    }
}

/// The slot size for an object of `object_size` aligned to `align`.
#[must_use]
pub const fn slot_size_for(object_size: usize, align: usize) -> usize {
    let align = if align < 8 { 8 } else { align };
    let raw = ((object_size + 7) & !7) + redzone_for(object_size);
    (raw + align - 1) & !(align - 1)
}

/// The registry of caches.
pub struct Caches {
    list: ArrayVec<CacheInfo, MAX_CACHES>,
}

impl Caches {
    pub(crate) const fn new() -> Self {
        Caches { list: ArrayVec::new_const() }
    }

    pub(crate) fn create(
        &mut self,
        name: &'static str,
        object_size: usize,
        align: usize,
        redzones: bool,
    ) -> Result<CacheId, CacheError> {
        if object_size == 0 || object_size > MAX_OBJECT {
            return Err(CacheError::BadSize);
        }
        if !align.is_power_of_two() || align > crate::mapper::PAGE_SIZE {
            return Err(CacheError::BadAlign);
        }
        let info = CacheInfo {
            name,
            object_size,
            slot_size: if redzones {
                slot_size_for(object_size, align)
            } else {
                (object_size + align - 1) & !(align - 1)
            },
            slab_offset: if redzones { align.max(16) } else { 0 },
            live: 0,
            quarantined: 0,
            alive: true,
            generation: 0,
        };
        // Reuse a destroyed slot (it holds no objects) with a new generation.
        if let Some(i) = self.list.iter().position(|c| !c.alive && c.live == 0 && c.quarantined == 0) {
            let generation = (self.list[i].generation + 1) & 0x1ff;
            self.list[i] = CacheInfo { generation, ..info };
            return Ok(CacheId::new(i, generation));
        }
        let id = CacheId::new(self.list.len(), 0);
        self.list.try_push(info).map_err(|_| CacheError::TooManyCaches)?;
        Ok(id)
    }

    pub(crate) fn get(&self, id: CacheId) -> Result<&CacheInfo, CacheError> {
        let c = self.list.get(id.index()).ok_or(CacheError::UnknownCache)?;
        if c.generation != id.generation() {
            return Err(CacheError::AlreadyDestroyed);
        }
        Ok(c)
    }

    pub(crate) fn get_mut(&mut self, id: CacheId) -> Result<&mut CacheInfo, CacheError> {
        let c = self.list.get_mut(id.index()).ok_or(CacheError::UnknownCache)?;
        if c.generation != id.generation() {
            return Err(CacheError::AlreadyDestroyed);
        }
        Ok(c)
    }

    /// A live cache (not destroyed).
    pub(crate) fn live(&self, id: CacheId) -> Result<&CacheInfo, CacheError> {
        let c = self.get(id)?;
        if c.alive {
            Ok(c)
        } else {
            Err(CacheError::AlreadyDestroyed)
        }
    }

    pub(crate) fn destroy(&mut self, id: CacheId) -> Result<(), CacheError> {
        let c = self.get_mut(id)?;
        if !c.alive {
            return Err(CacheError::AlreadyDestroyed);
        }
        if c.live != 0 || c.quarantined != 0 {
            return Err(CacheError::Busy);
        }
        c.alive = false;
        Ok(())
    }
}

/// Lifecycle of a slot, stored in its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ObjState {
    /// Never handed out, or back in the slab after quarantine.
    Available = 0,
    /// Handed out by the allocator.
    Allocated = 0xa10c,
    /// Freed, waiting in quarantine.
    Quarantined = 0xf4ee,
}

/// Per-object metadata in the slot's redzone. Written only by the runtime
/// (uninstrumented); the shadow keeps it poisoned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ObjMeta {
    /// Stack of the allocation.
    pub alloc_stack: StackHandle,
    /// Stack of the free.
    pub free_stack: StackHandle,
    /// Task that allocated.
    pub alloc_pid: u32,
    /// Task that freed.
    pub free_pid: u32,
    /// Requested size.
    pub size: u32,
    /// The owning cache (lets a quarantine walk find the slot).
    pub cache: u16,
    /// Raw [`ObjState`].
    pub state: u16,
    /// Metadata address of the next object in quarantine, 0 at the tail.
    pub qnext: usize,
}

impl ObjMeta {
    /// A fresh slot's metadata.
    pub const EMPTY: ObjMeta = ObjMeta {
        alloc_stack: NO_STACK,
        free_stack: NO_STACK,
        alloc_pid: 0,
        free_pid: 0,
        size: 0,
        cache: 0,
        state: ObjState::Available as u16,
        qnext: 0,
    };

    /// Decoded state; garbage reads as `Available`.
    #[must_use]
    pub fn state(&self) -> ObjState {
        match self.state {
            x if x == ObjState::Allocated as u16 => ObjState::Allocated,
            x if x == ObjState::Quarantined as u16 => ObjState::Quarantined,
            _ => ObjState::Available,
        }
    }
}

/// Pointer to the metadata of the slot at `slot`.
pub(crate) fn meta_ptr(cache: &CacheInfo, slot: usize) -> *mut ObjMeta {
    (slot + cache.meta_offset()) as *mut ObjMeta
}

/// Read metadata at its own address.
///
/// # Safety
///
/// `meta` must be the metadata address of a slot of a live slab page.
pub(crate) unsafe fn read_meta_at(meta: usize) -> ObjMeta {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::read_unaligned(meta as *const ObjMeta) }
}

/// Write metadata at its own address.
///
/// # Safety
///
/// As [`read_meta_at`].
pub(crate) unsafe fn write_meta_at(meta: usize, m: ObjMeta) {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::write_unaligned(meta as *mut ObjMeta, m) }
}

/// Read the metadata of `slot`.
///
/// # Safety
///
/// `slot` must be a slot of a live slab page of `cache` (mapped memory).
pub(crate) unsafe fn read_meta(cache: &CacheInfo, slot: usize) -> ObjMeta {
    // SAFETY: the caller guarantees the slot is mapped; the metadata may be
    // unaligned only if the slab is, so read unaligned.
    unsafe { core::ptr::read_unaligned(meta_ptr(cache, slot)) }
}

/// Write the metadata of `slot`.
///
/// # Safety
///
/// As [`read_meta`], and nobody else may use the metadata bytes.
pub(crate) unsafe fn write_meta(cache: &CacheInfo, slot: usize, m: ObjMeta) {
    // SAFETY: see the function's contract.
    unsafe { core::ptr::write_unaligned(meta_ptr(cache, slot), m) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_object_and_metadata() {
        assert_eq!(META_SIZE, 32);
        for size in [1, 8, 13, 15, 123, 128, 200, 4096, 8192, 8000, 100_000] {
            let s = slot_size_for(size, 8);
            assert!(s >= ((size + 7) & !7) + META_SIZE, "size {size}");
            assert_eq!(s % 8, 0);
        }
        assert_eq!(slot_size_for(100, 64) % 64, 0);
    }

    #[test]
    fn double_destroy_is_an_error() {
        let mut c = Caches::new();
        let id = c.create("test", 200, 8, true).unwrap();
        assert_eq!(c.destroy(id), Ok(()));
        assert_eq!(c.destroy(id), Err(CacheError::AlreadyDestroyed));
        assert_eq!(c.live(id).err(), Some(CacheError::AlreadyDestroyed));
        assert_eq!(c.destroy(CacheId(99)), Err(CacheError::UnknownCache));
        // the destroyed slot is reused; the stale id still says destroyed
        let again = c.create("again", 64, 8, true).unwrap();
        assert_ne!(again, id);
        assert_eq!(c.destroy(id), Err(CacheError::AlreadyDestroyed));
        assert_eq!(c.live(again).unwrap().name, "again");
        for i in 0..MAX_CACHES - 1 {
            let t = c.create("fill", 8 + i, 8, true).unwrap();
            c.destroy(t).unwrap();
        }
        assert_eq!(c.list.len(), 2, "destroy/create cycles reuse one slot");
        assert_eq!(c.create("z", 0, 8, true), Err(CacheError::BadSize));
        assert_eq!(c.create("z", 8, 3, true), Err(CacheError::BadAlign));
    }
}
