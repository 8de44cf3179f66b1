//! The adapter's tests, built as one binary (`cargo test -p came-candle --test suite`): each
//! test file is a module here, so candle and the crate are compiled for them once. The
//! allocation test (`tests/alloc.rs`) stays a binary of its own: its counting allocator is
//! global.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod errors;
mod step;
