//! CAME (Luo et al., ACL 2023, [arXiv:2307.02047](https://arxiv.org/abs/2307.02047)) for
//! [candle](https://github.com/huggingface/candle): [`Came`] implements
//! [`candle_nn::Optimizer`] and steps `Var`s in place, on their own buffers, with the kernels of
//! the [`came`] crate. It is a one-line swap for `candle_nn::AdamW`:
//!
//! ```
//! use candle::{DType, Device, Tensor};
//! use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
//! use came_candle::{Came, ParamsCame};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = candle_nn::linear(8, 1, vb.pp("fc"))?;
//! // let mut opt = candle_nn::AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-2, ..Default::default() })?;
//! let mut opt = Came::new(varmap.all_vars(), ParamsCame { lr: 1e-2, ..Default::default() })?;
//!
//! let x = Tensor::randn(0f32, 1.0, (16, 8), &Device::Cpu)?;
//! let first = model.forward(&x)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
//! for _ in 0..20 {
//!     let loss = model.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?;
//! }
//! let last = model.forward(&x)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
//! assert!(last < first);
//! # Ok::<(), candle::Error>(())
//! ```
//!
//! CAME trains like Adam with the memory of Adafactor: for an `n x m` weight it keeps one
//! momentum of the weight's size and row and column statistics (`nm + 2(n + m)` numbers where
//! AdamW keeps `2nm`). Where candle's `AdamW` builds several new tensors of each var's size per
//! step, a step here allocates nothing of that size: the core crate's sweeps read each
//! gradient and write each var where candle keeps them.
//!
//! - [`Came`]: the optimizer (groups, learning rates, the non-finite guard, threads,
//!   checkpoints in the core crate's safetensors format);
//! - [`ParamsCame`]: the hyperparameters, `Default` the reference's;
//! - [`ParamGroup`], [`named_vars`]: parameter groups, such as no weight decay for biases and
//!   norms;
//! - [`Error`]: what went wrong, and with which var.
//!
//! Vars are F32, F64, BF16 or F16 on the CPU (BF16 and F16 computed in `f32`, rounded back to
//! nearest or stochastically). CUDA vars are not stepped by this version (see the README).

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::pedantic)]
#![allow(clippy::module_name_repetitions)]

mod error;
mod optimizer;
mod params;
mod storage;

pub use came::{GroupId, Instability, Momentum, Rounding, StepReport};
pub use error::Error;
pub use optimizer::Came;
pub use params::{ParamGroup, ParamsCame, named_vars};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
