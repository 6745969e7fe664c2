//! A `Platform` for host tests: reports are captured in memory, functions
//! are fake code addresses registered by name, and the call stack is what
//! the test says it is (one task and stack shared by every thread, or one
//! per thread for threads that take their own).

use crate::platform::{Platform, SlabRef, Symbol};
use std::collections::{BTreeMap, HashMap};
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::vec::Vec;

/// Fake text base: function `i` occupies `[TEXT + i * FN_SIZE, +FN_SIZE)`.
const TEXT: usize = 0x7000_0000;
const FN_SIZE: usize = 0x100;
/// Offset of the "call site" inside a fake function.
const SITE: usize = 0x2a;

/// What each thread (a CPU of the model kernel) runs: its task and its
/// fake call stack.
#[derive(Clone)]
struct Task {
    pid: u32,
    name: String,
    stack: Vec<usize>,
}

impl Default for Task {
    fn default() -> Self {
        Task { pid: 1, name: "kunit".into(), stack: Vec::new() }
    }
}

#[derive(Default)]
struct State {
    log: String,
    echo: bool,
    /// The task of the threads that have none of their own: `kunit/1` at
    /// first (one model kernel driven from any thread, one at a time).
    shared: Task,
    /// The threads that run a task of their own ([`HostPlatform::own_task`]:
    /// several CPUs at once).
    tasks: HashMap<ThreadId, Task>,
    names: Vec<String>,
    slabs: BTreeMap<usize, SlabRef>,
    /// vmalloc page -> the RAM page mapped there.
    vm: BTreeMap<usize, usize>,
}

impl State {
    /// The calling thread's task.
    fn task_mut(&mut self) -> &mut Task {
        match self.tasks.get_mut(&std::thread::current().id()) {
            Some(t) => t,
            None => &mut self.shared,
        }
    }

    /// The calling thread's task.
    fn task(&self) -> &Task {
        self.tasks.get(&std::thread::current().id()).unwrap_or(&self.shared)
    }
}

/// The CPU number of the calling thread ([`Platform::cpu`]): threads are
/// the host's CPUs, numbered in the order they first ask.
fn thread_cpu() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static CPU: usize = NEXT.fetch_add(1, Relaxed);
    }
    CPU.with(|c| *c)
}

/// The host platform; clones share state.
#[derive(Clone, Default)]
pub struct HostPlatform {
    state: Arc<Mutex<State>>,
}

impl HostPlatform {
    /// A platform whose current task is `kunit/1`.
    #[must_use]
    pub fn new() -> Self {
        let p = HostPlatform::default();
        {
            let mut s = p.lock();
            s.echo = std::env::var_os("HYBRID_SHADOW_ECHO").is_some();
        }
        p
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fake call-site address inside function `name` (registered on first use).
    #[must_use]
    pub fn func(&self, name: &str) -> usize {
        let mut s = self.lock();
        let i = match s.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                s.names.push(name.into());
                s.names.len() - 1
            }
        };
        TEXT + i * FN_SIZE + SITE
    }

    /// Enter function `name` on the calling thread: it becomes the
    /// innermost frame.
    pub fn enter(&self, name: &str) -> usize {
        let ip = self.func(name);
        self.lock().task_mut().stack.push(ip);
        ip
    }

    /// Leave the calling thread's innermost function.
    pub fn leave(&self) {
        self.lock().task_mut().stack.pop();
    }

    /// The calling thread's innermost frame's address (0 if none).
    #[must_use]
    pub fn current_ip(&self) -> usize {
        self.lock().task().stack.last().copied().unwrap_or(0)
    }

    /// The calling thread runs task `name`/`pid` of its own from now on,
    /// with its own (empty) call stack: a CPU of a model kernel on several
    /// threads ([`crate::host::smp`]). Other threads share one task.
    pub fn own_task(&self, name: &str, pid: u32) {
        let t = Task { pid, name: name.into(), stack: Vec::new() };
        self.lock().tasks.insert(std::thread::current().id(), t);
    }

    /// Set the calling thread's task (its own, or the one the threads
    /// without their own share).
    pub fn set_task(&self, name: &str, pid: u32) {
        let mut s = self.lock();
        let t = s.task_mut();
        t.name = name.into();
        t.pid = pid;
    }

    /// Record that the pages of `[base, base + len)` are a slab.
    pub fn add_slab(&self, base: usize, len: usize, r: SlabRef) {
        let mut s = self.lock();
        for p in (base..base + len).step_by(4096) {
            s.slabs.insert(p, r);
        }
    }

    /// Forget the slab pages of `[base, base + len)`.
    pub fn remove_slab(&self, base: usize, len: usize) {
        let mut s = self.lock();
        for p in (base..base + len).step_by(4096) {
            s.slabs.remove(&p);
        }
    }

    /// Map the RAM pages at `ram` (direct-map addresses) at vmalloc
    /// address `addr`, one after the other (the kernel's page tables).
    pub fn map_vmalloc(&self, addr: usize, ram: &[usize]) {
        let mut s = self.lock();
        for (k, &r) in ram.iter().enumerate() {
            s.vm.insert(addr + k * 4096, r);
        }
    }

    /// Unmap `pages` pages at vmalloc address `addr`.
    pub fn unmap_vmalloc(&self, addr: usize, pages: usize) {
        let mut s = self.lock();
        for k in 0..pages {
            s.vm.remove(&(addr + k * 4096));
        }
    }

    /// Take the console text written so far.
    pub fn take_log(&self) -> String {
        core::mem::take(&mut self.lock().log)
    }
}

impl Platform for HostPlatform {
    fn write_str(&self, s: &str) {
        let mut st = self.lock();
        if st.echo {
            std::eprint!("{s}");
        }
        st.log.push_str(s);
    }

    fn current_pid(&self) -> u32 {
        self.lock().task().pid
    }

    fn write_task_name(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let name = self.lock().task().name.clone();
        out.write_str(&name)
    }

    fn stack_trace(&self, out: &mut [usize]) -> usize {
        let s = self.lock();
        let mut n = 0;
        for &ip in s.task().stack.iter().rev() {
            if n == out.len() {
                break;
            }
            out[n] = ip;
            n += 1;
        }
        n
    }

    fn symbolize(&self, pc: usize, f: &mut dyn FnMut(Symbol<'_>)) -> bool {
        let name = {
            let s = self.lock();
            let i = pc.wrapping_sub(TEXT) / FN_SIZE;
            if pc < TEXT || i >= s.names.len() {
                return false;
            }
            s.names[i].clone()
        };
        f(Symbol { name: &name, offset: (pc - TEXT) % FN_SIZE, size: FN_SIZE });
        true
    }

    fn slab_of(&self, addr: usize) -> Option<SlabRef> {
        self.lock().slabs.get(&(addr & !4095)).copied()
    }

    fn panic(&self, msg: &str) -> ! {
        panic!("{msg}")
    }

    fn cpu(&self) -> usize {
        thread_cpu()
    }

    fn vmalloc_to_ram(&self, addr: usize) -> Option<usize> {
        self.lock().vm.get(&(addr & !4095)).map(|r| r + addr % 4096)
    }
}
