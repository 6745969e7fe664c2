//! Kernel tasks: 16 KiB stacks from the buddy allocator, a cooperative
//! round-robin scheduler (spawn / yield_now / exit / join), the current
//! task's name and pid (for "by task <name>/<pid>"), an rcu-like call_rcu
//! queue run at grace points, and a workqueue served by a kworker task.
use crate::kasan_glue;
use crate::mm::buddy::{self, PG_STACK};
use crate::println;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

pub const STACK_ORDER: usize = 2; // 16 KiB
pub const STACK_SIZE: usize = 4096 << STACK_ORDER;
const MAX_TASKS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    Ready,
    Dead,
}

#[derive(Clone, Copy)]
struct Task {
    name: &'static str,
    pid: u32,
    state: State,
    rsp: u64,
    stack: usize, // 0 for the boot task
    entry: Option<fn(usize)>,
    arg: usize,
}

const NO_TASK: Task = Task { name: "", pid: 0, state: State::Free, rsp: 0, stack: 0, entry: None, arg: 0 };

struct Sched {
    tasks: [Task; MAX_TASKS],
    current: usize,
    next_pid: u32,
    /// Stack of a task that exited, freed by the next task after the switch.
    dead_stack: usize,
}

static mut S: Sched = Sched { tasks: [NO_TASK; MAX_TASKS], current: 0, next_pid: 2, dead_stack: 0 };

fn s() -> &'static mut Sched {
    // SAFETY: one CPU, cooperative switching (only yield_now/exit switch,
    // and no interrupt handler touches the scheduler): the scheduler's
    // functions run one at a time and hold no reference across a switch.
    unsafe { &mut *core::ptr::addr_of_mut!(S) }
}

core::arch::global_asm!(
    r#"
    .text
    .global guest_switch_context
// guest_switch_context(old_rsp: *mut u64 (rdi), new_rsp: u64 (rsi))
guest_switch_context:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret

    .global guest_task_trampoline
guest_task_trampoline:
    xor %ebp, %ebp
    call guest_task_start
    ud2
    "#,
    options(att_syntax)
);

extern "C" {
    fn guest_switch_context(old_rsp: *mut u64, new_rsp: u64);
    fn guest_task_trampoline();
}

/// The boot flow becomes task "kmain", pid 1.
pub fn init() {
    let sc = s();
    sc.tasks[0] = Task { name: "kmain", pid: 1, state: State::Ready, rsp: 0, stack: 0, entry: None, arg: 0 };
    sc.current = 0;
    kasan_glue::context_reset(0);
    kasan_glue::context_switch(0);
    kasan_glue::task_switch("kmain", 1);
}

/// Name and pid of the running task.
pub fn current() -> (&'static str, u32) {
    let sc = s();
    let t = &sc.tasks[sc.current];
    (t.name, t.pid)
}

/// Stack bounds (low, high) of the running task.
pub fn current_stack() -> (usize, usize) {
    let sc = s();
    let t = &sc.tasks[sc.current];
    if t.stack == 0 {
        let (lo, hi) = guest_boot::boot_stack();
        (lo as usize, hi as usize)
    } else {
        (t.stack, t.stack + STACK_SIZE)
    }
}

/// Create a task running `f(arg)`; returns its pid (0 if out of slots/memory).
pub fn spawn(name: &'static str, f: fn(usize), arg: usize) -> u32 {
    let sc = s();
    let Some(slot) = (1..MAX_TASKS).find(|&i| sc.tasks[i].state == State::Free) else { return 0 };
    let Some(stack) = buddy::alloc_pages_flags(STACK_ORDER, PG_STACK) else { return 0 };
    kasan_glue::stack_alloc(stack, STACK_ORDER as u32);
    // Initial frame for guest_switch_context: 6 callee-saved regs, then the trampoline.
    let top = stack + STACK_SIZE;
    let frame = (top - 8 * 8) as *mut u64;
    // SAFETY: the top 64 bytes of the 16 KiB stack just allocated (mapped,
    // ours, not running yet).
    unsafe {
        for i in 0..6 {
            frame.add(i).write(0);
        }
        frame.add(6).write(guest_task_trampoline as *const () as usize as u64);
        frame.add(7).write(0);
    }
    kasan_glue::context_reset(slot);
    let pid = sc.next_pid;
    sc.next_pid += 1;
    sc.tasks[slot] = Task { name, pid, state: State::Ready, rsp: frame as u64, stack, entry: Some(f), arg };
    pid
}

#[no_mangle]
extern "C" fn guest_task_start() -> ! {
    finish_switch();
    let sc = s();
    let t = sc.tasks[sc.current];
    if let Some(f) = t.entry {
        f(t.arg);
    }
    exit()
}

fn finish_switch() {
    let sc = s();
    let t = &sc.tasks[sc.current];
    kasan_glue::task_switch(t.name, t.pid);
    if sc.dead_stack != 0 {
        let st = sc.dead_stack;
        sc.dead_stack = 0;
        kasan_glue::stack_free(st, STACK_ORDER as u32);
        buddy::free_pages(st, STACK_ORDER);
    }
}

fn switch_to_next() {
    let sc = s();
    let cur = sc.current;
    let mut next = None;
    for k in 1..=MAX_TASKS {
        let i = (cur + k) % MAX_TASKS;
        if sc.tasks[i].state == State::Ready {
            next = Some(i);
            break;
        }
    }
    let Some(n) = next else { return };
    if n == cur {
        return;
    }
    sc.current = n;
    kasan_glue::context_switch(n);
    let old = core::ptr::addr_of_mut!(sc.tasks[cur].rsp);
    let new = sc.tasks[n].rsp;
    // SAFETY: `old` is the current task's rsp slot, `new` the saved rsp of
    // a Ready task (a frame spawn built or a switch saved); the assembly
    // saves the callee-saved registers the Rust ABI requires.
    unsafe { guest_switch_context(old, new) };
    finish_switch();
}

/// Let the other ready tasks run; also a grace point for call_rcu.
pub fn yield_now() {
    rcu_grace_point();
    switch_to_next();
}

/// End the running task (its stack is freed by the next task).
pub fn exit() -> ! {
    let sc = s();
    let cur = sc.current;
    if cur == 0 {
        panic!("task::exit from kmain");
    }
    sc.tasks[cur].state = State::Dead;
    sc.dead_stack = sc.tasks[cur].stack;
    sc.tasks[cur].stack = 0;
    switch_to_next();
    unreachable!("dead task rescheduled");
}

/// Wait until task `pid` has exited, then release its slot.
pub fn join(pid: u32) {
    loop {
        let sc = s();
        match sc.tasks.iter().position(|t| t.pid == pid && t.state != State::Free) {
            None => return,
            Some(i) if sc.tasks[i].state == State::Dead => {
                sc.tasks[i] = NO_TASK;
                return;
            }
            Some(_) => yield_now(),
        }
    }
}

/// Number of live (ready) tasks besides the caller.
pub fn others_ready() -> usize {
    let sc = s();
    sc.tasks.iter().enumerate().filter(|(i, t)| *i != sc.current && t.state == State::Ready).count()
}

// ---- call_rcu -------------------------------------------------------------

const RCU_MAX: usize = 256;
static mut RCU: [(Option<fn(usize)>, usize); RCU_MAX] = [(None, 0); RCU_MAX];
static RCU_N: AtomicUsize = AtomicUsize::new(0);

/// Queue `f(arg)` to run after a grace period (the next grace point).
pub fn call_rcu(f: fn(usize), arg: usize) {
    if RCU_N.load(Relaxed) == RCU_MAX {
        rcu_grace_point();
    }
    let n = RCU_N.load(Relaxed);
    assert!(n < RCU_MAX, "call_rcu: queue full inside an RCU read-side critical section");
    // SAFETY: n < RCU_MAX (asserted: a full queue was just run); one CPU and
    // cooperative tasks: no other access to RCU runs meanwhile, and no
    // reference into it is held (entries are copied in and out).
    unsafe { RCU[n] = (Some(f), arg) };
    RCU_N.store(n + 1, Relaxed);
}

/// Read-side critical sections open now (rcu_read_lock nesting).
static RCU_READERS: AtomicUsize = AtomicUsize::new(0);

/// Enter an RCU read-side critical section: no grace period ends (no
/// callback runs) until the matching [`rcu_read_unlock`].
pub fn rcu_read_lock() {
    RCU_READERS.fetch_add(1, Relaxed);
}

/// Leave an RCU read-side critical section.
pub fn rcu_read_unlock() {
    let n = RCU_READERS.load(Relaxed);
    assert!(n > 0, "rcu_read_unlock without rcu_read_lock");
    RCU_READERS.store(n - 1, Relaxed);
}

/// Whether a read-side critical section is open.
pub fn rcu_reading() -> bool {
    RCU_READERS.load(Relaxed) != 0
}

/// A grace period ends here: run every queued callback (in queue order).
/// Called from yield_now. Inside a read-side critical section nothing
/// runs (the grace period cannot end before the reader leaves).
pub fn rcu_grace_point() {
    if rcu_reading() {
        return;
    }
    let mut i = 0;
    // Callbacks may queue more: RCU_N is read again each round.
    while i < RCU_N.load(Relaxed) {
        // SAFETY: i < RCU_N <= RCU_MAX; entries are copied out before the
        // callback runs, so a callback that queues more touches no borrow.
        let (f, a) = unsafe {
            let e = RCU[i];
            RCU[i] = (None, 0);
            e
        };
        if let Some(f) = f {
            f(a);
        }
        i += 1;
    }
    RCU_N.store(0, Relaxed);
}

/// Wait for all callbacks queued so far (not from inside a read-side
/// critical section: it would never end).
pub fn rcu_barrier() {
    assert!(!rcu_reading(), "rcu_barrier inside an RCU read-side critical section");
    rcu_grace_point();
}

// ---- workqueue ----------------------------------------------------------------

const WQ_MAX: usize = 256;
static mut WQ: [(Option<fn(usize)>, usize); WQ_MAX] = [(None, 0); WQ_MAX];
static WQ_HEAD: AtomicUsize = AtomicUsize::new(0);
static WQ_TAIL: AtomicUsize = AtomicUsize::new(0);
static WORKER: AtomicU32 = AtomicU32::new(0);

fn worker(_: usize) {
    loop {
        while WQ_HEAD.load(Relaxed) != WQ_TAIL.load(Relaxed) {
            let h = WQ_HEAD.fetch_add(1, Relaxed);
            // SAFETY: entry h was filled by queue_work (h < tail) and is
            // copied out; one CPU, cooperative tasks: nothing else touches
            // WQ meanwhile.
            let (f, a) = unsafe { WQ[h % WQ_MAX] };
            if let Some(f) = f {
                f(a);
            }
        }
        yield_now();
    }
}

/// Queue `f(arg)` to run in the kworker task.
pub fn queue_work(f: fn(usize), arg: usize) -> bool {
    if WORKER.load(Relaxed) == 0 {
        WORKER.store(spawn("kworker/0:1", worker, 0), Relaxed);
    }
    let t = WQ_TAIL.load(Relaxed);
    if t - WQ_HEAD.load(Relaxed) == WQ_MAX {
        return false;
    }
    // SAFETY: the slot t % WQ_MAX is free (fewer than WQ_MAX queued); one
    // CPU, cooperative tasks: the worker is not reading it meanwhile.
    unsafe { WQ[t % WQ_MAX] = (Some(f), arg) };
    WQ_TAIL.store(t + 1, Relaxed);
    true
}

/// Wait until the workqueue is empty.
pub fn flush_workqueue() {
    while WQ_HEAD.load(Relaxed) != WQ_TAIL.load(Relaxed) {
        yield_now();
    }
}

pub fn print_tasks() {
    for t in s().tasks.iter().filter(|t| t.state != State::Free) {
        println!("task {}/{} {:?} stack {:#x}", t.name, t.pid, t.state, t.stack);
    }
}
