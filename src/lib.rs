//! hybrid-shadow: a kernel address sanitizer runtime with per-page shadow
//! and lazily mapped byte shadow.
//!
//! ```text
//!                       ┌──────────────── core (this crate, no_std) ────────────────┐
//!  compiler ABI ──────► │ abi ─► check ─► report          hooks ◄── kernel allocators│
//!  (__asan_load8 ...)   │          │                        │                        │
//!                       │      shadow byte at (addr>>3)+off │ runtime: per-page array,│
//!                       │                                   │ block backing, quarantine│
//!                       └───────────────────────────────────┼────────────────────────┘
//!                                 arch boundary: ShadowMapper (map shared / private, flush)
//!                                   arch/x86_64 (page tables)  |  host (mmap, tests)
//! ```
//!
//! Start with [`Kasan::new`], feed it the allocator events ([`hooks`]) and
//! check accesses with [`Kasan::check`] (or let the compiler do it through
//! the `abi` feature). `full` and `hybrid` modes give the same verdicts;
//! `hybrid` keeps byte shadow only under tracked memory.
#![no_std]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(feature = "std")]
extern crate std;

mod arena;
pub mod backing;
pub mod cache;
mod caller;
pub mod check;
pub mod config;
pub mod depot;
pub mod error;
pub mod heap;
pub mod hooks;
pub mod kmsan;
pub mod ksyms;
pub mod layout;
pub mod lock;
pub mod mapper;
pub mod page_state;
pub mod platform;
pub mod quarantine;
pub mod region;
pub mod report;
pub mod runtime;
pub mod shadow;
pub mod stats;

#[cfg(feature = "abi")]
pub mod abi;
#[cfg(feature = "host")]
pub mod host;

pub use cache::{CacheError, CacheId};
pub use config::{Config, FaultAction, MixedBlocks, Mode};
pub use error::{GlobalError, HookError, InitError, PageError, PoisonError, SlabError, VmallocError};
pub use hooks::{Freed, GlobalDesc, Ip, Released, Size};
pub use heap::HeapError;
pub use layout::{Layout, LayoutError, Region};
pub use region::{RegionError, RegionKind};
pub use mapper::{MapError, ShadowMapper, SharedPage};
pub use platform::{Platform, SlabRef, Symbol};
pub use report::{Bug, BugType};
pub use backing::Backing;
pub use runtime::Kasan;
pub use stats::StatsSnapshot;
