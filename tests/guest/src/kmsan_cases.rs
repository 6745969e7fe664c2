// The KMSAN bug suite's case table: one row per case of
// ../shared/kmsan-cases.md plus the cases that cross the hybrid design's
// transitions. Pure data (no_std): the guest runs the cases in this order
// (tests/guest/src/kmsan_suite.rs) and the host test checks each case's
// reports against the same rows (tests/guest_kmsan.rs `include!`s this file).

/// What one report of a case must say.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// `uninit-value` or `use-after-free`.
    pub kind: &'static str,
    /// The function in the title (`BUG: KMSAN: <kind> in <func>+0x..`).
    pub func: &'static str,
    /// How the origin chain ends: `Uninit was created at:` or
    /// `Local variable <name> created at:`.
    pub created: &'static str,
    /// A function the creation stack must name ("" = any).
    pub created_in: &'static str,
    /// Functions of the "Uninit was stored to memory at:" sections, in order.
    pub stored_in: &'static [&'static str],
    /// `Bytes a-b of n are uninitialized` (or `Byte a of n`), "" when the
    /// report is not about a checked range.
    pub bytes: &'static str,
    /// The chain was cut at the maximum depth (the report says so).
    pub cut: bool,
}

/// One case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The case function's name.
    pub name: &'static str,
    /// Its reports, in order (empty: no report).
    pub expect: &'static [Expect],
}

const UNINIT: &str = "uninit-value";
const UAF: &str = "use-after-free";
const CREATED: &str = "Uninit was created at:";

const fn report(kind: &'static str, func: &'static str, created: &'static str, created_in: &'static str) -> Expect {
    Expect { kind, func, created, created_in, stored_in: &[], bytes: "", cut: false }
}

/// Every case, in the order the guest runs them.
pub const KMSAN_CASES: &[Case] = &[
    Case { name: "test_uninit_kmalloc", expect: &[report(UNINIT, "test_uninit_kmalloc", CREATED, "test_uninit_kmalloc")] },
    Case { name: "test_init_kmalloc", expect: &[] },
    Case { name: "test_init_kzalloc", expect: &[] },
    Case {
        name: "test_uninit_stack_var",
        expect: &[report(UNINIT, "test_uninit_stack_var", "Local variable cond created at:", "test_uninit_stack_var")],
    },
    Case { name: "test_init_stack_var", expect: &[] },
    // Eager parameter checks: the use is the call that passes the value.
    Case { name: "test_params", expect: &[report(UNINIT, "test_params", "Local variable value created at:", "test_params")] },
    Case {
        name: "test_uninit_multiple_params",
        // The sum is spilled to the stack before its use: one link.
        expect: &[Expect {
            kind: UNINIT,
            func: "test_uninit_multiple_params",
            created: "Local variable c created at:",
            created_in: "test_uninit_multiple_params",
            stored_in: &["test_uninit_multiple_params"],
            bytes: "",
            cut: false,
        }],
    },
    Case {
        name: "test_uninit_kmsan_check_memory",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_uninit_kmsan_check_memory",
            created: "Local variable uninit created at:",
            created_in: "do_uninit_local_array",
            stored_in: &["do_uninit_local_array"],
            bytes: "Bytes 5-7 of 8 are uninitialized",
            cut: false,
        }],
    },
    Case { name: "test_init_kmsan_vmap_vunmap", expect: &[] },
    Case { name: "test_init_vmalloc", expect: &[] },
    Case { name: "test_uninit_page", expect: &[report(UNINIT, "test_uninit_page", CREATED, "test_uninit_page")] },
    Case { name: "test_uaf", expect: &[report(UAF, "test_uaf", CREATED, "test_uaf")] },
    Case { name: "test_uaf_pages", expect: &[report(UAF, "test_uaf_pages", CREATED, "test_uaf_pages")] },
    Case { name: "test_uaf_high_order_pages", expect: &[report(UAF, "test_uaf_high_order_pages", CREATED, "test_uaf_high_order_pages")] },
    Case {
        name: "test_percpu_propagate",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_percpu_propagate",
            created: "Local variable uninit created at:",
            created_in: "test_percpu_propagate",
            stored_in: &["test_percpu_propagate"],
            bytes: "",
            cut: false,
        }],
    },
    Case { name: "test_printk", expect: &[report(UNINIT, "test_printk", "Local variable uninit created at:", "test_printk")] },
    Case { name: "test_init_memcpy", expect: &[] },
    Case {
        name: "test_memcpy_aligned_to_aligned",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_memcpy_aligned_to_aligned",
            created: "Local variable uninit_src created at:",
            created_in: "test_memcpy_aligned_to_aligned",
            stored_in: &["memcpy_noinline"],
            bytes: "Bytes 0-3 of 4 are uninitialized",
            cut: false,
        }],
    },
    Case {
        name: "test_memcpy_aligned_to_unaligned",
        expect: &[
            Expect {
                kind: UNINIT,
                func: "test_memcpy_aligned_to_unaligned",
                created: "Local variable uninit_src created at:",
                created_in: "test_memcpy_aligned_to_unaligned",
                stored_in: &["memcpy_noinline"],
                bytes: "Bytes 1-3 of 4 are uninitialized",
                cut: false,
            },
            Expect {
                kind: UNINIT,
                func: "test_memcpy_aligned_to_unaligned",
                created: "Local variable uninit_src created at:",
                created_in: "test_memcpy_aligned_to_unaligned",
                stored_in: &["memcpy_noinline"],
                bytes: "Byte 0 of 4 is uninitialized",
                cut: false,
            },
        ],
    },
    Case {
        name: "test_memcpy_initialized_gap",
        expect: &[
            Expect {
                kind: UNINIT,
                func: "test_memcpy_initialized_gap",
                created: "Local variable uninit_src created at:",
                created_in: "test_memcpy_initialized_gap",
                stored_in: &["memcpy_noinline"],
                bytes: "Bytes 0-1 of 4 are uninitialized",
                cut: false,
            },
            Expect {
                kind: UNINIT,
                func: "test_memcpy_initialized_gap",
                created: "Local variable uninit_src created at:",
                created_in: "test_memcpy_initialized_gap",
                stored_in: &["memcpy_noinline"],
                bytes: "Bytes 2-3 of 4 are uninitialized",
                cut: false,
            },
        ],
    },
    Case { name: "test_memset16", expect: &[] },
    Case { name: "test_memset32", expect: &[] },
    Case { name: "test_memset64", expect: &[] },
    Case { name: "test_memset_on_guarded_buffer", expect: &[] },
    Case {
        name: "test_long_origin_chain",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_long_origin_chain",
            created: CREATED,
            created_in: "test_long_origin_chain",
            stored_in: &["chain_store", "chain_store", "chain_store", "chain_store", "chain_store", "chain_store", "chain_store"],
            bytes: "Bytes 0-3 of 4 are uninitialized",
            cut: true,
        }],
    },
    Case { name: "test_stackdepot_roundtrip", expect: &[] },
    Case {
        name: "test_unpoison_memory",
        expect: &[
            Expect {
                kind: UNINIT,
                func: "test_unpoison_memory",
                created: "Local variable a created at:",
                created_in: "test_unpoison_memory",
                stored_in: &[],
                bytes: "Bytes 0-2 of 3 are uninitialized",
                cut: false,
            },
            Expect {
                kind: UNINIT,
                func: "test_unpoison_memory",
                created: "Local variable b created at:",
                created_in: "test_unpoison_memory",
                stored_in: &[],
                bytes: "Bytes 0-2 of 3 are uninitialized",
                cut: false,
            },
        ],
    },
    Case {
        name: "test_copy_from_kernel_nofault",
        expect: &[Expect {
            kind: UNINIT,
            func: "copy_from_kernel_nofault",
            created: "Local variable src created at:",
            created_in: "test_copy_from_kernel_nofault",
            stored_in: &[],
            bytes: "Bytes 0-3 of 4 are uninitialized",
            cut: false,
        }],
    },
    // The hybrid design's transitions.
    Case {
        name: "test_uninit_slab_to_pagecache",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_uninit_slab_to_pagecache",
            created: CREATED,
            created_in: "test_uninit_slab_to_pagecache",
            stored_in: &["memcpy_noinline"],
            bytes: "Bytes 32-63 of 64 are uninitialized",
            cut: false,
        }],
    },
    Case {
        name: "test_uninit_page_partial_write",
        expect: &[Expect {
            kind: UNINIT,
            func: "test_uninit_page_partial_write",
            created: CREATED,
            created_in: "test_uninit_page_partial_write",
            stored_in: &[],
            bytes: "Bytes 0-3 of 8 are uninitialized",
            cut: false,
        }],
    },
    Case { name: "test_init_page_dma", expect: &[] },
    Case { name: "test_slab_page_reuse", expect: &[report(UNINIT, "test_slab_page_reuse", CREATED, "test_slab_page_reuse")] },
    Case { name: "test_uninit_page_origin", expect: &[report(UNINIT, "test_uninit_page_origin", CREATED, "test_uninit_page_origin")] },
];
