//! CAME on NVIDIA GPUs, through cudarc (feature `cuda`).
//!
//! [`CudaCame`] steps tensors that live in device memory ([`CudaSlice`]s the trainer owns):
//! the same update, in the same order of operations, as the CPU kernels. The kernels
//! (`came.cu`, beside this file) are compiled once per process with NVRTC for the device's
//! architecture; a step over any number of tensors is a dozen launches (tile and chunk tasks of
//! every tensor packed into device-side task lists, like PyTorch's `multi_tensor_apply`), with
//! deterministic reductions (no floating-point atomics) and the non-finite guard evaluated on
//! the device: one small read of per-tensor statuses after the step, no round trip per tensor.
//!
//! libcuda and libnvrtc are loaded at run time: building needs no CUDA, and without a driver or
//! a GPU [`CudaCame::new`] returns [`CudaError::NoCuda`] or [`CudaError::NoDevice`] instead of
//! cudarc's panic.
//!
//! ```no_run
//! use came::cuda::CudaCame;
//! use came::{CameConfig, Optimizer};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // NoCuda / NoDevice without a driver or a GPU
//!     let mut opt = CudaCame::<f32>::new(0, CameConfig::new(1e-3))?;
//!     opt.register("w", &[4096, 4096])?;
//!     let s = opt.stream().clone();
//!     let mut w = s.clone_htod(&vec![0.01f32; 4096 * 4096])?;
//!     let g = s.clone_htod(&vec![0.001f32; 4096 * 4096])?;
//!     opt.step(&mut [(&mut w, &g)])?;
//!     // the same checkpoint files as the CPU optimizer
//!     opt.save(std::path::Path::new("came.safetensors"))?;
//!     Ok(())
//! }
//! ```
//!
//! The layers, one file each: `error.rs` ([`CudaError`]), `compile.rs` (NVRTC and the loaded
//! kernels), `abi.rs` (the `#[repr(C)]` structs `came.cu` reads), `plan.rs` (where each
//! tensor's state and scratch space go, and the task lists), `launch.rs` (the device buffers and
//! the launches of a step), and this file, the optimizer.
#![allow(unsafe_code)]

mod abi;
mod compile;
mod error;
mod launch;
mod plan;

use std::path::Path;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

pub use abi::CudaFloat;
pub use compile::compile_kernels;
pub use error::CudaError;

use abi::{GroupDesc, STATUS_GRAD, STATUS_SKIP, STATUS_STATE, group_desc};
use compile::{Kernels, driver_present, nvrtc_present};
use launch::{Slab, launch_prepare, launch_update};
use plan::Plan;

use crate::optim::registry::Registry;
use crate::optim::{GroupId, Optimizer, OptimizerError, StepReport, TensorId, TensorInfo};
use crate::{Came, CameConfig, Error};

/// CAME on a GPU: owns the state of registered tensors in device memory; steps parameters and
/// gradients the trainer keeps on the device. It implements the crate's [`Optimizer`] trait
/// with `Param = Grad = CudaSlice<T>`.
///
/// Registration, groups and learning rates work as on [`Came`]; the state moves to and from a
/// [`Came`] ([`CudaCame::to_cpu`], [`CudaCame::load_from_cpu`]), so checkpoints are the same
/// safetensors files.
pub struct CudaCame<T: CudaFloat> {
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    registry: Registry<CameConfig>,
    /// Per registered tensor, its position in the device tensor table (`None`: empty).
    device: Vec<Option<usize>>,
    slab: Option<Slab<T>>,
}

impl<T: CudaFloat> core::fmt::Debug for CudaCame<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaCame")
            .field("device", &self.ctx.ordinal())
            .field("groups", &self.registry.groups())
            .field("tensors", &self.registry.tensors().len())
            .finish_non_exhaustive()
    }
}

/// What became of a step on the device.
struct Outcome {
    /// The guard refused the step: nothing changed.
    refused: bool,
    /// Per registered tensor, whether it took its step.
    stepped: Vec<bool>,
    /// Per registered tensor, the update's RMS before clipping.
    rms: Vec<Option<f64>>,
    /// The first failing tensor and why.
    first_error: Option<(usize, Error)>,
}

/// A config the kernels can run.
fn check_config(config: &CameConfig) -> Result<(), CudaError> {
    config
        .validate()
        .map_err(|e| CudaError::Optimizer(OptimizerError::Config(e)))?;
    if !config.confidence {
        return Err(CudaError::Unsupported(
            "confidence = false (the Adafactor baseline) runs on the CPU only",
        ));
    }
    if config.instability != crate::Instability::Reference {
        return Err(CudaError::Unsupported(
            "a corrected start of the instability statistics runs on the CPU only",
        ));
    }
    Ok(())
}

impl<T: CudaFloat> CudaCame<T> {
    /// An optimizer on GPU `ordinal` with one group of `config`; compiles the kernels (once per
    /// process).
    ///
    /// # Errors
    /// [`CudaError::NoCuda`], [`CudaError::NoDevice`], [`CudaError::Compile`],
    /// [`CudaError::Driver`], [`CudaError::Optimizer`] for an invalid config, or
    /// [`CudaError::Unsupported`] for `confidence = false`.
    pub fn new(ordinal: usize, config: CameConfig) -> Result<Self, CudaError> {
        check_config(&config)?;
        if !driver_present() {
            return Err(CudaError::NoCuda(
                "libcuda cannot be loaded (no NVIDIA driver?)",
            ));
        }
        if !nvrtc_present() {
            return Err(CudaError::NoCuda(
                "libnvrtc cannot be loaded (CUDA lib64 not on the library path?)",
            ));
        }
        let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let kernels = Kernels::load::<T>(&ctx)?;
        Ok(Self {
            stream,
            ctx,
            kernels,
            registry: Registry::new(config)?,
            device: Vec::new(),
            slab: None,
        })
    }

    /// The stream steps run on; give the optimizer buffers allocated on it (or synchronise).
    #[must_use]
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes of device memory held for state and scratch space.
    #[must_use]
    pub fn device_bytes(&self) -> usize {
        self.slab.as_ref().map_or(0, |l| {
            (l.state.len() + l.work.len()) * size_of::<T>() + l.norm_parts.len() * 8
        })
    }

    /// The state as a CPU optimizer (same tensors, groups, steps): save it as a checkpoint.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn to_cpu(&self) -> Result<Came<T>, CudaError> {
        let state = match &self.slab {
            Some(slab) => self.stream.clone_dtoh(&slab.state)?,
            None => Vec::new(),
        };
        let named = self
            .registry
            .tensors()
            .iter()
            .zip(&self.device)
            .map(|(t, d)| {
                let start = d.and_then(|d| self.slab.as_ref().map(|s| s.descs[d].m));
                let start = start.and_then(|m| usize::try_from(m).ok());
                start.map(|s| &state[s..s + t.state.named_len()])
            });
        Ok(Came::from_registry(self.registry.clone(), named))
    }

    /// Replaces the state (and group configs, step counts) with a CPU optimizer's, e.g. one
    /// just loaded from a checkpoint. The tensors must be registered alike.
    ///
    /// # Errors
    /// [`OptimizerError::Mismatch`] (as [`CudaError::Optimizer`]) naming the first tensor (or
    /// count) that differs, with both sides; [`CudaError::Unsupported`] when a group has
    /// `confidence = false`; [`CudaError::Driver`]. On error nothing is changed.
    pub fn load_from_cpu(&mut self, cpu: &Came<T>) -> Result<(), CudaError> {
        for config in cpu.groups() {
            check_config(config)?;
        }
        self.registry.compare(cpu.registry())?;
        if self.slab.is_none() {
            self.build_slab()?;
        }
        self.upload_state(cpu)?;
        self.registry = cpu.registry().clone();
        Ok(())
    }

    /// Copies every tensor's state and step count from `cpu`, whose first tensors are this
    /// optimizer's (it may have fewer).
    fn upload_state(&mut self, cpu: &Came<T>) -> Result<(), CudaError> {
        let steps = cpu.registry().tensors().iter().map(|t| t.step);
        for (t, step) in self.registry.tensors_mut().iter_mut().zip(steps) {
            t.step = step;
        }
        let Some(slab) = &mut self.slab else {
            return Ok(());
        };
        let mut state = self.stream.clone_dtoh(&slab.state)?;
        let tensors = self.registry.tensors().iter().zip(&self.device);
        for (i, (t, d)) in tensors.enumerate().take(cpu.registry().tensors().len()) {
            let Some(d) = d else { continue };
            let start = usize::try_from(slab.descs[*d].m).unwrap_or(0);
            let len = t.state.named_len();
            state[start..start + len].copy_from_slice(&cpu.state_buffer(i)[..len]);
        }
        self.stream.memcpy_htod(&state, &mut slab.state)?;
        Ok(())
    }

    /// Lays out state, scratch space and task lists for the registered tensors.
    fn build_slab(&mut self) -> Result<(), CudaError> {
        let mut plan = Plan::default();
        self.device = self
            .registry
            .tensors()
            .iter()
            .map(|t| plan.add(&t.shape, t.group))
            .collect();
        self.slab = Some(Slab::build(&self.stream, plan)?);
        Ok(())
    }

    /// Launches one step of the tensors that have a gradient and reads what became of it.
    fn launch_step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<T>, Option<&CudaSlice<T>>)],
    ) -> Result<Outcome, CudaError> {
        let stream = self.stream.clone();
        let count = self.registry.tensors().len();
        let mut outcome = Outcome {
            refused: false,
            stepped: vec![true; count],
            rms: vec![Some(0.0); count],
            first_error: None,
        };
        let Some(l) = &mut self.slab else {
            return Ok(outcome);
        };
        if l.n_device == 0 {
            return Ok(outcome);
        }
        // per-step inputs: the buffers' addresses, the groups' coefficients (lr may change),
        // statuses cleared
        let mut keep = Vec::with_capacity(2 * tensors.len());
        let (mut pp, mut gp) = (vec![0u64; l.n_device], vec![0u64; l.n_device]);
        // a tensor without a gradient is marked for every kernel to leave alone
        let mut skip = vec![STATUS_SKIP; l.n_device];
        for (d, (p, g)) in self.device.iter().zip(tensors.iter_mut()) {
            let (Some(d), Some(g)) = (*d, g) else {
                continue;
            };
            skip[d] = 0;
            let (ptr, sync) = p.device_ptr_mut(&stream);
            pp[d] = ptr;
            keep.push(sync);
            let (ptr, sync) = g.device_ptr(&stream);
            gp[d] = ptr;
            keep.push(sync);
        }
        stream.memcpy_htod(&pp, &mut l.params)?;
        stream.memcpy_htod(&gp, &mut l.grads)?;
        let groups: Vec<GroupDesc<T>> = self.registry.groups().iter().map(group_desc).collect();
        let groups = stream.clone_htod(&groups)?;
        stream.memcpy_htod(&skip, &mut l.status)?;
        stream.memcpy_htod(&vec![i64::MAX; l.n_device], &mut l.first_bad)?;
        stream.memset_zeros(&mut l.guard)?;
        launch_prepare(&stream, &self.kernels, l, &groups)?;
        launch_update(&stream, &self.kernels, l, &groups)?;
        drop(keep);
        // the one read of the step: the guard, statuses, first bad gradient element per tensor
        let guard = stream.clone_dtoh(&l.guard)?;
        let status = stream.clone_dtoh(&l.status)?;
        let first_bad = stream.clone_dtoh(&l.first_bad)?;
        let rms = stream.clone_dtoh(&l.rms)?;
        outcome.refused = guard[0] != 0;
        for (i, (d, (_, g))) in self.device.iter().zip(tensors.iter()).enumerate() {
            if g.is_none() {
                (outcome.stepped[i], outcome.rms[i]) = (false, None);
                continue;
            }
            let Some(d) = *d else { continue };
            outcome.rms[i] = Some(rms[d]);
            let s = status[d] & !STATUS_SKIP;
            if s == 0 {
                continue;
            }
            outcome.stepped[i] = false;
            let error = if s & STATUS_GRAD != 0 && first_bad[d] != i64::MAX {
                Error::NonFiniteGradient {
                    index: usize::try_from(first_bad[d]).unwrap_or(usize::MAX),
                }
            } else if s & STATUS_STATE != 0 {
                Error::NonFiniteState
            } else {
                Error::NonFiniteUpdate
            };
            outcome.first_error.get_or_insert((i, error));
        }
        Ok(outcome)
    }
}

impl<T: CudaFloat> Optimizer for CudaCame<T> {
    type Config = CameConfig;
    type Param = CudaSlice<T>;
    type Grad = CudaSlice<T>;
    type Error = CudaError;
    type CheckpointError = CudaError;

    /// Adds a parameter group.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] (as [`CudaError::Optimizer`]), or
    /// [`CudaError::Unsupported`] for `confidence = false`.
    fn add_group(&mut self, config: CameConfig) -> Result<GroupId, CudaError> {
        check_config(&config)?;
        Ok(self.registry.add_group(config)?)
    }

    fn groups(&self) -> &[CameConfig] {
        self.registry.groups()
    }

    /// Registers a tensor in a group with a fresh state. Registering after steps keeps the
    /// state of the tensors registered before.
    ///
    /// # Errors
    /// As [`Came`]'s registration.
    fn register_in(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, CudaError> {
        // keep what was learnt so far across the re-layout
        let kept = match self.slab {
            Some(_) => Some(self.to_cpu()?),
            None => None,
        };
        let id = self.registry.register(group, name, dims)?;
        self.slab = None;
        if let Some(cpu) = kept {
            self.build_slab()?;
            self.upload_state(&cpu)?;
        }
        Ok(id)
    }

    fn len(&self) -> usize {
        self.registry.tensors().len()
    }

    fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>> {
        self.registry.tensor(id)
    }

    fn learning_rate(&self) -> f64 {
        self.registry.lr()
    }

    /// Sets every group's learning rate (schedules); takes effect at the next step.
    fn set_learning_rate(&mut self, lr: f64) -> Result<(), CudaError> {
        Ok(self.registry.set_lr(lr)?)
    }

    fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), CudaError> {
        Ok(self.registry.set_group_lr(group, lr)?)
    }

    fn scale_learning_rate(&mut self, factor: f64) -> Result<(), CudaError> {
        Ok(self.registry.scale_lr(factor)?)
    }

    /// Steps every tensor, given `(param, grad)` device buffers in registration order.
    ///
    /// The non-finite guard always runs, on the device: a NaN or infinite gradient (or an
    /// overflow) in any tensor leaves every parameter and every state value as it was. The
    /// step ends with one small read of the per-tensor statuses.
    ///
    /// # Errors
    /// [`CudaError::Optimizer`] with [`OptimizerError::TensorCount`] or
    /// [`OptimizerError::Tensor`] (a wrong length, [`Error::NonFiniteGradient`],
    /// [`Error::NonFiniteUpdate`], [`Error::NonFiniteState`]), as [`Came`] reports them;
    /// [`CudaError::Driver`].
    fn step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<T>, &CudaSlice<T>)],
    ) -> Result<StepReport, CudaError> {
        let mut some: Vec<(&mut CudaSlice<T>, Option<&CudaSlice<T>>)> = tensors
            .iter_mut()
            .map(|(p, g)| (&mut **p, Some(*g)))
            .collect();
        self.step_some(&mut some)
    }

    /// [`Optimizer::step`] of the tensors that have a gradient; the others keep their state
    /// and step count (every kernel leaves them alone).
    ///
    /// # Errors
    /// As [`Optimizer::step`].
    fn step_some(
        &mut self,
        tensors: &mut [(&mut CudaSlice<T>, Option<&CudaSlice<T>>)],
    ) -> Result<StepReport, CudaError> {
        let lens = tensors
            .iter()
            .map(|(p, g)| (p.len(), g.map(CudaSlice::len)));
        self.registry.check_step(lens)?;
        if self.slab.is_none() {
            self.build_slab()?;
        }
        let outcome = self.launch_step(tensors)?;
        // a step refused by the guard changed nothing; otherwise every tensor but one that
        // failed late (a corrupt momentum) took its step
        if !outcome.refused {
            let tensors = self.registry.tensors_mut().iter_mut();
            for (t, done) in tensors.zip(&outcome.stepped) {
                if *done {
                    t.step = t.step.saturating_add(1);
                }
            }
        }
        if let Some((index, error)) = outcome.first_error {
            return Err(self.registry.error(index, error).into());
        }
        let mut report = StepReport::default();
        let tensors = self.registry.tensors().iter().zip(&outcome.rms);
        for ((t, rms), done) in tensors.zip(&outcome.stepped) {
            if *done {
                let clip = self.registry.groups()[t.group].clip_threshold;
                report.add(rms.map(|rms| (rms, rms > clip)));
            }
        }
        Ok(report)
    }

    /// Bytes of optimizer state (scratch space included) in device memory.
    fn state_bytes(&self) -> usize {
        self.device_bytes()
    }

    /// Copies the state to the host ([`CudaCame::to_cpu`]) and saves it there.
    fn save(&self, path: &Path) -> Result<(), CudaError> {
        Ok(self.to_cpu()?.save(path)?)
    }

    /// Loads a checkpoint on the host and moves it to the device ([`CudaCame::load_from_cpu`]).
    fn load(&mut self, path: &Path) -> Result<(), CudaError> {
        let mut cpu = self.to_cpu()?;
        cpu.load(path)?;
        self.load_from_cpu(&cpu)
    }
}
