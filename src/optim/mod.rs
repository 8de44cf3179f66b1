//! Owned optimizers for trainers (feature `std`): many named tensors in parameter groups, their
//! state, threads, schedules, checkpoints and a non-finite gradient guard, behind one
//! [`Optimizer`] trait that CAME and AdamW on the CPU ([`Came`], [`AdamW`]) and CAME on the GPU
//! (`cuda::CudaCame`) implement, so a trainer is written once for all of them.
//!
//! - `registry.rs`: groups and registered tensors, shared by the CPU and GPU optimizers;
//! - `cpu.rs`: [`CpuOptimizer`], the state of every tensor in host memory;
//! - `rule.rs`: what an update rule (CAME, AdamW) gives the optimizer;
//! - `checkpoint/`: safetensors files in the reference's layout.

mod checkpoint;
mod cpu;
mod error;
pub(crate) mod registry;
mod rule;

use std::path::Path;

pub use checkpoint::CheckpointError;
pub(crate) use checkpoint::{encode, open, values, write_atomic};
pub use cpu::{AdamW, Came, CpuOptimizer, StatePiece};
pub use error::{Mismatch, OptimizerError};
pub(crate) use rule::sealed::RuleImpl;
pub use rule::{Rule, Steps};

/// A parameter group: its position in [`Optimizer::groups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

/// A registered tensor: its position in registration order, which is the order
/// [`Optimizer::step`] takes parameters and gradients in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub usize);

/// What [`Optimizer::tensor`] reports of a registered tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The name it was registered under.
    pub name: &'a str,
    /// Its dims.
    pub dims: &'a [usize],
    /// Its parameter group.
    pub group: GroupId,
    /// Steps it has taken.
    pub step: u64,
}

/// What a successful [`Optimizer::step`] measured (nothing is allocated for it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Tensors that took the step.
    pub stepped: usize,
    /// The largest root mean square of a tensor's update before clipping (CAME, line 9 of
    /// Algorithm 1); `None` for AdamW, which does not clip, and for a step of no tensor.
    pub max_update_rms: Option<f64>,
    /// Tensors whose update was clipped (scaled down to its group's `clip_threshold`).
    pub clipped: usize,
}

impl StepReport {
    /// Counts one stepped tensor, with its update's RMS and whether it was clipped where the
    /// rule measures them.
    pub(crate) fn add(&mut self, measured: Option<(f64, bool)>) {
        self.stepped += 1;
        if let Some((rms, clipped)) = measured {
            self.max_update_rms = Some(self.max_update_rms.map_or(rms, |m| m.max(rms)));
            self.clipped += usize::from(clipped);
        }
    }
}

/// An optimizer that owns the state of registered tensors and steps the trainer's parameters
/// with their gradients: the interface a trainer is written against, whatever the rule (CAME,
/// AdamW) and wherever the state lives (host or GPU memory).
///
/// Tensors are registered by name and dims, each in a parameter group whose config (learning
/// rate, weight decay, betas, ...) applies to it; [`Optimizer::step`] takes `(param, grad)`
/// pairs in registration order.
///
/// ```
/// use came::optim::{Optimizer, StepReport};
/// use came::{AdamW, Came, CameConfig, adamw::AdamWConfig};
///
/// /// A trainer written once for every optimizer whose parameters are host slices.
/// fn train<O: Optimizer<Param = [f32], Grad = [f32]>>(opt: &mut O) -> Result<f32, O::Error> {
///     let mut w = vec![0.5f32; 12];
///     opt.register("w", &[4, 3])?;
///     for step in 0..10 {
///         opt.set_learning_rate(1e-2 * (1.0 - step as f64 / 10.0).max(0.1))?; // a schedule
///         let grad = w.clone(); // gradient of 0.5 |w|^2
///         opt.step(&mut [(&mut w, &grad)])?;
///     }
///     Ok(w[0])
/// }
///
/// let came_w = train(&mut Came::<f32>::new(CameConfig::new(1e-2))?)?;
/// let adamw_w = train(&mut AdamW::<f32>::new(AdamWConfig::new(1e-2))?)?;
/// assert!(came_w < 0.5 && adamw_w < 0.5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Optimizer {
    /// A parameter group's hyperparameters (`CameConfig`, `AdamWConfig`).
    type Config;
    /// Where a parameter lives: `[T]` on the host, a device buffer on a GPU.
    type Param: ?Sized;
    /// Where a gradient lives.
    type Grad: ?Sized;
    /// What a call can fail with.
    type Error: std::error::Error + Send + Sync + 'static;
    /// What saving or loading a checkpoint can fail with.
    type CheckpointError: std::error::Error + Send + Sync + 'static;

    /// Adds a parameter group.
    ///
    /// # Errors
    /// An invalid config.
    fn add_group(&mut self, config: Self::Config) -> Result<GroupId, Self::Error>;

    /// The groups' configs, by [`GroupId`].
    fn groups(&self) -> &[Self::Config];

    /// Registers a tensor in a group, with a fresh state.
    ///
    /// # Errors
    /// An unknown group, a name registered already, a shape too large.
    fn register_in(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, Self::Error>;

    /// Registers a tensor in group 0, with a fresh state.
    ///
    /// # Errors
    /// As [`Optimizer::register_in`].
    fn register(&mut self, name: &str, dims: &[usize]) -> Result<TensorId, Self::Error> {
        self.register_in(GroupId(0), name, dims)
    }

    /// Number of registered tensors.
    fn len(&self) -> usize;

    /// Whether no tensor is registered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A registered tensor's name, dims, group and step count.
    fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>>;

    /// Group 0's learning rate.
    fn learning_rate(&self) -> f64;

    /// Sets every group's learning rate (and base learning rate, see
    /// [`Optimizer::scale_learning_rate`]), e.g. from a schedule before each step.
    ///
    /// # Errors
    /// An lr that is not finite and > 0; nothing is changed.
    fn set_learning_rate(&mut self, lr: f64) -> Result<(), Self::Error>;

    /// Sets one group's learning rate.
    ///
    /// # Errors
    /// An unknown group, or an lr that is not finite and > 0.
    fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), Self::Error>;

    /// Sets every group's learning rate to its base learning rate times `factor`: a schedule
    /// over groups of different learning rates in one call, as PyTorch's schedulers scale each
    /// group's `initial_lr`. A group's base learning rate is the lr it was added with, or the
    /// last one set with [`Optimizer::set_learning_rate`] or [`Optimizer::set_group_lr`];
    /// checkpoints keep it (`initial_lr` in the group's config, where it differs from `lr`).
    ///
    /// # Errors
    /// A factor that is not finite and > 0, or a product that is not a valid lr; nothing is
    /// changed.
    fn scale_learning_rate(&mut self, factor: f64) -> Result<(), Self::Error>;

    /// Steps a registered tensor has taken (its own count: a tensor left out of a step by
    /// [`Optimizer::step_some`] does not count it).
    fn step_count(&self, id: TensorId) -> Option<u64> {
        self.tensor(id).map(|t| t.step)
    }

    /// Steps every registered tensor, given `(param, grad)` for each in registration order.
    ///
    /// # Errors
    /// A wrong number of pairs or a wrong length (nothing changed), or a tensor whose step
    /// failed: a non-finite gradient, an overflow, a corrupt state. With the non-finite guard
    /// (on by default) nothing at all is changed by those either.
    fn step(
        &mut self,
        tensors: &mut [(&mut Self::Param, &Self::Grad)],
    ) -> Result<StepReport, Self::Error>;

    /// Steps the registered tensors that have a gradient, given `(param, Some(grad))` or
    /// `(param, None)` for each in registration order. A tensor without a gradient (a frozen
    /// layer, a branch unused in this step: PyTorch's `p.grad is None`) is left out as every
    /// PyTorch optimizer leaves it out: its parameters, state and step count stay as they are
    /// (no weight decay either), and its own step count (and so AdamW's bias correction)
    /// continues from there when it gets gradients again. The non-finite guard covers the
    /// tensors that are stepped.
    ///
    /// # Errors
    /// As [`Optimizer::step`].
    fn step_some(
        &mut self,
        tensors: &mut [(&mut Self::Param, Option<&Self::Grad>)],
    ) -> Result<StepReport, Self::Error>;

    /// Bytes of optimizer state held for all tensors (scratch space included).
    fn state_bytes(&self) -> usize;

    /// Saves every tensor's state, the step counts and the groups' configs to a safetensors
    /// file, atomically. `path` is a `&Path` so that the trait stays usable as a trait object:
    /// pass `Path::new("opt.safetensors")` or a `&PathBuf`.
    ///
    /// # Errors
    /// The file cannot be written (the previous file is then untouched).
    fn save(&self, path: &Path) -> Result<(), Self::CheckpointError>;

    /// Loads a checkpoint written by [`Optimizer::save`] (or converted from PyTorch) into the
    /// registered tensors, which must match the file's. Every group's config (learning rate,
    /// betas, weight decay, ...) is replaced by the file's, as PyTorch's `load_state_dict`
    /// does; set a different lr after loading if the run should change it.
    ///
    /// # Errors
    /// A missing, corrupt or mismatching file; then nothing is changed.
    fn load(&mut self, path: &Path) -> Result<(), Self::CheckpointError>;
}
