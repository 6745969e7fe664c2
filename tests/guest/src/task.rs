//! Kernel tasks: 16 KiB stacks from the buddy allocator, a cooperative
//! round-robin scheduler (spawn / yield_now / exit / join), the current
//! task's name and pid (for "by task <name>/<pid>"), an rcu-like call_rcu
//! queue run at grace points, and a workqueue served by a kworker task.
use crate::kasan_glue;
use crate::mm::buddy::{self, PG_STACK};
use crate::println;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::{Acquire, Relaxed, Release, SeqCst}};

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
    /// Running on a CPU, or being switched away from (its rsp is not saved
    /// yet): no other CPU may take it.
    on_cpu: bool,
    /// Runs on the boot CPU only (kmain: the boot flow).
    pinned: bool,
}

const NO_TASK: Task =
    Task { name: "", pid: 0, state: State::Free, rsp: 0, stack: 0, entry: None, arg: 0, on_cpu: false, pinned: false };

struct Sched {
    tasks: [Task; MAX_TASKS],
    next_pid: u32,
}

static mut S: Sched = Sched { tasks: [NO_TASK; MAX_TASKS], next_pid: 2 };

/// Guards `S` on several CPUs; held across a context switch (the task
/// switched to releases it, in `finish_switch`). Order: this lock, then
/// nothing: stacks are allocated and freed outside it.
static LOCK: guest_boot::smp::SpinLock = guest_boot::smp::SpinLock::new();

const MAX_CPUS: usize = guest_boot::cpu::MAX_CPUS;
/// Slot of the task each CPU runs; IDLE: an AP's idle loop.
const IDLE: usize = usize::MAX;
static CURRENT: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(IDLE) }; MAX_CPUS];
/// Slot each CPU switched away from (for `finish_switch`).
static PREV: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(IDLE) }; MAX_CPUS];
/// Saved rsp of each AP's idle loop.
static IDLE_RSP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Switches to a task, per CPU.
static SWITCHES: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// Tasks run on every CPU (`smp_sched=on` with several CPUs up).
static SPREAD: AtomicBool = AtomicBool::new(false);

fn s() -> &'static mut Sched {
    // SAFETY: every function that changes the scheduler holds LOCK (on one
    // CPU it is never contended); no interrupt handler touches it; the
    // running task's own name, pid and stack (read by `current` without the
    // lock) do not change while it runs. None holds the reference across a
    // switch.
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

fn cpu() -> usize {
    guest_boot::cpu::cpu_id()
}

/// The boot flow becomes task "kmain", pid 1.
pub fn init() {
    let sc = s();
    sc.tasks[0] = Task { name: "kmain", pid: 1, state: State::Ready, on_cpu: true, pinned: true, ..NO_TASK };
    CURRENT[0].store(0, Relaxed);
    kasan_glue::context_reset(0);
    kasan_glue::context_switch(0);
    kasan_glue::task_switch("kmain", 1);
}

/// Run tasks on every CPU (command line `smp_sched=on`, several CPUs up):
/// the APs' idle loops take ready tasks, and the boot CPU keeps interrupts
/// on (a CPU that waits for a lock takes the holder's shootdowns). Off,
/// every task runs on the boot CPU in strict round robin.
pub fn start_smp() {
    let on = guest_boot::boot_info().cmdline().split_ascii_whitespace().any(|w| w == "smp_sched=on");
    if !on || guest_boot::smp::cpus_online() < 2 {
        return;
    }
    SPREAD.store(true, SeqCst);
    guest_boot::smp::irq_enable();
    guest_boot::smp::set_idle_hook(ap_idle);
    println!("smp: tasks run on {} cpus", guest_boot::smp::cpus_online());
}

/// Name and pid of the running task.
pub fn current() -> (&'static str, u32) {
    match CURRENT[cpu()].load(Relaxed) {
        IDLE => ("swapper", 0),
        c => {
            let t = &s().tasks[c];
            (t.name, t.pid)
        }
    }
}

/// Stack bounds (low, high) of the running task.
pub fn current_stack() -> (usize, usize) {
    let c = CURRENT[cpu()].load(Relaxed);
    let stack = if c == IDLE { 0 } else { s().tasks[c].stack };
    if stack == 0 {
        let (lo, hi) = guest_boot::smp::stack_of(cpu());
        (lo as usize, hi as usize)
    } else {
        (stack, stack + STACK_SIZE)
    }
}

/// Create a task running `f(arg)`; returns its pid (0 if out of slots/memory).
pub fn spawn(name: &'static str, f: fn(usize), arg: usize) -> u32 {
    // The stack first, outside the scheduler's lock (the allocator and
    // the sanitizer take their own).
    let Some(stack) = buddy::alloc_pages_flags(STACK_ORDER, PG_STACK) else { return 0 };
    LOCK.lock();
    let sc = s();
    let Some(slot) = (1..MAX_TASKS).find(|&i| sc.tasks[i].state == State::Free) else {
        LOCK.unlock();
        buddy::free_pages(stack, STACK_ORDER);
        return 0;
    };
    // Taken (Dead, off every CPU) until set up below.
    sc.tasks[slot] = Task { state: State::Dead, ..NO_TASK };
    let pid = sc.next_pid;
    sc.next_pid += 1;
    LOCK.unlock();
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
    LOCK.lock();
    s().tasks[slot] = Task { name, pid, state: State::Ready, rsp: frame as u64, stack, entry: Some(f), arg, ..NO_TASK };
    LOCK.unlock();
    if SPREAD.load(Relaxed) {
        guest_boot::smp::wake_others();
    }
    pid
}

#[no_mangle]
extern "C" fn guest_task_start() -> ! {
    finish_switch();
    let t = s().tasks[CURRENT[cpu()].load(Relaxed)];
    if let Some(f) = t.entry {
        f(t.arg);
    }
    exit()
}

/// After a switch, on the new stack (LOCK held by the switch): the task
/// switched from is off this CPU now; free its stack if it died.
fn finish_switch() {
    let c = cpu();
    let sc = s();
    let mut dead_stack = 0;
    let prev = PREV[c].swap(IDLE, Relaxed);
    if prev != IDLE {
        let p = &mut sc.tasks[prev];
        if p.state == State::Dead {
            // Stays on_cpu until its stack is freed: `join` returns after.
            dead_stack = core::mem::take(&mut p.stack);
        } else {
            p.on_cpu = false;
        }
    }
    let cur = CURRENT[c].load(Relaxed);
    if cur != IDLE {
        let t = &sc.tasks[cur];
        kasan_glue::task_switch(t.name, t.pid);
    }
    LOCK.unlock();
    if dead_stack != 0 {
        kasan_glue::stack_free(dead_stack, STACK_ORDER as u32);
        buddy::free_pages(dead_stack, STACK_ORDER);
        LOCK.lock();
        s().tasks[prev].on_cpu = false;
        LOCK.unlock();
    }
}

/// The next task CPU `c` may run after `cur` (round robin from it): ready,
/// on no CPU, and not pinned elsewhere. LOCK held.
fn pick(sc: &Sched, c: usize, cur: usize) -> Option<usize> {
    let from = if cur == IDLE { 0 } else { cur };
    (1..=MAX_TASKS).map(|k| (from + k) % MAX_TASKS).find(|&i| {
        let t = &sc.tasks[i];
        t.state == State::Ready && !t.on_cpu && (!t.pinned || c == 0)
    })
}

/// Switch from what CPU `c` runs (`cur`, whose rsp goes to `save`) to
/// `next` (IDLE: the AP's idle loop). LOCK held; released by the other side.
fn switch(c: usize, cur: usize, next: usize, save: *mut u64) {
    let sc = s();
    let new = if next == IDLE {
        kasan_glue::context_idle();
        IDLE_RSP[c].load(Relaxed)
    } else {
        sc.tasks[next].on_cpu = true;
        SWITCHES[c].fetch_add(1, Relaxed);
        kasan_glue::context_switch(next);
        sc.tasks[next].rsp
    };
    CURRENT[c].store(next, Relaxed);
    PREV[c].store(cur, Relaxed);
    // SAFETY: `save` is the rsp slot of what this CPU runs now, `new` the
    // saved rsp of a task on no CPU (a frame spawn built or a switch
    // saved) or of this AP's idle loop; the assembly saves the callee-saved
    // registers the Rust ABI requires. LOCK keeps every other CPU off both.
    unsafe { guest_switch_context(save, new) };
    finish_switch();
}

fn switch_to_next() {
    LOCK.lock();
    let c = cpu();
    let sc = s();
    let cur = CURRENT[c].load(Relaxed);
    let next = match pick(sc, c, cur) {
        Some(n) => n,
        // Nothing else to run: a live task goes on, a dead one leaves an
        // AP to its idle loop (kmain never dies: the boot CPU always has it).
        None if sc.tasks[cur].state == State::Ready => {
            LOCK.unlock();
            return;
        }
        None => IDLE,
    };
    switch(c, cur, next, core::ptr::addr_of_mut!(sc.tasks[cur].rsp));
}

/// An AP's idle loop (guest_boot::smp's idle hook): run ready tasks until
/// there are none; returns with interrupts off after its last look, so a
/// wake-up cannot slip in before the AP halts.
fn ap_idle(c: usize) {
    loop {
        guest_boot::smp::irq_disable();
        LOCK.lock();
        let Some(next) = pick(s(), c, IDLE) else {
            LOCK.unlock();
            return;
        };
        guest_boot::smp::irq_enable();
        let save = IDLE_RSP[c].as_ptr();
        switch(c, IDLE, next, save);
    }
}

/// Let the other ready tasks run; also a grace point for call_rcu.
pub fn yield_now() {
    rcu_grace_point();
    switch_to_next();
}

/// End the running task (its stack is freed by the task switched to).
pub fn exit() -> ! {
    LOCK.lock();
    let cur = CURRENT[cpu()].load(Relaxed);
    if cur == 0 {
        LOCK.unlock();
        panic!("task::exit from kmain");
    }
    s().tasks[cur].state = State::Dead;
    LOCK.unlock();
    switch_to_next();
    unreachable!("dead task rescheduled");
}

/// Wait until task `pid` has exited, then release its slot.
pub fn join(pid: u32) {
    loop {
        LOCK.lock();
        let sc = s();
        let done = match sc.tasks.iter().position(|t| t.pid == pid && t.state != State::Free) {
            None => true,
            // Off every CPU: its last switch saved nothing we need any more.
            Some(i) if sc.tasks[i].state == State::Dead && !sc.tasks[i].on_cpu => {
                sc.tasks[i] = NO_TASK;
                true
            }
            Some(_) => false,
        };
        LOCK.unlock();
        if done {
            return;
        }
        // A waiting CPU that only switches between waiting tasks must still
        // hand over under `-icount` (QEMU runs the CPUs round-robin in one
        // thread and moves on at a `pause`): without it a CPU whose IPI
        // handler was entered was starved and its shootdown never acknowledged.
        core::hint::spin_loop();
        yield_now();
    }
}

/// Number of live (ready) tasks besides the caller.
pub fn others_ready() -> usize {
    LOCK.lock();
    let cur = CURRENT[cpu()].load(Relaxed);
    let n = s().tasks.iter().enumerate().filter(|(i, t)| *i != cur && t.state == State::Ready).count();
    LOCK.unlock();
    n
}

// ---- call_rcu -------------------------------------------------------------

const RCU_MAX: usize = 256;
/// A deferred call: the function and its argument (`None`: an empty slot).
type Deferred = (Option<fn(usize)>, usize);

static mut RCU: [Deferred; RCU_MAX] = [(None, 0); RCU_MAX];
static RCU_N: AtomicUsize = AtomicUsize::new(0);
/// Guards RCU and RCU_N on several CPUs; never held while a callback runs.
static RCU_LOCK: guest_boot::smp::RecLock = guest_boot::smp::RecLock::new();

/// Queue `f(arg)` to run after a grace period (the next grace point).
pub fn call_rcu(f: fn(usize), arg: usize) {
    loop {
        let g = RCU_LOCK.lock();
        let n = RCU_N.load(Relaxed);
        if n < RCU_MAX {
            // SAFETY: n < RCU_MAX; RCU_LOCK held: no other access to RCU
            // meanwhile, and no reference into it is held (entries are
            // copied in and out).
            unsafe { RCU[n] = (Some(f), arg) };
            RCU_N.store(n + 1, Relaxed);
            return;
        }
        drop(g);
        assert!(!rcu_reading(), "call_rcu: queue full inside an RCU read-side critical section");
        rcu_grace_point();
    }
}

/// Read-side critical sections open now (rcu_read_lock nesting, all CPUs).
static RCU_READERS: AtomicUsize = AtomicUsize::new(0);

/// Enter an RCU read-side critical section: no grace period ends (no
/// callback runs) until the matching [`rcu_read_unlock`].
pub fn rcu_read_lock() {
    RCU_READERS.fetch_add(1, SeqCst);
}

/// Leave an RCU read-side critical section.
pub fn rcu_read_unlock() {
    let n = RCU_READERS.fetch_sub(1, SeqCst);
    assert!(n > 0, "rcu_read_unlock without rcu_read_lock");
}

/// Whether a read-side critical section is open (on any CPU).
pub fn rcu_reading() -> bool {
    RCU_READERS.load(SeqCst) != 0
}

/// A grace period ends here: run every queued callback (in queue order).
/// Called from yield_now. While a read-side critical section is open
/// (anywhere) nothing runs (the grace period cannot end before the reader
/// leaves). Callbacks run without the queue's lock, one at a time.
pub fn rcu_grace_point() {
    if rcu_reading() {
        return;
    }
    loop {
        let e = {
            let _g = RCU_LOCK.lock();
            let n = RCU_N.load(Relaxed);
            if n == 0 {
                return;
            }
            // SAFETY: RCU_LOCK held, 0 < n <= RCU_MAX: take the first entry
            // and close the gap (callbacks may queue more meanwhile).
            let e = unsafe {
                let q = &mut *core::ptr::addr_of_mut!(RCU);
                let e = q[0];
                q.copy_within(1..n, 0);
                q[n - 1] = (None, 0);
                e
            };
            RCU_INFLIGHT.fetch_add(1, Relaxed);
            RCU_N.store(n - 1, Release);
            e
        };
        if let (Some(f), a) = e {
            f(a);
        }
        RCU_INFLIGHT.fetch_sub(1, Release);
    }
}

/// Callbacks taken off the queue and not finished yet (another CPU may be
/// running them).
static RCU_INFLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Wait for all callbacks queued so far, including those another CPU is
/// running (not from inside a read-side critical section: it would never
/// end; not from a callback or with a lock a callback takes).
pub fn rcu_barrier() {
    assert!(!rcu_reading(), "rcu_barrier inside an RCU read-side critical section");
    rcu_grace_point();
    while RCU_N.load(Acquire) != 0 || RCU_INFLIGHT.load(Acquire) != 0 {
        yield_now();
    }
}

// ---- workqueue ----------------------------------------------------------------

const WQ_MAX: usize = 256;
static mut WQ: [Deferred; WQ_MAX] = [(None, 0); WQ_MAX];
static WQ_HEAD: AtomicUsize = AtomicUsize::new(0);
static WQ_TAIL: AtomicUsize = AtomicUsize::new(0);
/// Work items finished (the worker may run on another CPU: the head moves
/// before the item has run).
static WQ_DONE: AtomicUsize = AtomicUsize::new(0);
static WORKER: AtomicU32 = AtomicU32::new(0);
/// Serializes producers (queue_work) on several CPUs; the one worker
/// consumes without it.
static WQ_LOCK: guest_boot::smp::RecLock = guest_boot::smp::RecLock::new();

fn worker(_: usize) {
    loop {
        while WQ_HEAD.load(Acquire) != WQ_TAIL.load(Acquire) {
            let h = WQ_HEAD.load(Relaxed);
            // SAFETY: entry h was filled by queue_work (h < tail, published
            // by its Release store) and is copied out before the head moves
            // past it (only then may a producer reuse the slot).
            let (f, a) = unsafe { WQ[h % WQ_MAX] };
            WQ_HEAD.store(h + 1, Release);
            if let Some(f) = f {
                f(a);
            }
            WQ_DONE.fetch_add(1, Release);
        }
        yield_now();
    }
}

/// Queue `f(arg)` to run in the kworker task.
pub fn queue_work(f: fn(usize), arg: usize) -> bool {
    let _g = WQ_LOCK.lock();
    if WORKER.load(Relaxed) == 0 {
        WORKER.store(spawn("kworker/0:1", worker, 0), Relaxed);
    }
    let t = WQ_TAIL.load(Relaxed);
    if t - WQ_HEAD.load(Acquire) == WQ_MAX {
        return false;
    }
    // SAFETY: the slot t % WQ_MAX is free (fewer than WQ_MAX queued: the
    // worker moved the head past it); WQ_LOCK keeps other producers off.
    unsafe { WQ[t % WQ_MAX] = (Some(f), arg) };
    WQ_TAIL.store(t + 1, Release);
    true
}

/// Wait until every work item queued so far has run.
pub fn flush_workqueue() {
    let t = WQ_TAIL.load(Acquire);
    while WQ_DONE.load(Acquire) < t {
        yield_now();
    }
}

/// Switches to a task CPU `cpu` made.
pub fn switches(cpu: usize) -> usize {
    SWITCHES.get(cpu).map_or(0, |s| s.load(Relaxed))
}

/// Whether tasks run on every CPU ([`start_smp`]).
pub fn spread() -> bool {
    SPREAD.load(Relaxed)
}

pub fn print_tasks() {
    LOCK.lock();
    let tasks = s().tasks;
    LOCK.unlock();
    for t in tasks.iter().filter(|t| t.state != State::Free) {
        println!("task {}/{} {:?} stack {:#x}", t.name, t.pid, t.state, t.stack);
    }
}
