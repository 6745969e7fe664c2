//! x86_64 backend of hybrid-shadow: the shadow page-table mapper, boot-time
//! init from the memory map, and a frame-pointer stack walker.
//!
//! # Address layout (Linux's, 4-level paging)
//!
//! ```text
//!   0xffff888000000000  DIRECT_MAP_BASE   all RAM, phys + DIRECT_MAP_BASE
//!   0xffffc90000000000  VMALLOC_BASE      vmalloc areas
//!   0xffffea0000000000  VMEMMAP_BASE      per-page shadow (1 byte per frame)
//!   0xffffec0000000000  SHADOW_START  -+
//!          ...                         |  byte shadow, 16 TiB = 32 PML4 slots
//!   0xfffffc0000000000  SHADOW_END    -+  shadow(a) = (a >> 3) + SHADOW_OFFSET
//!   0xffffffff80000000  KERNEL_BASE       kernel image
//! ```
//!
//! # Shared tables
//!
//! For every [`SharedPage`](hybrid_shadow::mapper::SharedPage) kind the
//! mapper keeps one read-only data page and one table per level whose 512
//! entries all point at the level below, so one PML4 entry maps 512 GiB of
//! shadow with four pages:
//!
//! ```text
//!   PML4[472..504] --> PDPT_k --512x--> PD_k --512x--> PT_k --512x--> PAGE_k
//!      (kernel's)      shared           shared          shared      fill(k), RO
//!
//!   after map_private(s):          (copies of the shared tables)
//!   PML4[i] --> PDPT' --[j]--> PD' --[k]--> PT' --[l]--> private frame (RW)
//!                 \ 511x PD_k    \ 511x PT_k   \ 511x PAGE_k
//! ```
//!
//! Entries that point at shared tables or shared pages are present,
//! not writable, no-execute and carry the software bit 9; only entries of
//! private tables pointing at private tables or pages are writable. Shared
//! tables are therefore never written through a shadow address, and the
//! mapper itself never writes into them after building them.
//!
//! # Files
//!
//! * [`layout`]: the constants of the address layout and `mem_to_shadow`.
//! * [`frames`]: [`FrameSource`], where page-table and shadow frames come from.
//! * [`phys`]: [`PhysMem`], how the mapper reaches a physical frame.
//! * [`tlb`]: [`TlbFlush`], `invlpg` (kernel) or a recorder (tests).
//! * `entry`: page-table entry encoding and the four levels.
//! * `shared`: building the shared pages and tables.
//! * [`mapper`]: [`X86ShadowMapper`], the `ShadowMapper` implementation.
//! * [`early`]: the early zero shadow, mapped before the first inline check.
//! * [`init`]: boot-time helpers (memory map sizes, initial shadow mapping).
//! * [`stack`]: a bounded frame-pointer stack walker.
//! * [`kernel`]: a ready-made runtime and `GlobalAlloc` for a kernel that
//!   adopts the crate (see docs/adopting.md).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

#[cfg(test)]
extern crate std;

pub mod early;
mod entry;
pub mod frames;
pub mod init;
pub mod kernel;
pub mod layout;
pub mod mapper;
pub mod phys;
mod pins;
mod shared;
pub mod stack;
pub mod tlb;

#[cfg(test)]
mod testing;

pub use frames::FrameSource;
pub use layout::*;
pub use mapper::{Backing, Config, InitError, MapperStats, PrepareError, X86ShadowMapper};
pub use phys::{OffsetPhysMem, PhysMem};
pub use tlb::{LocalInvlpg, TlbFlush};
pub use x86_64::PhysAddr;
