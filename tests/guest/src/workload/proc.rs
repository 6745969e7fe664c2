//! Processes of the build (profile build): every compilation unit runs as
//! short-lived processes, as `make` runs `gcc`, which runs `cc1` and `as`.
//! Each process has what Linux allocates for fork + exec, from caches of
//! Linux's names and (x86_64, 6.x) sizes: task_struct, mm_struct,
//! files_struct, signal_struct, sighand_struct, cred, pid, and one
//! vm_area_struct per mapping (an anon_vma and an anon_vma_chain for the
//! anonymous ones); the kernel stack is the task's own (16 KiB). Everything
//! is freed at exit.
use super::mem::{self, Kc, G_PROCESS};

const CACHES: [(&str, usize); 9] = [
    ("task_struct", 7168),
    ("mm_struct", 1152),
    ("files_cache", 704),
    ("signal_cache", 1088),
    ("sighand_cache", 2112),
    ("cred_jar", 192),
    ("pid", 128),
    ("vm_area_struct", 184),
    ("anon_vma", 96),
];
const AVC_SIZE: usize = 64;
const T_TASK: usize = 0;
const T_VMA: usize = 7;
const T_ANON_VMA: usize = 8;
/// Objects a process holds besides its mappings (task .. pid).
const FIXED: usize = 7;

struct Caches {
    k: [Kc; 9],
    avc: Kc,
}

static mut CACHES_LIVE: Option<Caches> = None;

fn caches() -> &'static Caches {
    // SAFETY: set once by `init` before any process exists (before the
    // jobs start), cleared by `destroy` after the last has exited; the jobs
    // (on every CPU) only read it in between.
    unsafe { (*core::ptr::addr_of!(CACHES_LIVE)).as_ref().expect("process caches") }
}

pub fn init() {
    let mut k = [None; 9];
    for (slot, &(name, size)) in k.iter_mut().zip(CACHES.iter()) {
        *slot = Some(mem::create_cache(name, size, G_PROCESS));
    }
    let k = k.map(|c| c.expect("created above"));
    let avc = mem::create_cache("anon_vma_chain", AVC_SIZE, G_PROCESS);
    // SAFETY: before any process (see `caches`).
    unsafe { CACHES_LIVE = Some(Caches { k, avc }) };
}

/// Destroy the caches (every process has exited); false on a leak.
pub fn destroy() -> bool {
    // SAFETY: after the last process (see `caches`).
    let Some(c) = (unsafe { (*core::ptr::addr_of_mut!(CACHES_LIVE)).take() }) else { return true };
    crate::mm::slab::drain_all();
    let mut ok = true;
    for k in c.k.into_iter().chain(core::iter::once(c.avc)) {
        ok &= mem::destroy_cache(k);
    }
    ok
}

/// A process's kernel objects. Mappings are a singly linked list through
/// the first word of each vm_area_struct; an anonymous one holds its
/// anon_vma and anon_vma_chain in its second and third words.
pub struct Process {
    fixed: [*mut u8; FIXED],
    vmas: *mut u64,
    pub nvma: usize,
}

/// fork + exec of a process with `nvma` mappings (every third anonymous).
pub fn spawn_objects(pid: u64, nvma: usize) -> Process {
    let c = caches();
    let mut fixed = [core::ptr::null_mut(); FIXED];
    for (i, f) in fixed.iter_mut().enumerate() {
        let p = mem::cache_alloc(c.k[i]);
        // SAFETY: a fresh object of CACHES[i].1 bytes (>= 128): fill its
        // head as fork would (the whole task_struct is copied from the parent).
        unsafe {
            let n = if i == T_TASK { CACHES[i].1 } else { 64 };
            core::ptr::write_bytes(p, 0, n);
            (p as *mut u64).write(pid);
        }
        *f = p;
    }
    let mut vmas: *mut u64 = core::ptr::null_mut();
    for m in 0..nvma {
        let v = mem::cache_alloc(c.k[T_VMA]) as *mut u64;
        let (av, avc) = if m % 3 == 2 {
            (mem::cache_alloc(c.k[T_ANON_VMA]) as u64, mem::cache_alloc(c.avc) as u64)
        } else {
            (0, 0)
        };
        // SAFETY: `v` is a fresh 184-byte object (23 words), the anon ones
        // fresh objects of 96 and 64 bytes.
        unsafe {
            core::ptr::write_bytes(v as *mut u8, 0, CACHES[T_VMA].1);
            v.write(vmas as u64);
            v.add(1).write(av);
            v.add(2).write(avc);
            v.add(3).write(0x4000_0000 + (m as u64) * 0x20_0000);
            if av != 0 {
                (av as *mut u64).write(v as u64);
                (avc as *mut u64).write(av);
            }
        }
        vmas = v;
    }
    Process { fixed, vmas, nvma }
}

/// exit + wait: free every object of the process.
pub fn exit_objects(p: Process) {
    let c = caches();
    let mut v = p.vmas;
    while !v.is_null() {
        // SAFETY: the list holds the live mappings spawn_objects made (each
        // freed after its words are read).
        let (next, av, avc) = unsafe { (v.read() as *mut u64, v.add(1).read(), v.add(2).read()) };
        if av != 0 {
            mem::cache_free(c.avc, avc as *mut u8);
            mem::cache_free(c.k[T_ANON_VMA], av as *mut u8);
        }
        mem::cache_free(c.k[T_VMA], v as *mut u8);
        v = next;
    }
    for (i, f) in p.fixed.into_iter().enumerate().rev() {
        mem::cache_free(c.k[i], f);
    }
}
