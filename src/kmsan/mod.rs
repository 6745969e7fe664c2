//! KMSAN: uninitialized-memory tracking on the same per-page + lazily
//! mapped machinery as KASAN.
//!
//! ```text
//!  compiler ABI (__msan_metadata_ptr_for_*, __msan_warning, ...)
//!        │                       kernel allocators ──► hooks
//!        ▼                                              │
//!  meta: shadow/origin pointers ◄── per-page byte ──────┘
//!        │   (shared page for untracked memory,   + per-page origin
//!        │    private where byte-tracked or partly initialized)
//!        ▼
//!  propagate (poison, unpoison, memcpy, check) ──► report (origin chains)
//! ```
//!
//! Metadata: one shadow byte per data byte (a set bit = uninitialized) and
//! one 4-byte origin per 4-byte slot, at fixed per-region offsets
//! ([`KmsanLayout`]). `full` maps a private shadow and origin page for every
//! RAM page at init (Linux's cost); `hybrid` keeps a byte and an origin per
//! page and maps private pages only under slab pages, stacks, vmalloc
//! areas, the image, and pages holding partly initialized data.

#[cfg(feature = "kmsan-abi")]
pub mod abi;
pub mod hooks;
pub mod layout;
pub mod meta;
pub mod origin;
pub mod propagate;
pub mod report;
pub mod runtime;
pub mod state;

pub use hooks::AllocInit;
pub use layout::{KmsanLayout, KmsanLayoutError, MetaRegion};
pub use meta::{Context, MetaPtrs};
pub use origin::Origin;
pub use runtime::{Kmsan, KmsanInitError};
pub use state::{MetaCensus, MetaPage};

#[cfg(all(test, feature = "host"))]
mod tests;
