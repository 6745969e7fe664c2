//! A tiny VFS: dentries (with inline or kmalloc'd external names) in a hash
//! table, inodes, open files, path walk through `names_cache` buffers; all
//! objects come from named slab caches, like the kernel's.
use super::mem;
use super::pagecache;
use super::rng::{hash3, mix, Rng};
use crate::mm::CacheRef;

pub const KIND_DIR: u32 = 0;
pub const KIND_SOURCE: u32 = 1;
pub const KIND_HEADER: u32 = 2;
pub const KIND_OUTPUT: u32 = 3;

const DENTRY_SIZE: usize = 192;
const INODE_SIZE: usize = 600;
const FILP_SIZE: usize = 256;
const PATH_MAX: usize = 4096;
const DNAME_INLINE_LEN: usize = 40;
const HASH_BUCKETS: usize = 4096;

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
}

#[repr(C)]
pub struct File {
    pub inode: *mut Inode,
    pub pos: u64,
    pub flags: u32,
}

struct Vfs {
    dentry_cache: CacheRef,
    inode_cache: CacheRef,
    filp_cache: CacheRef,
    names_cache: CacheRef,
    buckets: *mut *mut Dentry,
    inodes: *mut *mut Inode,
    max_inodes: usize,
    ninodes: usize,
    root: *mut Dentry,
    pub ndentries: usize,
    pub lookups: u64,
    pub dcache_hits: u64,
    pub external_names: usize,
}

static mut V: Option<Vfs> = None;

fn v() -> &'static mut Vfs {
    // SAFETY: one CPU, cooperative tasks, no vfs use from interrupt
    // context: one caller at a time, none holding it across another call.
    unsafe { (*core::ptr::addr_of_mut!(V)).as_mut().expect("vfs not initialised") }
}

pub fn init(max_inodes: usize) {
    let vs = Vfs {
        dentry_cache: mem::create_cache("dentry", DENTRY_SIZE),
        inode_cache: mem::create_cache("inode_cache", INODE_SIZE),
        filp_cache: mem::create_cache("filp", FILP_SIZE),
        names_cache: mem::create_cache("names_cache", PATH_MAX),
        buckets: mem::vmalloc(HASH_BUCKETS * 8) as *mut *mut Dentry,
        inodes: mem::vmalloc(max_inodes * 8) as *mut *mut Inode,
        max_inodes,
        ninodes: 0,
        root: core::ptr::null_mut(),
        ndentries: 0,
        lookups: 0,
        dcache_hits: 0,
        external_names: 0,
    };
    // SAFETY: the workload's vmalloc returns the asked size or stops the
    // guest: HASH_BUCKETS and max_inodes pointers (null is all-zero);
    // V is set once here, before any v().
    unsafe {
        core::ptr::write_bytes(vs.buckets, 0, HASH_BUCKETS);
        core::ptr::write_bytes(vs.inodes, 0, max_inodes);
        V = Some(vs);
    }
    let root = new_dentry(core::ptr::null_mut(), b"/", 0);
    let ri = new_inode(KIND_DIR, 0, 0);
    // SAFETY: new_dentry returned a live dentry.
    unsafe { (*root).inode = ri };
    v().root = root;
}

pub fn inode(ino: u32) -> &'static mut Inode {
    if ino as usize >= v().ninodes {
        super::broken("vfs: no inode", ino as usize);
    }
    // SAFETY: slots below ninodes hold inodes new_inode made, alive until
    // teardown; one CPU, cooperative tasks: one user of an inode at a time.
    unsafe { &mut **v().inodes.add(ino as usize) }
}

pub fn stats() -> (usize, u64, u64, usize, usize) {
    let vs = v();
    (vs.ndentries, vs.lookups, vs.dcache_hits, vs.external_names, vs.ninodes)
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
    if vs.ninodes == vs.max_inodes {
        super::fail("vfs: inode table full");
    }
    let p = mem::cache_alloc(vs.inode_cache) as *mut Inode;
    // SAFETY: cache_alloc returns an INODE_SIZE object (or stops the guest).
    unsafe { core::ptr::write_bytes(p as *mut u8, 0, INODE_SIZE) };
    let pages = if npages > 0 { mem::kzalloc(npages as usize * 8) as *mut usize } else { core::ptr::null_mut() };
    let ino = vs.ninodes as u32;
    // SAFETY: `p` is that object (INODE_SIZE >= size_of::<Inode>()), and
    // ninodes < max_inodes (checked above) indexes the inode table.
    unsafe {
        p.write(Inode { ino, kind, npages, cached: 0, pages, content, written: 0, opens: 0 });
        *vs.inodes.add(ino as usize) = p;
    }
    vs.ninodes += 1;
    p
}

fn new_dentry(parent: *mut Dentry, name: &[u8], hash: u32) -> *mut Dentry {
    let vs = v();
    let d = mem::cache_alloc(vs.dentry_cache) as *mut Dentry;
    // SAFETY: `d` is a fresh DENTRY_SIZE object (cache_alloc stops the guest
    // rather than fail), all-zero is a valid Dentry; the external name is a
    // fresh kmalloc of len + 1; the bucket index is < HASH_BUCKETS.
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
            let ext = mem::kmalloc(name.len() + 1);
            core::ptr::copy_nonoverlapping(name.as_ptr(), ext, name.len());
            *ext.add(name.len()) = 0;
            dn.name = ext;
            vs.external_names += 1;
        }
        if !parent.is_null() {
            let b = vs.buckets.add(hash as usize % HASH_BUCKETS);
            dn.hash_next = *b;
            *b = d;
        }
    }
    vs.ndentries += 1;
    d
}

fn d_lookup(parent: *mut Dentry, name: &[u8], hash: u32) -> *mut Dentry {
    let vs = v();
    // SAFETY: the index is < HASH_BUCKETS, in the zeroed bucket array.
    let mut d = unsafe { *vs.buckets.add(hash as usize % HASH_BUCKETS) };
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
    let vs = v();
    vs.lookups += 1;
    let mut cur = vs.root;
    let comps = path.split(|&b| b == b'/').filter(|c| !c.is_empty());
    let ncomp = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).count();
    for (i, comp) in comps.enumerate() {
        let last = i + 1 == ncomp;
        let h = name_hash(cur, comp);
        let d = d_lookup(cur, comp, h);
        if !d.is_null() {
            vs.dcache_hits += 1;
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
        let d = new_dentry(cur, comp, h);
        // SAFETY: new_dentry returned a live dentry.
        unsafe { (*d).inode = ino };
        cur = d;
    }
    // SAFETY: `cur` is the root or a dentry found or made above: live.
    Some(unsafe { (*cur).inode })
}

/// getname(): a names_cache buffer holding the path of file `id` of `kind`.
/// Returns (buffer, length); release with `putname`.
pub fn getname(seed: u64, kind: u32, id: u32) -> (*mut u8, usize) {
    let buf = mem::cache_alloc(v().names_cache);
    let len = make_path(seed, kind, id, buf);
    (buf, len)
}

pub fn putname(buf: *mut u8) {
    mem::cache_free(v().names_cache, buf);
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
        _ => b".c",
    });
    len
}

/// open(): path walk + a `filp` object. `create` as in `walk`.
pub fn open(seed: u64, kind: u32, id: u32, create: Option<(u32, u32, u64)>) -> Option<*mut File> {
    let (buf, len) = getname(seed, kind, id);
    // SAFETY: getname wrote `len` bytes into `buf`, released only below.
    let path = unsafe { core::slice::from_raw_parts(buf, len) };
    let ino = walk(path, create);
    putname(buf);
    let ino = ino?;
    let f = mem::cache_alloc(v().filp_cache) as *mut File;
    // SAFETY: `f` is a fresh FILP_SIZE object (>= size_of::<File>()), `ino`
    // a live inode from walk.
    unsafe {
        core::ptr::write_bytes(f as *mut u8, 0, FILP_SIZE);
        f.write(File { inode: ino, pos: 0, flags: kind });
        (*ino).opens += 1;
    }
    Some(f)
}

pub fn close(f: *mut File) {
    mem::cache_free(v().filp_cache, f as *mut u8);
}

/// Free the whole tree (page cache pages of every inode first).
pub fn teardown() {
    let vs = v();
    for i in 0..vs.ninodes {
        // SAFETY: i < ninodes: a slot new_inode filled, its inode still live
        // (freed only just below, once per slot).
        let p = unsafe { *vs.inodes.add(i) };
        // SAFETY: as above; nothing else uses the vfs during teardown.
        let ino = unsafe { &mut *p };
        if !ino.pages.is_null() {
            pagecache::drop_inode(ino);
            mem::kfree(ino.pages as *mut u8);
        }
        mem::cache_free(vs.inode_cache, p as *mut u8);
    }
    for b in 0..HASH_BUCKETS {
        // SAFETY: b < HASH_BUCKETS.
        let mut d = unsafe { *vs.buckets.add(b) };
        while !d.is_null() {
            // SAFETY: dentries live in the dentry cache from new_dentry until teardown, and the hash chains hold only those (each is freed after its `next` is read).
            let dn = unsafe { &*d };
            let next = dn.hash_next;
            if dn.name_len as usize >= DNAME_INLINE_LEN {
                mem::kfree(dn.name);
            }
            mem::cache_free(vs.dentry_cache, d as *mut u8);
            vs.ndentries -= 1;
            d = next;
        }
    }
    mem::cache_free(vs.dentry_cache, vs.root as *mut u8);
    vs.ndentries -= 1;
    mem::vfree(vs.buckets as *mut u8, HASH_BUCKETS * 8);
    mem::vfree(vs.inodes as *mut u8, vs.max_inodes * 8);
    let caches = [vs.dentry_cache, vs.inode_cache, vs.filp_cache, vs.names_cache];
    // SAFETY: the last use of the vfs: nothing holds a reference from v().
    unsafe { V = None };
    crate::mm::slab::drain_all();
    for c in caches {
        if crate::mm::kmem_cache_destroy(c).is_err() {
            super::fail("vfs: a named cache still has objects (leak)");
        }
    }
}
