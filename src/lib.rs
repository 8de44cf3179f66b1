//! CAME, the Confidence-guided Adaptive Memory Efficient optimizer (Luo et al., ACL 2023,
//! [arXiv:2307.02047](https://arxiv.org/abs/2307.02047)), over caller-owned slices.
//!
//! CAME trains as well as Adam with the memory of Adafactor. For an `n x m` weight matrix it
//! keeps one full-size momentum plus row and column statistics of the squared gradient and of
//! the instability `(u - m)^2`: `nm + 2(n + m)` numbers instead of Adam's `2nm`. Tensors of
//! rank 2 or more are factored over their last two dims (the leading dims are a batch); vectors
//! and scalars keep an element-wise second moment and no confidence term, exactly like the authors'
//! implementation (came-pytorch 0.1.3), which this crate reproduces operation for operation.
//!
//! The crate is `no_std` and never allocates: parameters, gradients and state are slices the
//! trainer owns, shapes are explicit, and a step needs no memory beyond the state buffer.
//!
//! Parameters and gradients may be stored in `f32`, `f64`, `half::bf16` or `half::f16`
//! ([`Element`]; the 16-bit types are computed in `f32` and rounded to nearest as the reference
//! does, or stochastically, [`Rounding`]), and the momentum of large matrices in bf16 or
//! block-wise 8 bits ([`Momentum`], [`momentum`]).
//!
//! ```
//! use came::{CameConfig, CameState, Shape};
//!
//! const DIMS: [usize; 2] = [4, 3];
//! let shape = Shape::new(&DIMS)?;
//! let config = CameConfig::new(1e-2);
//!
//! let mut weights = [0.5f32; 12];
//! let mut state_buf = [0.0f32; came::state_len(&DIMS)];
//! let mut state = CameState::new(&mut state_buf);
//!
//! for _ in 0..10 {
//!     // gradient of 0.5 * |w|^2
//!     let grad = weights;
//!     came::step(&config, &shape, &mut weights, &grad, &mut state)?;
//! }
//! assert!(weights.iter().all(|&w| w < 0.5));
//! # Ok::<(), came::Error>(())
//! ```
//!
//! # Where things are
//! The update itself is `src/came/formula.rs`, which reads like Algorithm 1 of the paper;
//! `ARCHITECTURE.md` in the repository walks a step through the modules.
//!
//! # Features
//! No feature is on by default.
//! - `std`: hardware float maths through the standard library (without it, `libm`), `Pool`
//!   for multi-threaded steps, the `Optimizer` trait and the owned
//!   optimizers `Came` and `AdamW` with parameter groups, a non-finite gradient guard and
//!   safetensors checkpoints (module `optim`).
//! - `cuda` (implies `std`): `cuda::CudaCame`, the same update on NVIDIA GPUs through cudarc,
//!   kernels compiled at run time with NVRTC; nothing from CUDA is needed to build.
//!
//! The kernels use the CPU's vector instructions, picked at run time with or without `std`
//! (x86-64: AVX2 where the CPU has it, as every x86-64 CPU since 2013 does; AArch64: NEON).

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::pedantic)]
#![allow(
    clippy::cast_precision_loss,
    clippy::many_single_char_names,
    clippy::similar_names,
    clippy::module_name_repetitions,
    clippy::missing_errors_doc,
    clippy::must_use_candidate,
    clippy::inline_always,
    clippy::cast_possible_truncation
)]

#[cfg(feature = "std")]
extern crate std;

pub mod adamw;
mod came;
mod check;
mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
mod element;
mod error;
mod exec;
mod float;
mod layout;
pub mod momentum;
#[cfg(feature = "std")]
pub mod optim;
mod shape;
#[cfg(feature = "std")]
pub mod shard;
mod state;

pub use came::multi::{TensorStep, step_all};
pub use came::{StepInfo, step};
pub use check::check_gradient;
pub use config::{CameConfig, Instability, Rounding};
pub use element::round_stochastic;
pub use error::{Buffer, Error, TensorError};
#[cfg(feature = "std")]
pub use exec::pool::Pool;
pub use exec::simd::instruction_set;
pub use float::Element;
pub use float::Float;
pub use layout::{
    FACTORED_KEYS, Layout, Piece, PieceDims, PieceType, SCALE_KEY, StateLayout, VECTOR_KEYS,
};
pub use momentum::{Code8, Momentum};
#[cfg(feature = "std")]
pub use optim::{
    AdamW, Came, CheckpointError, CpuOptimizer, GroupId, Optimizer, OptimizerError, StepReport,
    TensorId,
};
pub use shape::{Shape, state_len};
pub use state::{CameState, StateParts};

/// The README's examples, compiled and run as doctests (they use the owned optimizer: `std`).
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
