// The KASAN bug suite's case table: one row per case of Linux's generic
// KASAN KUnit suite (mm/kasan/kasan_test_c.c) that the guest runs, plus the
// cases that cross the hybrid design's transitions. Pure data (no_std): the
// guest runs the cases in this order and prints each row's expectation
// (tests/guest/src/kasan_suite.rs), and the host test checks every case's
// reports against the same rows (tests/guest_suite.rs `include!`s this
// file; tests/kasan_cases.rs takes the bug types of the cases the host
// model kernel runs from here too). What each case does: its function's
// doc in kasan_suite.rs and ../shared/kasan-cases.md; the rows below the
// "Linux's remaining generic cases" line say it here.

/// One case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The case function's name (and the function a report's title names).
    pub name: &'static str,
    /// The bug types its reports must have, in order, in `full` and
    /// `hybrid` (empty: no report).
    pub expect: &'static [&'static str],
}

pub const SOOB: &str = "slab-out-of-bounds";
pub const SUAF: &str = "slab-use-after-free";
pub const UAF: &str = "use-after-free";
pub const DFREE: &str = "double-free";
pub const IFREE: &str = "invalid-free";
pub const OOB: &str = "out-of-bounds";
pub const GOOB: &str = "global-out-of-bounds";
pub const STOOB: &str = "stack-out-of-bounds";
pub const AOOB: &str = "alloca-out-of-bounds";
pub const VOOB: &str = "vmalloc-out-of-bounds";

/// Every case, in the order the guest runs them.
pub const KASAN_CASES: &[Case] = &[
    Case { name: "kmalloc_oob_right", expect: &[SOOB, SOOB, SOOB] },
    Case { name: "kmalloc_oob_left", expect: &[SOOB] },
    Case { name: "kmalloc_node_oob_right", expect: &[SOOB] },
    Case { name: "kmalloc_big_oob_right", expect: &[SOOB] },
    Case { name: "kmalloc_large_oob_right", expect: &[SOOB] },
    Case { name: "kmalloc_large_uaf", expect: &[UAF] },
    Case { name: "kmalloc_large_invalid_free", expect: &[IFREE] },
    Case { name: "page_alloc_uaf", expect: &[UAF] },
    Case { name: "krealloc_more_oob", expect: &[SOOB] },
    Case { name: "krealloc_less_oob", expect: &[SOOB, SOOB] },
    Case { name: "krealloc_large_more_oob", expect: &[SOOB] },
    Case { name: "krealloc_large_less_oob", expect: &[SOOB] },
    Case { name: "krealloc_uaf", expect: &[SUAF] },
    Case { name: "kmalloc_oob_16", expect: &[SOOB] },
    Case { name: "kmalloc_uaf_16", expect: &[SUAF] },
    Case { name: "kmalloc_oob_in_memset", expect: &[SOOB] },
    Case { name: "kmalloc_oob_memset_2", expect: &[SOOB] },
    Case { name: "kmalloc_oob_memset_4", expect: &[SOOB] },
    Case { name: "kmalloc_oob_memset_8", expect: &[SOOB] },
    Case { name: "kmalloc_oob_memset_16", expect: &[SOOB] },
    Case { name: "kmalloc_memmove_negative_size", expect: &[OOB] },
    Case { name: "kmalloc_memmove_invalid_size", expect: &[SOOB] },
    Case { name: "kmalloc_uaf", expect: &[SUAF] },
    Case { name: "kmalloc_uaf_memset", expect: &[SUAF] },
    Case { name: "kmalloc_uaf2", expect: &[SUAF] },
    Case { name: "kmalloc_double_kzfree", expect: &[DFREE] },
    Case { name: "ksize_unpoisons_memory", expect: &[SOOB] },
    Case { name: "ksize_uaf", expect: &[SUAF, SUAF, SUAF] },
    Case { name: "kmem_cache_oob", expect: &[SOOB] },
    Case { name: "kmem_cache_double_free", expect: &[DFREE] },
    Case { name: "kmem_cache_invalid_free", expect: &[IFREE] },
    Case { name: "kmem_cache_double_destroy", expect: &[] },
    Case { name: "kmem_cache_bulk", expect: &[] },
    Case { name: "kfree_via_page", expect: &[] },
    Case { name: "kfree_via_phys", expect: &[] },
    Case { name: "kasan_global_oob_right", expect: &[GOOB] },
    Case { name: "kasan_global_oob_left", expect: &[GOOB] },
    Case { name: "kasan_stack_oob", expect: &[STOOB] },
    Case { name: "kasan_alloca_oob_left", expect: &[AOOB] },
    Case { name: "kasan_alloca_oob_right", expect: &[AOOB] },
    Case { name: "kasan_memchr", expect: &[SOOB] },
    Case { name: "kasan_memcmp", expect: &[SOOB] },
    Case { name: "kasan_strings", expect: &[SUAF, SUAF, SUAF, SUAF] },
    Case { name: "kasan_bitops_generic", expect: &[SOOB, SOOB] },
    Case { name: "kasan_atomics", expect: &[SOOB, SOOB] },
    Case { name: "vmalloc_oob", expect: &[VOOB, VOOB] },
    Case { name: "rcu_uaf", expect: &[SUAF] },
    Case { name: "workqueue_uaf", expect: &[SUAF] },
    Case { name: "stack_uaf_after_task_exit", expect: &[UAF] },
    Case { name: "page_uaf_in_mixed_block", expect: &[UAF] },
    Case { name: "slab_page_returned_uaf", expect: &[UAF, UAF] },
    Case { name: "slab_page_reused_as_page", expect: &[] },
    Case { name: "large_kmalloc_in_mixed_block", expect: &[UAF, SOOB, UAF] },
    Case { name: "vmalloc_uaf_shadow_returned", expect: &[VOOB, VOOB] },
    // Linux's remaining generic cases (kasan_test_c.c), with what each does:
    // kmalloc through kmalloc_track_caller and kmalloc_node_track_caller,
    // write just past each object.
    Case { name: "kmalloc_track_caller_oob_right", expect: &[SOOB, SOOB] },
    // SLAB_TYPESAFE_BY_RCU cache: read after kmem_cache_free inside an RCU
    // reader (fine, twice), then after the grace period (reported).
    Case { name: "kmem_cache_rcu_uaf", expect: &[SUAF] },
    // SLAB_ACCOUNT cache: five alloc/free rounds charged to the memcg.
    Case { name: "kmem_cache_accounted", expect: &[] },
    // A mempool keeps reserved elements poisoned (kasan_mempool_poison_*):
    // element of a kmalloc(115) / kmalloc(8193, page-backed) / 123-byte
    // cache pool, read just past it.
    Case { name: "mempool_kmalloc_oob_right", expect: &[SOOB] },
    Case { name: "mempool_kmalloc_large_oob_right", expect: &[SOOB] },
    Case { name: "mempool_slab_oob_right", expect: &[SOOB] },
    // Element returned to the pool (kept in reserve, poisoned), then read.
    Case { name: "mempool_kmalloc_uaf", expect: &[SUAF] },
    Case { name: "mempool_kmalloc_large_uaf", expect: &[UAF] },
    Case { name: "mempool_slab_uaf", expect: &[SUAF] },
    Case { name: "mempool_page_alloc_uaf", expect: &[UAF] },
    // Element returned to the pool twice.
    Case { name: "mempool_kmalloc_double_free", expect: &[DFREE] },
    Case { name: "mempool_kmalloc_large_double_free", expect: &[DFREE] },
    Case { name: "mempool_page_alloc_double_free", expect: &[DFREE] },
    // ptr + 1 returned to the pool.
    Case { name: "mempool_kmalloc_invalid_free", expect: &[IFREE] },
    Case { name: "mempool_kmalloc_large_invalid_free", expect: &[IFREE] },
    // copy_to_kernel_nofault of 128 bytes from, then to, a 120-byte object.
    Case { name: "copy_to_kernel_nofault_oob", expect: &[SOOB, SOOB] },
    // copy_from_user, copy_to_user, __copy_from_user, __copy_to_user, their
    // _inatomic variants and strncpy_from_user, one byte past a 120-byte
    // kmalloc object, over a user page the guest maps.
    Case { name: "copy_user_test_oob", expect: &[SOOB, SOOB, SOOB, SOOB, SOOB, SOOB, SOOB] },
    // Rust: read through a raw pointer after its Box was dropped.
    Case { name: "rust_uaf", expect: &[SUAF] },
];
