//! The single place where the guest calls into the sanitizer runtime.
//! Every function here is a hook the runtime (hybrid-shadow) will get; for
//! now the bodies are empty (or the identity), to be wired later.
#![allow(unused_variables)]

use guest_boot::BootInfo;

/// Before anything allocates: the runtime sets up its shadow mapper
/// (PML4 slots 472..=503), reads `info.config` (kasan.shadow/fault/multi_shot).
pub fn early_init(info: &'static BootInfo) {
    // TODO(hybrid-shadow): runtime init from the memory map and config.
}

/// After `.init_array` ran (globals registered) and before the suites.
pub fn late_init(info: &'static BootInfo) {}
