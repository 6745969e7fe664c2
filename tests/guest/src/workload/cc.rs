//! One compilation unit (a `cc1` job) and the final link.
//!
//! A unit opens its source and 8..24 headers (path walk, dentries, inodes,
//! files), reads them page by page through the page cache (the source twice:
//! preprocess, then compile), turns every page into a list of small token
//! objects, parses the tokens into an AST of skewed-size objects (a named
//! cache for the common node, kmalloc for the rest, identifiers interned in
//! a symbol table that grows with krealloc), walks the AST (iteratively and,
//! near the roots, recursively with locals on the kernel stack), writes its
//! object file into dirty page-cache pages and frees everything. Its
//! "compiler heap" is whole pages (anonymous-memory-like) touched as it goes.
use super::mem;
use super::pagecache::{self, disk_word};
use super::rng::{hash3, mix, Rng};
use super::mem::Kc;
use super::vfs::{self, File, KIND_HEADER, KIND_OUTPUT, KIND_SOURCE, KIND_TREE};
use super::{params, setup, shared};
use core::sync::atomic::Ordering::Relaxed;
use crate::mm::PAGE_SIZE;
use crate::task;

const SRC_TOKEN_STRIDE: usize = 4; // one token per 4 words of source
const HDR_TOKEN_STRIDE: usize = 16; // one per 16 words of header
const NODE_CACHE_SIZE: usize = 64;
const MAX_CHILDREN: usize = 4;
const KIND_NODE_CACHE: u32 = 1;
const KIND_NODE_KMALLOC: u32 = 2;

/// Shape of unit `u`: (source pages, number of headers, anon pages).
pub fn unit_shape(seed: u64, u: u32) -> (u32, u32, usize) {
    let mut r = Rng::new(hash3(seed, 0x5c, u as u64));
    let src_pages = 2 + r.skewed(23) as u32;
    let nhdr = r.range(8, 24) as u32;
    let anon = params().anon_base + params().anon_per_page * src_pages as usize;
    (src_pages, nhdr, anon)
}

pub fn header_pages(seed: u64, h: u32) -> u32 {
    1 + Rng::new(hash3(seed, 0x4d, h as u64)).skewed(12) as u32
}

/// Tree files a unit looks up (profile build).
const TREE_LOOKUPS: usize = 48;

/// File `id` of the tree as on disk: `walk`'s `create` (stat only, no pages).
pub fn tree_file(seed: u64, id: u32) -> (u32, u32, u64) {
    (KIND_TREE, 0, hash3(seed, 3, id as u64))
}

pub fn source_content(seed: u64, u: u32) -> u64 {
    hash3(seed, 1, u as u64)
}

pub fn header_content(seed: u64, h: u32) -> u64 {
    hash3(seed, 2, h as u64)
}

#[repr(C)]
struct Token {
    next: *mut Token,
    val: u64,
    kind: u32,
    line: u32,
}

#[repr(C)]
struct Symbol {
    next: *mut Symbol,
    key: u64,
    refs: u32,
    len: u32,
    // name bytes follow
}

struct SymTab {
    buckets: *mut *mut Symbol,
    nbuckets: usize,
    n: usize,
}

impl SymTab {
    fn new() -> Self {
        let nb = 64;
        let b = mem::kzalloc(nb * 8) as *mut *mut Symbol;
        SymTab { buckets: b, nbuckets: nb, n: 0 }
    }
    fn intern(&mut self, key: u64) -> *mut Symbol {
        let h = mix(key) as usize;
        // SAFETY: `buckets` holds `nbuckets` pointers (kzalloc'd, rehashed by grow).
        let mut s = unsafe { *self.buckets.add(h % self.nbuckets) };
        while !s.is_null() {
            // SAFETY: symbols live (kmalloc'd by `intern`, `size_of::<Symbol>() + len` bytes) from `intern` until `free`, and the bucket chains hold only those.
            let sr = unsafe { &mut *s };
            if sr.key == key {
                // Compare the name too (reads the object's tail).
                // SAFETY: the symbol's `len` name bytes follow the header in its object.
                let name = unsafe { core::slice::from_raw_parts((s as *const u8).add(core::mem::size_of::<Symbol>()), sr.len as usize) };
                if name.first().copied() == Some(b'a' + (key % 26) as u8) {
                    sr.refs += 1;
                    return s;
                }
            }
            s = sr.next;
        }
        if self.n >= self.nbuckets * 2 && self.nbuckets < 1024 {
            self.grow();
        }
        let len = 4 + (key % 40) as usize;
        let s = mem::kmalloc(core::mem::size_of::<Symbol>() + len) as *mut Symbol;
        // SAFETY: `s` is a fresh object of header + `len` bytes (the
        // workload's kmalloc stops the guest rather than fail); the bucket
        // index is < nbuckets.
        unsafe {
            let name = (s as *mut u8).add(core::mem::size_of::<Symbol>());
            for i in 0..len {
                *name.add(i) = b'a' + ((key >> (i % 8)) % 26) as u8;
            }
            *name = b'a' + (key % 26) as u8;
            let b = self.buckets.add(h % self.nbuckets);
            s.write(Symbol { next: *b, key, refs: 1, len: len as u32 });
            *b = s;
        }
        self.n += 1;
        s
    }
    fn grow(&mut self) {
        let old = self.nbuckets;
        let nb = old * 2;
        // krealloc (in place up to the slot size, else copy), then rehash.
        self.buckets = mem::krealloc(self.buckets as *mut u8, old * 8, nb * 8) as *mut *mut Symbol;
        // SAFETY: krealloc kept the `old` bucket pointers in an array of `nb`;
        // symbols live (kmalloc'd by `intern`, `size_of::<Symbol>() + len` bytes) from `intern` until `free`, and the bucket chains hold only those; every index used is < old or < nb.
        unsafe {
            let mut chain: *mut Symbol = core::ptr::null_mut();
            for i in 0..old {
                let mut s = *self.buckets.add(i);
                while !s.is_null() {
                    let next = (*s).next;
                    (*s).next = chain;
                    chain = s;
                    s = next;
                }
            }
            core::ptr::write_bytes(self.buckets, 0, nb);
            while !chain.is_null() {
                let next = (*chain).next;
                let b = self.buckets.add(mix((*chain).key) as usize % nb);
                (*chain).next = *b;
                *b = chain;
                chain = next;
            }
        }
        self.nbuckets = nb;
    }
    fn free(self) -> u64 {
        let mut sum = 0u64;
        for i in 0..self.nbuckets {
            // SAFETY: i < nbuckets.
            let mut s = unsafe { *self.buckets.add(i) };
            while !s.is_null() {
                // SAFETY: symbols live (kmalloc'd by `intern`, `size_of::<Symbol>() + len` bytes) from `intern` until `free`, and the bucket chains hold only those (`s` is freed after these reads).
                let next = unsafe { (*s).next };
                // SAFETY: as above.
                let (refs, len) = unsafe { ((*s).refs, (*s).len) };
                sum = sum.wrapping_add(refs as u64);
                mem::kfree(s as *mut u8, core::mem::size_of::<Symbol>() + len as usize);
                s = next;
            }
        }
        mem::kfree(self.buckets as *mut u8, self.nbuckets * 8);
        sum
    }
}

/// Per-unit compiler state.
struct Cc {
    seed: u64,
    node_cache: Kc,
    syms: SymTab,
    /// Nodes without a parent yet (vmalloc'd).
    pending: *mut *mut u64,
    npending: usize,
    cap: usize,
    nodes: usize,
    folded: usize,
    anon: *mut usize,
    nanon: usize,
    anon_cap: usize,
    hash: u64,
}

impl Cc {
    fn anon_touch(&mut self, v: u64) {
        // The compiler heap grows as the unit is compiled.
        if self.nanon < self.anon_cap && (v & 7) == 0 {
            let p = mem::anon_page();
            // User space writing its own memory (outside the kernel).
            // SAFETY: `p` is a page just allocated (8 words at 512-byte
            // strides stay inside it).
            crate::kasan_glue::outside_write(p, crate::mm::PAGE_SIZE, || unsafe {
                let w = p as *mut u64;
                for i in 0..8 {
                    crate::kasan_glue::user_write(w.add(i * 64), v ^ i as u64);
                }
            });
            // SAFETY: `nanon < anon_cap`, the capacity of `anon`.
            unsafe { *self.anon.add(self.nanon) = p };
            self.nanon += 1;
        }
    }

    fn new_node(&mut self, val: u64) {
        if self.npending == self.cap || self.nodes - self.folded >= self.cap {
            return;
        }
        let r = (val >> 16) % 1000;
        let (kind, size) = if r < 500 {
            (KIND_NODE_CACHE, NODE_CACHE_SIZE)
        } else {
            let sz = if r < 800 {
                16 + (val >> 32) % 33
            } else if r < 950 {
                48 + (val >> 32) % 209
            } else if r < 995 {
                256 + (val >> 32) % 1793
            } else {
                2048 + (val >> 32) % 3953
            };
            (KIND_NODE_KMALLOC, sz as usize)
        };
        let p = if kind == KIND_NODE_CACHE { mem::cache_alloc(self.node_cache) } else { mem::kmalloc(size) } as *mut u64;
        let room = (size - 16) / 8;
        let want = ((val >> 24) % (MAX_CHILDREN as u64 + 1)) as usize;
        let nchild = want.min(room).min(MAX_CHILDREN).min(self.npending);
        // SAFETY: `p` is a fresh object of `size` bytes; 2 + nchild <= size / 8
        // (nchild <= room); the children popped are among the `npending`
        // entries of `pending`.
        unsafe {
            p.write(((kind as u64) << 48) | ((nchild as u64) << 32) | size as u64);
            p.add(1).write(val);
            for c in 0..nchild {
                self.npending -= 1;
                p.add(2 + c).write(*self.pending.add(self.npending) as u64);
            }
            let words = size / 8;
            for i in 2 + nchild..words {
                p.add(i).write(val.rotate_left(i as u32));
            }
            let b = p as *mut u8;
            for i in words * 8..size {
                *b.add(i) = i as u8;
            }
        }
        self.nodes += 1;
        // Constant folding: some leaves die at once.
        if nchild == 0 && (val >> 28).is_multiple_of(8) {
            self.free_node(p);
            self.folded += 1;
            return;
        }
        // SAFETY: npending < cap (new_node returns early at cap), the
        // capacity of `pending`.
        unsafe { *self.pending.add(self.npending) = p };
        self.npending += 1;
    }

    fn free_node(&mut self, p: *mut u64) {
        // SAFETY: a pending node is a live object of `size` bytes (>= 16, from new_node) whose word 0 is its header (kind, nchild, size), word 1 its value and words 2..2 + nchild its children, live nodes (freed just below).
        let h = unsafe { p.read() };
        if (h >> 48) as u32 == KIND_NODE_CACHE {
            mem::cache_free(self.node_cache, p as *mut u8);
        } else {
            mem::kfree(p as *mut u8, (h & 0xffff_ffff) as usize);
        }
    }

    /// Lex one page into a token list, then parse the tokens.
    fn compile_page(&mut self, page: usize, stride: usize, content: u64, index: usize) {
        // The compiler reads its source as user space does (`read`: the
        // kernel checks the copied range once, the reads are not checked).
        crate::kasan_glue::outside_read(page, PAGE_SIZE);
        let w = page as *const u64;
        // Cheap corruption check of the page-cache page.
        // SAFETY: `page` is a pinned page-cache page (4 KiB = 512 words).
        let (first, last) = unsafe { (crate::kasan_glue::user_read(w), crate::kasan_glue::user_read(w.add(511))) };
        if first != disk_word(content, index, 0) || last != disk_word(content, index, 511) {
            super::fail("page cache page does not hold its file's content");
        }
        let mut head: *mut Token = core::ptr::null_mut();
        let mut tail: *mut Token = core::ptr::null_mut();
        let mut i = 0;
        while i < PAGE_SIZE / 8 {
            // SAFETY: i < 512 words of the pinned page.
            let v = unsafe { crate::kasan_glue::user_read(w.add(i)) };
            let sz = 24 + (v % 3) as usize * 8;
            let t = mem::kmalloc(sz) as *mut Token;
            // SAFETY: `t` is a fresh object of sz >= 24 = size_of::<Token>()
            // bytes; `tail` is the previous token of this list (live).
            unsafe {
                t.write(Token { next: core::ptr::null_mut(), val: v, kind: (v & 7) as u32, line: i as u32 });
                if tail.is_null() {
                    head = t;
                } else {
                    (*tail).next = t;
                }
            }
            tail = t;
            i += stride;
        }
        // Parse: consume and free the tokens.
        while !head.is_null() {
            // SAFETY: the token list holds live tokens, each freed after it
            // is read.
            let t = unsafe { &*head };
            let (v, k, next) = (t.val, t.kind, t.next);
            let sz = 24 + (v % 3) as usize * 8;
            match k {
                0..=2 => {
                    let s = self.syms.intern((v >> 40) & 0x3ff);
                    // SAFETY: intern returns a live symbol.
                    self.hash = self.hash.wrapping_add(unsafe { (*s).refs } as u64);
                }
                3 => self.hash ^= v,
                _ => {}
            }
            if (v >> 8) % 3 == 0 {
                self.new_node(v);
            }
            self.anon_touch(v >> 3);
            mem::kfree(head as *mut u8, sz);
            head = next;
        }
    }

    /// Walk every tree from the roots: iterative DFS over all nodes, with a
    /// recursive "type check" of the top levels.
    fn walk(&mut self, stack: *mut *mut u64) -> u64 {
        let mut h = 0u64;
        for r in 0..self.npending {
            // SAFETY: r < npending <= cap.
            let root = unsafe { *self.pending.add(r) };
            if r % 8 == 0 {
                h ^= type_check(root, 0);
            }
            let mut sp = 0usize;
            // SAFETY: `stack` holds `cap` entries (vmalloc'd by compile) and a walk pushes each node of one tree at most once: fewer than `cap` nodes are alive (new_node's bound).
            unsafe { *stack.add(sp) = root };
            sp += 1;
            while sp > 0 {
                sp -= 1;
                // SAFETY: sp < cap, an entry pushed above.
                let n = unsafe { *stack.add(sp) };
                // SAFETY: a pending node is a live object of `size` bytes (>= 16, from new_node) whose word 0 is its header (kind, nchild, size), word 1 its value and words 2..2 + nchild its children, live nodes.
                let hdr = unsafe { n.read() };
                let size = (hdr & 0xffff_ffff) as usize;
                let nchild = ((hdr >> 32) & 0xffff) as usize;
                // SAFETY: as above: word 1 exists (size >= 16).
                h = h.rotate_left(5) ^ unsafe { n.add(1).read() };
                for i in 2 + nchild..size / 8 {
                    // SAFETY: i < size / 8: inside the node.
                    h = h.rotate_left(5) ^ unsafe { n.add(i).read() };
                }
                for c in 0..nchild {
                    // SAFETY: child c is word 2 + c of the node; `stack` holds `cap` entries (vmalloc'd by compile) and a walk pushes each node of one tree at most once: fewer than `cap` nodes are alive (new_node's bound).
                    unsafe { *stack.add(sp) = n.add(2 + c).read() as *mut u64 };
                    sp += 1;
                }
            }
        }
        h
    }

    /// Free every tree.
    fn free_all(&mut self, stack: *mut *mut u64) {
        for r in 0..self.npending {
            // SAFETY: r < npending <= cap.
            let root = unsafe { *self.pending.add(r) };
            let mut sp = 0usize;
            // SAFETY: `stack` holds `cap` entries (vmalloc'd by compile) and a walk pushes each node of one tree at most once: fewer than `cap` nodes are alive (new_node's bound).
            unsafe { *stack.add(sp) = root };
            sp += 1;
            while sp > 0 {
                sp -= 1;
                // SAFETY: sp < cap, an entry pushed above.
                let n = unsafe { *stack.add(sp) };
                // SAFETY: a pending node is a live object of `size` bytes (>= 16, from new_node) whose word 0 is its header (kind, nchild, size), word 1 its value and words 2..2 + nchild its children, live nodes (its children are pushed before it is freed).
                let hdr = unsafe { n.read() };
                let nchild = ((hdr >> 32) & 0xffff) as usize;
                for c in 0..nchild {
                    // SAFETY: child c is word 2 + c of the live node; `stack` holds `cap` entries (vmalloc'd by compile) and a walk pushes each node of one tree at most once: fewer than `cap` nodes are alive (new_node's bound).
                    unsafe { *stack.add(sp) = n.add(2 + c).read() as *mut u64 };
                    sp += 1;
                }
                self.free_node(n);
            }
        }
        self.npending = 0;
    }
}

/// Recursive check of the top of a tree, with a local buffer per frame
/// (stack-tracked memory).
#[inline(never)]
fn type_check(n: *mut u64, depth: u32) -> u64 {
    let mut local = [0u64; 6];
    // SAFETY: `n` is a pending node or one's child: a pending node is a live object of `size` bytes (>= 16, from new_node) whose word 0 is its header (kind, nchild, size), word 1 its value and words 2..2 + nchild its children, live nodes.
    let hdr = unsafe { n.read() };
    let size = (hdr & 0xffff_ffff) as usize;
    let nchild = ((hdr >> 32) & 0xffff) as usize;
    for (i, l) in local.iter_mut().enumerate() {
        let k = 2 + nchild + i;
        // SAFETY: k < size / 8: inside the node.
        *l = if k < size / 8 { unsafe { n.add(k).read() } } else { depth as u64 };
    }
    let mut h = local.iter().fold(hdr, |a, &b| a.rotate_left(7) ^ b);
    if depth < 6 {
        for c in 0..nchild {
            // SAFETY: child c is word 2 + c of the live node.
            h ^= type_check(unsafe { n.add(2 + c).read() } as *mut u64, depth + 1);
        }
    }
    core::hint::black_box(&mut local);
    h
}

fn open_read(seed: u64, kind: u32, id: u32, npages: u32, content: u64) -> *mut File {
    match vfs::open(seed, kind, id, Some((kind, npages, content))) {
        Some(f) => f,
        None => super::fail("open failed"),
    }
}

/// Compile unit `u` (runs in a job task).
pub fn compile(u: u32) {
    let st = setup();
    let seed = st.seed;
    let (src_pages, nhdr, anon_cap) = unit_shape(seed, u);
    let mut rng = Rng::new(hash3(seed, 0xcc, u as u64));
    // Which headers (popular ones more often).
    let mut hdrs = [0u32; 24];
    let mut hdr_pages_total = 0usize;
    for h in hdrs.iter_mut().take(nhdr as usize) {
        *h = rng.skewed(st.nheaders as u64) as u32;
        hdr_pages_total += header_pages(seed, *h) as usize;
    }
    let tokens = src_pages as usize * (512 / SRC_TOKEN_STRIDE) + hdr_pages_total * (512 / HDR_TOKEN_STRIDE);
    let cap = tokens / 3 + 64;
    let pending = mem::vmalloc(cap * 8) as *mut *mut u64;
    let anon = mem::kzalloc(anon_cap.max(1) * 8) as *mut usize;
    let mut cc = Cc {
        seed,
        node_cache: st.node_cache,
        syms: SymTab::new(),
        pending,
        npending: 0,
        cap,
        nodes: 0,
        folded: 0,
        anon,
        nanon: 0,
        anon_cap,
        hash: mix(u as u64),
    };

    // Profile build: the include path search and make's dependency checks
    // look up files of the tree (popular ones more often).
    let files = params().files;
    if files > 0 {
        let mut tr = Rng::new(hash3(seed, 0x7e, u as u64));
        for _ in 0..TREE_LOOKUPS {
            let id = tr.skewed(files as u64) as u32;
            if vfs::stat(seed, KIND_TREE, id, tree_file(seed, id)) {
                vfs::note_refault();
            }
        }
    }
    // Preprocess: read the source once (checksum only), then the headers.
    let src_content = source_content(seed, u);
    let f = open_read(seed, KIND_SOURCE, u, src_pages, src_content);
    // SAFETY: open_read / vfs::open returned an open file (this task's until it closes it).
    let file: &File = unsafe { &*f };
    for i in 0..src_pages as usize {
        let p = pagecache::get(file, i);
        let w = p as *const u64;
        let mut s = 0u64;
        for k in (0..512).step_by(8) {
            // SAFETY: k < 512 words of the pinned page.
            s = s.wrapping_add(unsafe { w.add(k).read() });
        }
        cc.hash ^= s;
        pagecache::put(p);
    }
    // SAFETY: `f` was opened above and is closed once, here.
    unsafe { vfs::close(f) };
    task::yield_now();
    for &h in hdrs.iter().take(nhdr as usize) {
        let hp = header_pages(seed, h);
        let hc = header_content(seed, h);
        let f = open_read(seed, KIND_HEADER, h, hp, hc);
        // SAFETY: open_read / vfs::open returned an open file (this task's until it closes it).
        let file: &File = unsafe { &*f };
        for i in 0..hp as usize {
            let p = pagecache::get(file, i);
            cc.compile_page(p, HDR_TOKEN_STRIDE, hc, i);
            pagecache::put(p);
        }
        // SAFETY: `f` was opened above and is closed once, here.
        unsafe { vfs::close(f) };
        super::maybe_sample();
        task::yield_now();
    }
    // Compile: the source again (page-cache hits unless reclaimed).
    let f = open_read(seed, KIND_SOURCE, u, src_pages, src_content);
    // SAFETY: open_read / vfs::open returned an open file (this task's until it closes it).
    let file: &File = unsafe { &*f };
    for i in 0..src_pages as usize {
        let p = pagecache::get(file, i);
        cc.compile_page(p, SRC_TOKEN_STRIDE, src_content, i);
        pagecache::put(p);
        if i % 4 == 3 {
            task::yield_now();
        }
    }
    // SAFETY: `f` was opened above and is closed once, here.
    unsafe { vfs::close(f) };
    mem::note_tracked();

    // Walk the AST (the "optimiser"), with a vmalloc'd DFS stack.
    let stack = mem::vmalloc(cap * 8) as *mut *mut u64;
    let h = cc.walk(stack);
    let result = mix(cc.hash ^ h ^ cc.nodes as u64);
    task::yield_now();

    // Emit the object file into dirty page-cache pages.
    // Object file with debug info: `obj` sixteenths of a page per AST node.
    let out_pages = (1 + cc.nodes * params().obj_per_node / 16).min(60000) as u32;
    let out_content = mix(result ^ u as u64);
    let f = match vfs::open(seed, KIND_OUTPUT, u, Some((KIND_OUTPUT, out_pages, out_content))) {
        Some(f) => f,
        None => super::fail("cannot create the output"),
    };
    // SAFETY: vfs::open returned an open file (this task's until it closes
    // it); created just now with `out_content` (a unit's output is written once).
    let file: &File = unsafe { &*f };
    for i in 0..out_pages as usize {
        let p = pagecache::write_begin(file, i);
        pagecache::fill(p, out_content, i);
        pagecache::put(p);
    }
    // SAFETY: `f` was opened above and is closed once, here.
    unsafe { vfs::close(f) };
    vfs::disk_write(u, out_pages, out_content);
    pagecache::balance_dirty();
    mem::note_tracked();

    // Exit: free everything.
    cc.free_all(stack);
    mem::vfree(stack as *mut u8, cap * 8);
    let mut anon_sum = 0u64;
    for i in 0..cc.nanon {
        // SAFETY: i < nanon <= anon_cap, the capacity of `anon`.
        let p = unsafe { *cc.anon.add(i) };
        // User space reads its own page (not instrumented, the range checked).
        crate::kasan_glue::outside_read(p, 8);
        // SAFETY: an anonymous page anon_touch allocated (freed just below).
        anon_sum = anon_sum.wrapping_add(unsafe { crate::kasan_glue::user_read(p as *const u64) });
        mem::anon_free(p);
    }
    mem::kfree(cc.anon as *mut u8, anon_cap.max(1) * 8);
    mem::vfree(cc.pending as *mut u8, cap * 8);
    let refs = cc.syms.free();
    let stm = shared();
    stm.units_done.fetch_add(1, Relaxed);
    stm.nodes.fetch_add(cc.nodes as u64, Relaxed);
    stm.folded.fetch_add(cc.folded as u64, Relaxed);
    stm.unit_sum.fetch_add(result ^ refs, Relaxed);
    stm.anon_sum.fetch_add(anon_sum, Relaxed);
    let _ = cc.seed;
}

/// The link step: read every unit's object file through the page cache
/// (hits, or misses that come back from "disk" after reclaim), verify it,
/// and fold it into the image checksum.
pub fn link(units: u32) -> u64 {
    let seed = setup().seed;
    let symtab = mem::vmalloc(units as usize * 16) as *mut u64;
    let mut sum = 0u64;
    for u in 0..units {
        let f = match vfs::open(seed, KIND_OUTPUT, u, vfs::disk_read(u)) {
            Some(f) => f,
            None => super::fail("link: an object file is missing"),
        };
        // SAFETY: vfs::open returned an open file (this task's until it closes it).
        let file: &File = unsafe { &*f };
        let mut s = 0u64;
        for i in 0..file.npages() as usize {
            let p = pagecache::get(file, i);
            if !pagecache::verify(p, file.content(), i) {
                crate::println!("wl-error link: page {} of unit {} is corrupt", i, u);
                shared().errors.fetch_add(1, Relaxed);
            }
            let w = p as *const u64;
            for k in (0..512).step_by(16) {
                // SAFETY: k < 512 words of the pinned page (its range
                // checked by `verify`, as a read of the file).
                s = s.wrapping_add(unsafe { crate::kasan_glue::user_read(w.add(k)) });
            }
            pagecache::put(p);
        }
        // SAFETY: `symtab` holds 2 * units words (vmalloc'd above); u < units.
        unsafe {
            symtab.add(u as usize * 2).write(file.content());
            symtab.add(u as usize * 2 + 1).write(s);
        }
        // SAFETY: `f` was opened above and is closed once, here.
        unsafe { vfs::close(f) };
        super::maybe_sample();
    }
    for u in 0..units as usize {
        // SAFETY: u < units: both words are inside `symtab`, written above.
        let (a, b) = unsafe { (symtab.add(u * 2).read(), symtab.add(u * 2 + 1).read()) };
        sum = hash3(sum, a, b);
    }
    mem::vfree(symtab as *mut u8, units as usize * 16);
    sum
}
