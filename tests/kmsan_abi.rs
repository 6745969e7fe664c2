//! KMSAN's compiler ABI on the host: the `__msan_*` entry points routed to
//! a hybrid runtime, as an instrumented kernel calls them, including an
//! interrupt that arrives between a store's metadata call and its write.
//! One process, one installed runtime (the ABI is global): one test.

use hybrid_shadow::kmsan::AllocInit;
use hybrid_shadow::host::kmsan::KmsanHost;
use hybrid_shadow::kmsan::abi::{self, IRQ_LEVELS};
use hybrid_shadow::kmsan::origin;
use hybrid_shadow::kmsan::MetaPtrs;
use hybrid_shadow::Mode;

/// What the compiler's code does for a store: ask, then write the shadow
/// and, for an uninitialized value, the origin of every slot.
///
/// # Safety
/// `p` must come from a store metadata call for `shadow.len()` bytes.
unsafe fn write(p: MetaPtrs, shadow: &[u8], o: u32) {
    // SAFETY: the runtime handed out writable metadata for the store.
    unsafe {
        core::ptr::copy_nonoverlapping(shadow.as_ptr(), p.shadow, shadow.len());
        if shadow.iter().any(|&b| b != 0) {
            for k in 0..shadow.len().div_ceil(4) {
                p.origin.add(k).write(o);
            }
        }
    }
}

/// Shadow and origin of an 8-byte load through the ABI.
fn load8(addr: usize) -> ([u8; 8], u32) {
    let p = abi::__msan_metadata_ptr_for_load_8(addr);
    // SAFETY: the runtime handed out readable metadata for 8 bytes.
    unsafe { (p.shadow.cast::<[u8; 8]>().read(), p.origin.read()) }
}

#[test]
fn an_interrupt_between_a_store_and_its_write_loses_nothing() {
    let h: &'static mut KmsanHost = Box::leak(Box::new(KmsanHost::new(Mode::Hybrid, 4 << 20, 4 << 20, 64 << 10).unwrap()));
    let (task_page, irq_page) = (h.ram() + 8 * 4096, h.ram() + 9 * 4096);
    h.kmsan.page_alloc(task_page, 0, AllocInit::Zeroed).unwrap();
    h.kmsan.page_alloc(irq_page, 0, AllocInit::Zeroed).unwrap();
    abi::install(&h.kmsan);
    let (to, io) = (origin::make(7, 0, false), origin::make(9, 0, false));

    // The task asks where to put the metadata of an 8-byte store into an
    // initialized page (the sink: the page has no private shadow)...
    let p = abi::__msan_metadata_ptr_for_store_8(task_page + 16);
    // ...and an interrupt arrives before it writes them.
    abi::interrupt_enter();
    let q = abi::__msan_metadata_ptr_for_store_8(irq_page + 32);
    // SAFETY: `q` is the metadata of that 8-byte store.
    unsafe { write(q, &[0xFF; 8], io) };
    assert_eq!(load8(irq_page + 32), ([0xFF; 8], io), "the handler's own store settles at its next call");
    abi::interrupt_exit();
    // SAFETY: `p` is still the task's sink: the handler used its own.
    unsafe { write(p, &[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], to) };
    assert_eq!(load8(task_page + 16), ([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], to), "the task's store landed");
    assert_eq!(load8(irq_page + 32), ([0xFF; 8], io));
    assert_eq!(load8(task_page + 8), ([0; 8], origin::NO_ORIGIN));

    // Nesting deeper than the per-level contexts runs untracked, and
    // tracking resumes when it unwinds.
    for _ in 0..IRQ_LEVELS + 2 {
        abi::interrupt_enter();
    }
    let d = abi::__msan_metadata_ptr_for_store_8(irq_page + 64);
    // SAFETY: the dummy page takes any write of the store's size.
    unsafe { write(d, &[0xFF; 8], io) };
    assert_eq!(load8(irq_page + 64), ([0; 8], 0), "untracked: reads as initialized");
    for _ in 0..IRQ_LEVELS + 2 {
        abi::interrupt_exit();
    }
    assert_eq!(load8(irq_page + 64), ([0; 8], origin::NO_ORIGIN), "the untracked store went nowhere");
    let r = abi::__msan_metadata_ptr_for_store_8(irq_page + 72);
    // SAFETY: `r` is the metadata of that 8-byte store.
    unsafe { write(r, &[0xFF; 8], io) };
    assert_eq!(load8(irq_page + 72), ([0xFF; 8], io), "tracked again at task level");
    // An unmatched exit is ignored.
    abi::interrupt_exit();
    assert_eq!(load8(task_page + 16).1, to);
}
