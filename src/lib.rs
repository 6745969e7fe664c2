//! hybrid-shadow: a kernel address sanitizer runtime with per-page shadow and
//! lazily mapped byte shadow.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod mapper;
pub mod shadow;
