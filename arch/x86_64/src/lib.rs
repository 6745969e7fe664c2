//! x86_64 backend of hybrid-shadow.
#![no_std]
