//! Host backend: the same lazy shadow mapping inside a Linux process, so
//! host tests and benchmarks run the real single load at
//! `(addr >> 3) + HOST_OFFSET`.
//!
//! ```text
//!  process address space (one slot per runtime instance, 16 GiB apart)
//!  0x4000_0000_0000 + i*16G: [direct map | vmalloc | image]   data, RW, no reserve
//!  0x1800_0000_0000 + i*2G : shadow of the slot               reserved PROT_NONE,
//!                            then shared read-only memfd pages mapped many times
//!                            (0x00 / 0xFF / CONSULT / 0xF8) or private anonymous pages
//! ```
//!
//! [`mapper::HostMapper`] implements the arch boundary with `mmap`;
//! [`platform::HostPlatform`] captures reports and fakes symbols and stacks;
//! [`sim::SimKernel`] is a small model kernel (buddy pages, slab, kmalloc,
//! stacks, vmalloc, globals) that drives the hooks like a real one;
//! [`smp::SmpKernel`] is a model kernel for several threads at once (hooks
//! and checks racing); [`lockstep::Lockstep`] drives a `full` and a `hybrid` one with the same
//! operations against an oracle, and [`fuzz`] decodes those operations from
//! bytes (the fuzz target and its replay test).

pub mod fuzz;
pub mod kmsan;
pub mod lockstep;
pub mod mapper;
pub mod platform;
pub mod sim;
pub mod smp;
pub mod space;
