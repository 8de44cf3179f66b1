//! The integration tests, built as one binary: each test file is a module here, so the crate's
//! kernels are compiled for the tests once, not once per file (`cargo test --test suite`; a
//! module's tests alone with a filter, `cargo test --test suite -- golden::`).

mod support;

mod checkpoint;
mod cuda;
mod errors;
mod golden;
mod lanes;
mod lowp;
mod momentum;
mod multi;
// its counting allocator would wrap every allocation of the other tests; under Miri, which
// does not run it, that only slows the interpreter
#[cfg(not(miri))]
mod no_alloc;
mod optimizer;
mod precision;
mod properties;
mod shakespeare;
mod shard;
mod shard_edge;
mod threads;
