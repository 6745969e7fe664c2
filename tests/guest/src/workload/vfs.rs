//! A tiny VFS: dentries (with inline or kmalloc'd external names) in a hash
//! table, inodes, open files, path walk through `names_cache` buffers; all
//! objects come from named slab caches, like the kernel's.
//!
//! Profile `build` (the default) adds what a kernel build keeps: a source
//! tree of `files=` stat-only files (each an inode of `INODE_SIZE_BUILD`
//! bytes, ext4_inode_cache's class, and a 192-byte dentry), the page-cache
//! index of multi-page files in 576-byte `radix_tree_node` objects (64 page
//! slots each, as Linux's xarray nodes) instead of one flat kmalloc'd array,
//! and a shrinker: the dentries of files sit on an LRU (new ones at the
//! head, a lookup hit marks them referenced); under memory pressure page
//! reclaim calls `shrink_for`, which scans from the tail twice the fraction
//! of dentries that reclaim took of the page cache (Linux's
//! `do_shrink_slab` with `DEFAULT_SEEKS`), gives referenced ones a second
//! chance, skips files that are open or have cached pages, and frees the
//! rest: dentry, external name, inode and its page index. A file looked up
//! again comes back from "disk" (sources, headers and the tree are
//! deterministic; object files keep their size and content in `disk`).
//! Profile `light` has none of this (today's workload, for comparison).
//!
//! Several CPUs: every public function takes the workload's fs lock
//! (`fslock.rs`, shared with the page cache). An open file keeps its inode
//! (the shrinker skips inodes with `refs`), so a task reads the fixed
//! fields of its open files' inodes without the lock (`File::npages`,
//! `File::content`).
use super::fslock::{self, FsCell};
use super::mem::{self, Kc};
use super::pagecache;
use super::rng::{hash3, mix, Rng};
use crate::mm::{buddy, PAGE_SIZE};

pub const KIND_DIR: u32 = 0;
pub const KIND_SOURCE: u32 = 1;
pub const KIND_HEADER: u32 = 2;
pub const KIND_OUTPUT: u32 = 3;
/// A file of the source tree that the build only looks up (profile build).
pub const KIND_TREE: u32 = 4;

const DENTRY_SIZE: usize = 192;
const INODE_SIZE: usize = 600;
/// Profile build: ext4_inode_cache's size class (~1 KiB).
const INODE_SIZE_BUILD: usize = 1024;
/// Profile build: an xarray node, 64 slots (Linux's radix_tree_node, 576 bytes).
const XA_NODE_SIZE: usize = 576;
const XA_SLOTS: usize = 64;
/// Words before the slots in a node (the first holds the count of used slots).
const XA_HDR_WORDS: usize = 8;
/// Dentry on the LRU / referenced since the shrinker last saw it.
const D_LRU: u32 = 1;
const D_REFERENCED: u32 = 2;
const FILP_SIZE: usize = 256;
const PATH_MAX: usize = 4096;
const DNAME_INLINE_LEN: usize = 40;
const HASH_BUCKETS: usize = 4096;
/// Inode-table slot that holds no inode: `(next free slot + 1) << 1 | 1`.
const SLOT_FREE: usize = 1;

#[repr(C)]
pub struct Inode {
    pub ino: u32,
    pub kind: u32,
    pub npages: u32,
    pub cached: u32,
    /// Page cache: one address per page (0 = not cached), kmalloc'd.
    pub pages: *mut usize,
    /// Disk content seed.
    pub content: u64,
    /// Pages written back to "disk".
    pub written: u32,
    pub opens: u32,
    /// Open files on this inode (the shrinker skips it while > 0).
    pub refs: u32,
    /// `pages` is a root of `radix_tree_node` pointers (profile build,
    /// files of more than one page), else a flat array of page addresses.
    pub xa: u32,
}

impl Inode {
    /// Address of cached page `i` (0: not cached); i < npages.
    #[inline]
    pub fn page(&self, i: usize) -> usize {
        if self.xa == 0 {
            // SAFETY: `pages` is the flat array of `npages` addresses new_inode made; i < npages (the caller's).
            return unsafe { *self.pages.add(i) };
        }
        // SAFETY: the root holds npages.div_ceil(XA_SLOTS) node pointers (new_inode); i < npages.
        let node = unsafe { *self.pages.add(i / XA_SLOTS) } as *const usize;
        if node.is_null() {
            return 0;
        }
        // SAFETY: a node is a live XA_NODE_SIZE object (XA_HDR_WORDS + XA_SLOTS words) while the root points at it.
        unsafe { *node.add(XA_HDR_WORDS + i % XA_SLOTS) }
    }

    /// Set cached page `i` to `addr` (0: none). Profile build allocates a
    /// node when its first page arrives and frees it when its last goes.
    pub fn set_page(&mut self, i: usize, addr: usize) {
        if self.xa == 0 {
            // SAFETY: as in `page`.
            unsafe { *self.pages.add(i) = addr };
            return;
        }
        // SAFETY: as in `page`.
        let root = unsafe { self.pages.add(i / XA_SLOTS) };
        // SAFETY: `root` is inside the root array.
        let mut node = unsafe { *root } as *mut usize;
        if node.is_null() {
            if addr == 0 {
                return;
            }
            // A reclaim inside this allocation cannot touch this node's
            // range: none of its pages is cached (it has no node).
            let Some(xc) = v().xa_cache else { super::broken("vfs: page index node without a cache", i) };
            node = mem::cache_alloc(xc) as *mut usize;
            // SAFETY: a fresh XA_NODE_SIZE object; `root` as above.
            unsafe {
                core::ptr::write_bytes(node as *mut u8, 0, XA_NODE_SIZE);
                *root = node as usize;
            }
        }
        // SAFETY: `node` is live (XA_HDR_WORDS + XA_SLOTS words); word 0 counts the used slots.
        unsafe {
            let slot = node.add(XA_HDR_WORDS + i % XA_SLOTS);
            let was = *slot;
            *slot = addr;
            if was == 0 && addr != 0 {
                *node += 1;
            } else if was != 0 && addr == 0 {
                *node -= 1;
                if *node == 0 {
                    *root = 0;
                    if let Some(xc) = v().xa_cache {
                        mem::cache_free(xc, node as *mut u8);
                    }
                }
            }
        }
    }
}

#[repr(C)]
pub struct Dentry {
    parent: *mut Dentry,
    inode: *mut Inode,
    hash_next: *mut Dentry,
    name: *mut u8,
    name_len: u32,
    hash: u32,
    inline_name: [u8; DNAME_INLINE_LEN],
    /// LRU links (profile build; file dentries only).
    lru_prev: *mut Dentry,
    lru_next: *mut Dentry,
    flags: u32,
}

#[repr(C)]
pub struct File {
    pub inode: *mut Inode,
    pub pos: u64,
    pub flags: u32,
}

impl File {
    /// Pages of the file (fixed when its inode was made).
    pub fn npages(&self) -> u32 {
        // SAFETY: an open file's inode is live (see the header); `npages`
        // is written only by `new_inode`, before the inode is published.
        unsafe { core::ptr::addr_of!((*self.inode).npages).read() }
    }

    /// Disk content seed of the file (fixed when its inode was made).
    pub fn content(&self) -> u64 {
        // SAFETY: as in `npages`.
        unsafe { core::ptr::addr_of!((*self.inode).content).read() }
    }
}

struct Vfs {
    dentry_cache: Kc,
    inode_cache: Kc,
    filp_cache: Kc,
    names_cache: Kc,
    /// Profile build: page-cache index nodes.
    xa_cache: Option<Kc>,
    build: bool,
    /// Files (not directories) walk has created.
    created_files: u64,
    inode_size: usize,
    nbuckets: usize,
    buckets: *mut *mut Dentry,
    inodes: *mut *mut Inode,
    max_inodes: usize,
    /// Slots of the inode table used so far (free ones are reused first).
    ninodes: usize,
    /// First free slot + 1 (0: none).
    free_slot: usize,
    live_inodes: usize,
    root: *mut Dentry,
    pub ndentries: usize,
    pub lookups: u64,
    pub dcache_hits: u64,
    pub external_names: usize,
    lru_head: *mut Dentry,
    lru_tail: *mut Dentry,
    nlru: usize,
    /// Object files' size and content on "disk" (profile build), per unit:
    /// page-granular memory, the disk's, not the kernel's.
    disk: *mut u64,
    disk_order: usize,
    /// Shrinker: scan work carried over (numerator over page-cache pages).
    carry: u64,
    pub shrink: ShrinkStats,
}

/// What the shrinker did.
#[derive(Clone, Copy, Default)]
pub struct ShrinkStats {
    /// Calls that scanned something.
    pub calls: u64,
    pub scanned: u64,
    pub dentries: u64,
    pub inodes: u64,
    /// Second chances (referenced) and skips (open or with cached pages).
    pub referenced: u64,
    pub busy: u64,
    /// Files looked up again after the shrinker freed them (read from disk).
    pub refaults: u64,
}

static V: FsCell<Option<Vfs>> = FsCell::new(None);

fn v() -> &'static mut Vfs {
    vfs_slot().as_mut().expect("vfs not initialised")
}

fn vfs_slot() -> &'static mut Option<Vfs> {
    // SAFETY: every public function takes the fs lock before it gets here,
    // and no vfs use comes from interrupt context; callers do not keep the
    // reference across a call that takes it again (they call `v()` anew
    // after an allocation, which may run the shrinker).
    unsafe { V.get() }
}

/// `max_inodes`: live inodes at most; `build`: profile build with a tree
/// of `files` files and `units` object files.
pub fn init(max_inodes: usize, build: bool, files: usize, units: usize) {
    let _g = fslock::lock();
    let (inode_size, nbuckets) = if build { (INODE_SIZE_BUILD, (files / 2).next_power_of_two().max(HASH_BUCKETS)) } else { (INODE_SIZE, HASH_BUCKETS) };
    let (disk, disk_order) = if build {
        let order = (units * 16).div_ceil(PAGE_SIZE).next_power_of_two().trailing_zeros() as usize;
        let Some(p) = buddy::alloc_pages(order) else { super::fail("vfs: no memory for the disk table") };
        // SAFETY: a fresh block of 1 << order pages, ours until teardown.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE_SIZE << order) };
        (p as *mut u64, order)
    } else {
        (core::ptr::null_mut(), 0)
    };
    let vs = Vfs {
        dentry_cache: mem::create_cache("dentry", DENTRY_SIZE, mem::G_VFS),
        inode_cache: mem::create_cache(if build { "ext4_inode_cache" } else { "inode_cache" }, inode_size, mem::G_VFS),
        filp_cache: mem::create_cache("filp", FILP_SIZE, mem::G_VFS),
        names_cache: mem::create_cache("names_cache", PATH_MAX, mem::G_VFS),
        xa_cache: if build { Some(mem::create_cache("radix_tree_node", XA_NODE_SIZE, mem::G_PAGECACHE)) } else { None },
        build,
        created_files: 0,
        inode_size,
        nbuckets,
        buckets: mem::vmalloc(nbuckets * 8) as *mut *mut Dentry,
        inodes: mem::vmalloc(max_inodes * 8) as *mut *mut Inode,
        max_inodes,
        ninodes: 0,
        free_slot: 0,
        live_inodes: 0,
        root: core::ptr::null_mut(),
        ndentries: 0,
        lookups: 0,
        dcache_hits: 0,
        external_names: 0,
        lru_head: core::ptr::null_mut(),
        lru_tail: core::ptr::null_mut(),
        nlru: 0,
        disk,
        disk_order,
        carry: 0,
        shrink: ShrinkStats::default(),
    };
    // SAFETY: the workload's vmalloc returns the asked size or stops the
    // guest: nbuckets and max_inodes pointers (null is all-zero).
    unsafe {
        core::ptr::write_bytes(vs.buckets, 0, nbuckets);
        core::ptr::write_bytes(vs.inodes, 0, max_inodes);
    }
    *vfs_slot() = Some(vs);
    let root = new_dentry(core::ptr::null_mut(), b"/", 0);
    let ri = new_inode(KIND_DIR, 0, 0);
    // SAFETY: new_dentry returned a live dentry.
    unsafe { (*root).inode = ri };
    v().root = root;
}

/// Inode number `ino` (fs lock held: the page cache's writeback and evict).
pub fn inode(ino: u32) -> &'static mut Inode {
    if ino as usize >= v().ninodes {
        super::broken("vfs: no inode", ino as usize);
    }
    // SAFETY: ino < ninodes indexes the inode table.
    let p = unsafe { *v().inodes.add(ino as usize) };
    if p as usize & SLOT_FREE != 0 {
        super::broken("vfs: freed inode", ino as usize);
    }
    // SAFETY: a used slot holds an inode new_inode made, alive until the
    // shrinker or teardown frees it (which frees the slot); the caller
    // holds the fs lock: one user of an inode at a time.
    unsafe { &mut *p }
}

pub fn stats() -> (usize, u64, u64, usize, usize) {
    let _g = fslock::lock();
    let vs = v();
    (vs.ndentries, vs.lookups, vs.dcache_hits, vs.external_names, vs.ninodes)
}

pub fn shrink_stats() -> ShrinkStats {
    let _g = fslock::lock();
    v().shrink
}

/// Live inodes and dentries now.
pub fn live() -> (usize, usize) {
    let _g = fslock::lock();
    (v().live_inodes, v().ndentries)
}

/// Bytes of an inode's page index root (flat array or node pointers).
fn root_bytes(npages: u32, xa: bool) -> usize {
    if xa {
        (npages as usize).div_ceil(XA_SLOTS) * 8
    } else {
        npages as usize * 8
    }
}

/// Record an object file's size and content on "disk" (profile build).
pub fn disk_write(unit: u32, npages: u32, content: u64) {
    let _g = fslock::lock();
    let vs = v();
    if vs.disk.is_null() {
        return;
    }
    // SAFETY: the disk table holds 2 words per unit (init sized it for `units`; unit < units).
    unsafe {
        vs.disk.add(unit as usize * 2).write(npages as u64 | 1 << 32);
        vs.disk.add(unit as usize * 2 + 1).write(content);
    }
}

/// An object file as on "disk": `walk`'s `create` argument (None when not
/// written, or in profile light, which never forgets a dentry).
pub fn disk_read(unit: u32) -> Option<(u32, u32, u64)> {
    let _g = fslock::lock();
    let vs = v();
    if vs.disk.is_null() {
        return None;
    }
    // SAFETY: as in disk_write.
    let (a, c) = unsafe { (vs.disk.add(unit as usize * 2).read(), vs.disk.add(unit as usize * 2 + 1).read()) };
    (a >> 32 != 0).then_some((KIND_OUTPUT, a as u32, c))
}

fn name_hash(parent: *mut Dentry, name: &[u8]) -> u32 {
    let mut h = mix(parent as u64);
    for &b in name {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    (mix(h) & 0xffff_ffff) as u32
}

fn new_inode(kind: u32, npages: u32, content: u64) -> *mut Inode {
    let vs = v();
    if vs.free_slot == 0 && vs.ninodes == vs.max_inodes {
        super::fail("vfs: inode table full");
    }
    let p = mem::cache_alloc(vs.inode_cache) as *mut Inode;
    // SAFETY: cache_alloc returns an inode_size object (or stops the guest).
    unsafe { core::ptr::write_bytes(p as *mut u8, 0, vs.inode_size) };
    let xa = vs.build && npages > 1;
    let pages = if npages > 0 { mem::kzalloc(root_bytes(npages, xa)) as *mut usize } else { core::ptr::null_mut() };
    // The allocations above may have run the shrinker: take the slot now.
    let vs = v();
    let ino = if vs.free_slot != 0 {
        let i = vs.free_slot - 1;
        // SAFETY: i < ninodes: a free slot of the inode table holding the next free one.
        vs.free_slot = unsafe { *vs.inodes.add(i) } as usize >> 1;
        i
    } else {
        vs.ninodes += 1;
        vs.ninodes - 1
    };
    // SAFETY: `p` is that object (inode_size >= size_of::<Inode>()), and
    // ino < max_inodes indexes the inode table.
    unsafe {
        p.write(Inode { ino: ino as u32, kind, npages, cached: 0, pages, content, written: 0, opens: 0, refs: 0, xa: xa as u32 });
        *vs.inodes.add(ino) = p;
    }
    vs.live_inodes += 1;
    p
}

/// Free an inode that has no cached page (its slot becomes free).
fn free_inode(p: *mut Inode) {
    let vs = v();
    // SAFETY: a live inode (the caller's), freed just below.
    let ino = unsafe { &mut *p };
    if !ino.pages.is_null() {
        mem::kfree(ino.pages as *mut u8, root_bytes(ino.npages, ino.xa != 0));
    }
    let i = ino.ino as usize;
    // SAFETY: i < ninodes: the inode's own slot.
    unsafe { *vs.inodes.add(i) = ((vs.free_slot << 1) | SLOT_FREE) as *mut Inode };
    vs.free_slot = i + 1;
    vs.live_inodes -= 1;
    mem::cache_free(vs.inode_cache, p as *mut u8);
}

fn lru_unlink(d: *mut Dentry) {
    let vs = v();
    // SAFETY: `d` is a live dentry on the LRU, whose links are live LRU dentries or null.
    unsafe {
        let dn = &mut *d;
        if dn.lru_prev.is_null() {
            vs.lru_head = dn.lru_next;
        } else {
            (*dn.lru_prev).lru_next = dn.lru_next;
        }
        if dn.lru_next.is_null() {
            vs.lru_tail = dn.lru_prev;
        } else {
            (*dn.lru_next).lru_prev = dn.lru_prev;
        }
        dn.lru_prev = core::ptr::null_mut();
        dn.lru_next = core::ptr::null_mut();
    }
}

fn lru_push(d: *mut Dentry) {
    let vs = v();
    // SAFETY: `d` is a live dentry not on the LRU; the head is a live LRU dentry or null.
    unsafe {
        (*d).lru_prev = core::ptr::null_mut();
        (*d).lru_next = vs.lru_head;
        if vs.lru_head.is_null() {
            vs.lru_tail = d;
        } else {
            (*vs.lru_head).lru_prev = d;
        }
    }
    vs.lru_head = d;
}

/// Take a dentry out of its hash chain.
fn unhash(d: *mut Dentry) {
    let vs = v();
    // SAFETY: `d` is a live hashed dentry (not the root); the bucket index
    // is < nbuckets and the chain holds only live dentries.
    unsafe {
        let mut pp = vs.buckets.add((*d).hash as usize % vs.nbuckets);
        while *pp != d {
            if (*pp).is_null() {
                super::broken("vfs: dentry not in its hash chain", d as usize);
            }
            pp = core::ptr::addr_of_mut!((**pp).hash_next);
        }
        *pp = (*d).hash_next;
    }
}

/// Free a dentry (and its external name).
fn free_dentry(d: *mut Dentry) {
    let vs = v();
    // SAFETY: a live dentry (the caller's), freed just below.
    let dn = unsafe { &*d };
    if dn.name_len as usize >= DNAME_INLINE_LEN {
        mem::kfree(dn.name, dn.name_len as usize + 1);
    }
    mem::cache_free(vs.dentry_cache, d as *mut u8);
    vs.ndentries -= 1;
}

/// Scan up to `n` dentries from the LRU's cold end: referenced ones get a
/// second chance, busy ones (open, or with cached pages) go back to the
/// head, the others are freed with their inode. Returns objects freed.
pub fn shrink(n: usize) -> usize {
    let _g = fslock::lock();
    let vs = v();
    if !vs.build || n == 0 || vs.nlru == 0 {
        return 0;
    }
    vs.shrink.calls += 1;
    let mut freed = 0;
    for _ in 0..n.min(vs.nlru) {
        let d = v().lru_tail;
        if d.is_null() {
            break;
        }
        v().shrink.scanned += 1;
        // SAFETY: the LRU holds live file dentries, each with a live inode.
        let (ino, flags) = unsafe { ((*d).inode, (*d).flags) };
        // SAFETY: as above.
        let busy = unsafe { (*ino).refs != 0 || (*ino).cached != 0 };
        if busy || flags & D_REFERENCED != 0 {
            if busy {
                v().shrink.busy += 1;
            } else {
                v().shrink.referenced += 1;
            }
            lru_unlink(d);
            // SAFETY: live dentry (above).
            unsafe { (*d).flags &= !D_REFERENCED };
            lru_push(d);
            continue;
        }
        lru_unlink(d);
        v().nlru -= 1;
        unhash(d);
        free_dentry(d);
        free_inode(ino);
        let st = &mut v().shrink;
        st.dentries += 1;
        st.inodes += 1;
        freed += 2;
    }
    freed
}

/// Page reclaim took `reclaimed` of `lru_pages` page-cache pages: scan
/// twice that fraction of the dentry LRU (`do_shrink_slab`'s
/// `4 / DEFAULT_SEEKS`), carrying the remainder to the next call.
pub fn shrink_for(reclaimed: usize, lru_pages: usize) -> usize {
    let _g = fslock::lock();
    let vs = v();
    if !vs.build || reclaimed == 0 || lru_pages == 0 {
        return 0;
    }
    let total = vs.carry + 2 * reclaimed as u64 * vs.nlru as u64;
    let n = total / lru_pages as u64;
    vs.carry = total % lru_pages as u64;
    shrink(n as usize)
}

fn new_dentry(parent: *mut Dentry, name: &[u8], hash: u32) -> *mut Dentry {
    let d = mem::cache_alloc(v().dentry_cache) as *mut Dentry;
    let ext = if name.len() < DNAME_INLINE_LEN { core::ptr::null_mut() } else { mem::kmalloc(name.len() + 1) };
    // The allocations above may have run the shrinker (it never frees
    // directories, so `parent` is still live).
    let vs = v();
    // SAFETY: `d` is a fresh DENTRY_SIZE object (cache_alloc stops the guest
    // rather than fail), all-zero is a valid Dentry; the external name is a
    // fresh kmalloc of len + 1; the bucket index is < nbuckets.
    unsafe {
        core::ptr::write_bytes(d as *mut u8, 0, DENTRY_SIZE);
        let dn = &mut *d;
        dn.parent = parent;
        dn.name_len = name.len() as u32;
        dn.hash = hash;
        if name.len() < DNAME_INLINE_LEN {
            dn.inline_name[..name.len()].copy_from_slice(name);
            dn.name = dn.inline_name.as_mut_ptr();
        } else {
            core::ptr::copy_nonoverlapping(name.as_ptr(), ext, name.len());
            *ext.add(name.len()) = 0;
            dn.name = ext;
            vs.external_names += 1;
        }
        if !parent.is_null() {
            let b = vs.buckets.add(hash as usize % vs.nbuckets);
            dn.hash_next = *b;
            *b = d;
        }
    }
    vs.ndentries += 1;
    d
}

fn d_lookup(parent: *mut Dentry, name: &[u8], hash: u32) -> *mut Dentry {
    let vs = v();
    // SAFETY: the index is < nbuckets, in the zeroed bucket array.
    let mut d = unsafe { *vs.buckets.add(hash as usize % vs.nbuckets) };
    while !d.is_null() {
        // SAFETY: dentries live in the dentry cache from new_dentry until teardown, and the hash chains hold only those.
        let dn = unsafe { &*d };
        if dn.hash == hash && dn.parent == parent && dn.name_len as usize == name.len() {
            // SAFETY: a dentry's `name` holds name_len bytes (inline or kmalloc'd).
            let s = unsafe { core::slice::from_raw_parts(dn.name, name.len()) };
            if s == name {
                return d;
            }
        }
        d = dn.hash_next;
    }
    core::ptr::null_mut()
}

/// Walk `path` (absolute, '/'-separated), creating missing directories and,
/// if `create` is given, the final file. Returns its inode (None if absent).
pub fn walk(path: &[u8], create: Option<(u32, u32, u64)>) -> Option<*mut Inode> {
    let _g = fslock::lock();
    let vs = v();
    vs.lookups += 1;
    let mut cur = vs.root;
    // Directories are never freed (only file dentries are on the LRU), so
    // `cur` stays live across the allocations below.
    let comps = path.split(|&b| b == b'/').filter(|c| !c.is_empty());
    let ncomp = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).count();
    for (i, comp) in comps.enumerate() {
        let last = i + 1 == ncomp;
        let h = name_hash(cur, comp);
        let d = d_lookup(cur, comp, h);
        if !d.is_null() {
            v().dcache_hits += 1;
            // SAFETY: d_lookup returned a live dentry.
            unsafe { (*d).flags |= D_REFERENCED };
            cur = d;
            continue;
        }
        let ino = if !last {
            new_inode(KIND_DIR, 0, 0)
        } else {
            match create {
                Some((kind, npages, content)) => new_inode(kind, npages, content),
                None => return None,
            }
        };
        if last {
            v().created_files += 1;
        }
        let d = new_dentry(cur, comp, h);
        // SAFETY: new_dentry returned a live dentry, `ino` a live inode.
        unsafe {
            (*d).inode = ino;
            if v().build && (*ino).kind != KIND_DIR {
                (*d).flags = D_LRU;
                lru_push(d);
                v().nlru += 1;
            }
        }
        cur = d;
    }
    // SAFETY: `cur` is the root or a dentry found or made above: live.
    Some(unsafe { (*cur).inode })
}

/// getname(): a names_cache buffer holding the path of file `id` of `kind`.
/// Returns (buffer, length); release with `putname`.
pub fn getname(seed: u64, kind: u32, id: u32) -> (*mut u8, usize) {
    let names = {
        let _g = fslock::lock();
        v().names_cache
    };
    let buf = mem::cache_alloc(names);
    let len = make_path(seed, kind, id, buf);
    (buf, len)
}

pub fn putname(buf: *mut u8) {
    let names = {
        let _g = fslock::lock();
        v().names_cache
    };
    mem::cache_free(names, buf);
}

const SYL: [&[u8]; 24] = [
    b"ac", b"pi", b"dev", b"net", b"fs", b"mm", b"irq", b"blk", b"usb", b"pci", b"io", b"sched", b"core", b"drv",
    b"hw", b"tty", b"cpu", b"mem", b"buf", b"ctl", b"x86", b"ext", b"sock", b"cache",
];

fn put(buf: *mut u8, len: &mut usize, s: &[u8]) {
    assert!(*len + s.len() <= PATH_MAX, "vfs: path longer than PATH_MAX");
    // SAFETY: `buf` is a names_cache object of PATH_MAX bytes (getname) and
    // the copy ends within it (asserted); `s` is another object.
    unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), buf.add(*len), s.len()) };
    *len += s.len();
}

fn word(rng: &mut Rng, buf: *mut u8, len: &mut usize, long: bool) {
    let n = if long { rng.range(12, 20) } else { rng.range(1, 4) };
    for i in 0..n {
        if i > 0 && rng.below(3) == 0 {
            put(buf, len, b"_");
        }
        put(buf, len, SYL[rng.below(SYL.len() as u64) as usize]);
    }
}

/// Deterministic path of a file: sources `/src/<dir>/<sub>/<name>.c`,
/// headers `/src/include/<dir>/<name>.h`, outputs `/obj/<dir>/<sub>/<name>.o`
/// (same directories and name as the unit's source). About 1 name in 12
/// is longer than the inline dentry name (external name from kmalloc).
pub fn make_path(seed: u64, kind: u32, id: u32, buf: *mut u8) -> usize {
    let mut len = 0;
    let hk = if kind == KIND_HEADER { 2 } else { 1 };
    let mut rng = Rng::new(hash3(seed, hk, id as u64));
    match kind {
        KIND_HEADER => {
            put(buf, &mut len, b"/src/include/");
            let mut dr = Rng::new(hash3(seed, 7, id as u64 % 24));
            word(&mut dr, buf, &mut len, false);
        }
        KIND_TREE => {
            // About 24 x 160 directories, as a kernel tree has thousands.
            put(buf, &mut len, b"/linux/");
            let mut dr = Rng::new(hash3(seed, 8, id as u64 % 24));
            word(&mut dr, buf, &mut len, false);
            put(buf, &mut len, b"/");
            let mut sr = Rng::new(hash3(seed, 9, (id as u64 / 24) % 160));
            word(&mut sr, buf, &mut len, false);
        }
        _ => {
            put(buf, &mut len, if kind == KIND_OUTPUT { b"/obj/" } else { b"/src/" });
            let mut dr = Rng::new(hash3(seed, 5, id as u64 % 16));
            word(&mut dr, buf, &mut len, false);
            put(buf, &mut len, b"/");
            let mut sr = Rng::new(hash3(seed, 6, id as u64 % 64));
            word(&mut sr, buf, &mut len, false);
        }
    }
    put(buf, &mut len, b"/");
    let long = rng.below(12) == 0;
    word(&mut rng, buf, &mut len, long);
    // Unique per id.
    let mut num = [0u8; 12];
    let mut n = id;
    let mut k = num.len();
    loop {
        k -= 1;
        num[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(buf, &mut len, b"_");
    put(buf, &mut len, &num[k..]);
    put(buf, &mut len, match kind {
        KIND_HEADER => b".h",
        KIND_OUTPUT => b".o",
        KIND_TREE if id.is_multiple_of(3) => b".h",
        _ => b".c",
    });
    len
}

/// open(): path walk + a `filp` object. `create` as in `walk`.
pub fn open(seed: u64, kind: u32, id: u32, create: Option<(u32, u32, u64)>) -> Option<*mut File> {
    let (buf, len) = getname(seed, kind, id);
    // SAFETY: getname wrote `len` bytes into `buf`, released only below.
    let path = unsafe { core::slice::from_raw_parts(buf, len) };
    let (ino, filp) = {
        // The walk and the hold under one lock: the shrinker (another CPU's
        // reclaim, or this one's allocations) cannot free the inode between.
        let _g = fslock::lock();
        let ino = walk(path, create);
        if let Some(ino) = ino {
            // Held before the next allocation (which may run the shrinker).
            // SAFETY: a live inode from walk, fs lock held.
            unsafe {
                (*ino).refs += 1;
                (*ino).opens += 1;
            }
        }
        (ino, v().filp_cache)
    };
    putname(buf);
    let ino = ino?;
    let f = mem::cache_alloc(filp) as *mut File;
    // SAFETY: `f` is a fresh FILP_SIZE object (>= size_of::<File>()), `ino`
    // a live inode from walk (held).
    unsafe {
        core::ptr::write_bytes(f as *mut u8, 0, FILP_SIZE);
        f.write(File { inode: ino, pos: 0, flags: kind });
    }
    Some(f)
}

/// close(): drop the file's hold on its inode and free it.
///
/// # Safety
/// `f` is a file `open` returned, not closed yet.
pub unsafe fn close(f: *mut File) {
    let filp = {
        let _g = fslock::lock();
        // SAFETY: `f` is an open file (the caller's contract), its inode
        // held by it; fs lock held.
        unsafe { (*(*f).inode).refs -= 1 };
        v().filp_cache
    };
    mem::cache_free(filp, f as *mut u8);
}

/// stat(): look a file up (creating it from "disk" when not cached);
/// profile build's make and compilers do this for the tree's files.
/// Returns whether the file had to be created (read from disk).
pub fn stat(seed: u64, kind: u32, id: u32, create: (u32, u32, u64)) -> bool {
    let (buf, len) = getname(seed, kind, id);
    // SAFETY: getname wrote `len` bytes into `buf`, released only below.
    let path = unsafe { core::slice::from_raw_parts(buf, len) };
    let created = {
        let _g = fslock::lock();
        let before = v().created_files;
        walk(path, Some(create));
        v().created_files != before
    };
    putname(buf);
    created
}

/// A tree file looked up again after the shrinker freed it.
pub fn note_refault() {
    let _g = fslock::lock();
    v().shrink.refaults += 1;
}

/// Free the whole tree (page cache pages of every inode first).
pub fn teardown() {
    let g = fslock::lock();
    let vs = v();
    for i in 0..vs.ninodes {
        // SAFETY: i < ninodes: a slot new_inode filled: a live inode (freed
        // only just below, once per slot) or a free slot.
        let p = unsafe { *vs.inodes.add(i) };
        if p as usize & SLOT_FREE != 0 {
            continue;
        }
        // SAFETY: as above; nothing else uses the vfs during teardown.
        let ino = unsafe { &mut *p };
        if !ino.pages.is_null() {
            pagecache::drop_inode(ino);
            mem::kfree(ino.pages as *mut u8, root_bytes(ino.npages, ino.xa != 0));
        }
        mem::cache_free(vs.inode_cache, p as *mut u8);
        vs.live_inodes -= 1;
    }
    for b in 0..vs.nbuckets {
        // SAFETY: b < nbuckets.
        let mut d = unsafe { *vs.buckets.add(b) };
        while !d.is_null() {
            // SAFETY: dentries live in the dentry cache from new_dentry until teardown, and the hash chains hold only those (each is freed after its `next` is read).
            let dn = unsafe { &*d };
            let next = dn.hash_next;
            free_dentry(d);
            d = next;
        }
    }
    free_dentry(vs.root);
    let vs = v();
    mem::vfree(vs.buckets as *mut u8, vs.nbuckets * 8);
    mem::vfree(vs.inodes as *mut u8, vs.max_inodes * 8);
    if !vs.disk.is_null() {
        buddy::free_pages(vs.disk as usize, vs.disk_order);
    }
    let caches = [Some(vs.dentry_cache), Some(vs.inode_cache), Some(vs.filp_cache), Some(vs.names_cache), vs.xa_cache];
    // The last use of the vfs: nothing holds a reference from v().
    *vfs_slot() = None;
    drop(g);
    crate::mm::slab::drain_all();
    for c in caches.into_iter().flatten() {
        if !mem::destroy_cache(c) {
            super::fail("vfs: a named cache still has objects (leak)");
        }
    }
}
