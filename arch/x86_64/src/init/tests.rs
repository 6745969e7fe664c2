//! init tests
