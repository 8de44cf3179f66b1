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
//! **Types.** As on the CPU ([`Came<P, G>`](crate::Came)), `CudaCame<P, G = P>` stores
//! parameters in `P` and gradients in `G`, any [`CudaElement`] (`f32`, `f64`, [`half::bf16`],
//! [`half::f16`]) of the same compute type: `f32`, `f64`, bf16 or f16 parameters with gradients
//! of their own type, and any mix of `f32`, bf16 and f16 (f32 master weights with bf16
//! gradients: `CudaCame<f32, half::bf16>`). The update is computed in the compute type (`f32`
//! for the 16-bit types); 16-bit values are widened as they are loaded and rounded as they are
//! stored, by conversions that are the CPU's bit for bit (round to nearest, ties to even; NaN
//! stays NaN), with the CPU's rounding rule: [`Rounding::Nearest`](crate::Rounding) rounds
//! after the weight decay and again after the update, as came-pytorch does, and
//! [`Rounding::Stochastic`](crate::Rounding) draws the same random bits as the CPU (the key of
//! the seed, the tensor's registration position and its step count; the element's flat index).
//! The state (statistics and momentum) stays in the compute type; packed momentum (bf16 or
//! 8-bit, [`Momentum`]) runs on the CPU only ([`CudaError::Unsupported`]). A 16-bit buffer
//! is a `CudaSlice<half::bf16>` or `CudaSlice<half::f16>` (cudarc's `half` support).
//!
//! libcuda and libnvrtc are loaded at run time: building needs no CUDA, and without a driver or
//! a GPU [`CudaCame::new`] returns [`CudaError::NoCuda`] or [`CudaError::NoDevice`] instead of
//! cudarc's panic. The kernels include no CUDA header (the 16-bit types are raw bits), so the
//! NVRTC library alone compiles them (the `nvidia-cuda-nvrtc-cu12` wheel has no headers).
//!
//! ```no_run
//! use came::cuda::CudaCame;
//! use came::{CameConfig, Optimizer, Rounding};
//! use half::bf16;
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
//!
//!     // bf16 weights and gradients, rounded stochastically
//!     let config = CameConfig::new(1e-3).with_rounding(Rounding::Stochastic { seed: 7 });
//!     let mut opt = CudaCame::<bf16>::new(0, config)?;
//!     opt.register("w", &[256, 512])?;
//!     let host = vec![bf16::from_f32(0.02); 256 * 512];
//!     let mut w = s.clone_htod(&host)?;
//!     let g = s.clone_htod(&vec![bf16::from_f32(1e-3); 256 * 512])?;
//!     opt.step(&mut [(&mut w, &g)])?;
//!     let back: Vec<bf16> = s.clone_dtoh(&w)?;
//!     assert_eq!(back.len(), 256 * 512);
//!     Ok(())
//! }
//! ```
//!
//! The layers, one file each: `error.rs` ([`CudaError`]), `compile.rs` (NVRTC, the kernels'
//! names and the loaded kernels), `abi.rs` (the element types and the `#[repr(C)]` structs
//! `came.cu` reads), `plan.rs` (where each tensor's state and scratch space go, and the task
//! lists), `launch.rs` (the device buffers and the launches of a step), and this file, the
//! optimizer. `portable.rs` (tests only) compiles the kernels' conversions on the host.
#![allow(unsafe_code)]

mod abi;
mod compile;
mod error;
mod launch;
mod plan;
#[cfg(test)]
mod portable;
mod rules;

use core::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

pub use abi::{CudaElement, CudaFloat};
pub use compile::compile_kernels;
pub use error::CudaError;

use abi::{GroupDesc, STATUS_SKIP, group_desc};
use compile::{Kernels, driver_present, nvrtc_present};
use launch::{Slab, launch_prepare, launch_update};
use plan::Plan;
use rules::{check_config, check_momentum, rounding_keys, status_error, stochastic};

use crate::optim::registry::Registry;
use crate::optim::{GroupId, Optimizer, StepReport, TensorId, TensorInfo};
use crate::{Came, CameConfig, Error, Momentum};

/// CAME on a GPU: owns the state of registered tensors in device memory; steps parameters and
/// gradients the trainer keeps on the device. It implements the crate's [`Optimizer`] trait
/// with `Param = CudaSlice<P>` and `Grad = CudaSlice<G>`: `CudaSlice<f32>` for
/// `CudaCame<f32>`, `CudaSlice<half::bf16>` for `CudaCame<half::bf16>`.
///
/// `P` is the parameters' storage type, `G` the gradients' (by default `P`), as for the CPU's
/// [`Came<P, G>`](Came): `CudaCame<f32>`, `CudaCame<f64>`, `CudaCame<half::bf16>`,
/// `CudaCame<half::f16>`, `CudaCame<f32, half::bf16>` and the other mixes of `f32`, bf16 and f16.
/// The state is kept in their compute type (`f32` for the 16-bit types).
///
/// Registration, groups and learning rates work as on [`Came`]; the state moves to and from a
/// `Came<P, G>` ([`CudaCame::to_cpu`], [`CudaCame::load_from_cpu`]), so checkpoints are the same
/// safetensors files.
pub struct CudaCame<P: CudaElement, G: CudaElement<Compute = P::Compute> = P> {
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    registry: Registry<CameConfig>,
    /// Per registered tensor, its position in the device tensor table (`None`: empty).
    device: Vec<Option<usize>>,
    slab: Option<Slab<P::Compute>>,
    types: PhantomData<(P, G)>,
}

impl<P: CudaElement, G: CudaElement<Compute = P::Compute>> core::fmt::Debug for CudaCame<P, G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaCame")
            .field("device", &self.ctx.ordinal())
            .field("params", &P::NAME)
            .field("grads", &G::NAME)
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

impl<P: CudaElement, G: CudaElement<Compute = P::Compute>> CudaCame<P, G> {
    /// An optimizer on GPU `ordinal` with one group of `config`; compiles the kernels (once per
    /// process) and loads those of `P` and `G`.
    ///
    /// # Errors
    /// [`CudaError::NoCuda`], [`CudaError::NoDevice`], [`CudaError::Compile`],
    /// [`CudaError::Driver`], [`CudaError::Optimizer`] for an invalid config, or
    /// [`CudaError::Unsupported`] for `confidence = false` or corrected instability statistics.
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
        let kernels = Kernels::load::<P, G>(&ctx)?;
        Ok(Self {
            stream,
            ctx,
            kernels,
            registry: Registry::new(config)?,
            device: Vec::new(),
            slab: None,
            types: PhantomData,
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
            (l.state.len() + l.work.len()) * size_of::<P::Compute>() + l.norm_parts.len() * 8
        })
    }

    /// How the momentum of the tensors registered from now on is stored, as
    /// [`Came::set_momentum`] sets it: on the GPU only [`Momentum::Full`] (the compute type),
    /// the default.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for bf16 or 8-bit momentum (they run on the CPU only).
    pub fn set_momentum(&mut self, momentum: Momentum) -> Result<(), CudaError> {
        check_momentum(momentum)?;
        Ok(self.registry.set_momentum(momentum)?)
    }

    /// The state as a CPU optimizer (same tensors, groups, steps, types): save it as a
    /// checkpoint, or step it on the host.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn to_cpu(&self) -> Result<Came<P, G>, CudaError> {
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
        Ok(Came::<P, G>::from_registry(self.registry.clone(), named))
    }

    /// Replaces the state (and group configs, step counts) with a CPU optimizer's, e.g. one
    /// just loaded from a checkpoint. The tensors must be registered alike.
    ///
    /// # Errors
    /// [`OptimizerError::Mismatch`](crate::optim::OptimizerError::Mismatch) (as [`CudaError::Optimizer`]) naming the first tensor (or
    /// count) that differs, with both sides; [`CudaError::Unsupported`] when a group has
    /// `confidence = false` or corrected instability statistics, or a tensor has bf16 or 8-bit
    /// momentum; [`CudaError::Driver`]. On error nothing is changed.
    pub fn load_from_cpu(&mut self, cpu: &Came<P, G>) -> Result<(), CudaError> {
        for config in cpu.groups() {
            check_config(config)?;
        }
        for t in cpu.registry().tensors() {
            check_momentum(t.state.momentum())?;
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
    fn upload_state(&mut self, cpu: &Came<P, G>) -> Result<(), CudaError> {
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
    #[allow(clippy::type_complexity)]
    fn launch_step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<P>, Option<&CudaSlice<G>>)],
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
        // the stochastic-rounding keys (step counts change), statuses cleared
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
        let groups: Vec<GroupDesc<P::Compute>> =
            self.registry.groups().iter().map(group_desc).collect();
        let groups = stream.clone_htod(&groups)?;
        if P::ROUNDS && self.registry.groups().iter().any(stochastic) {
            let keys = rounding_keys(&self.registry, &self.device, l.n_device);
            stream.memcpy_htod(&keys, &mut l.keys)?;
        }
        stream.memcpy_htod(&skip, &mut l.status)?;
        stream.memcpy_htod(&vec![i64::MAX; l.n_device], &mut l.first_bad)?;
        stream.memset_zeros(&mut l.guard)?;
        launch_prepare(&stream, &self.kernels, l, &groups)?;
        launch_update(&stream, &self.kernels, l, &groups)?;
        drop(keep);
        // the one read of the step: the guard, statuses, first bad element per tensor
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
            if let Some(error) = status_error(status[d] & !STATUS_SKIP, first_bad[d]) {
                outcome.stepped[i] = false;
                outcome.first_error.get_or_insert((i, error));
            }
        }
        Ok(outcome)
    }
}

impl<P: CudaElement, G: CudaElement<Compute = P::Compute>> Optimizer for CudaCame<P, G> {
    type Config = CameConfig;
    type Param = CudaSlice<P>;
    type Grad = CudaSlice<G>;
    type Error = CudaError;
    type CheckpointError = CudaError;

    /// Adds a parameter group.
    ///
    /// # Errors
    /// [`OptimizerError::Config`](crate::optim::OptimizerError::Config) (as [`CudaError::Optimizer`]), or
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

    /// Steps every tensor, given `(param, grad)` device buffers in registration order: each
    /// holds the tensor's elements, flat and row-major (the product of its registered dims),
    /// parameters as `P`, gradients as `G`.
    ///
    /// The non-finite guard always runs, on the device: a NaN or infinite gradient (or an
    /// overflow) in any tensor leaves every parameter and every state value as it was. The
    /// step ends with one small read of the per-tensor statuses.
    ///
    /// # Errors
    /// [`CudaError::Optimizer`] with [`OptimizerError::TensorCount`](crate::optim::OptimizerError::TensorCount) or
    /// [`OptimizerError::Tensor`](crate::optim::OptimizerError::Tensor) (a wrong length, [`Error::NonFiniteGradient`],
    /// [`Error::NonFiniteUpdate`], [`Error::NonFiniteState`], and for 16-bit parameters
    /// [`Error::ParameterOverflow`], found after the step as on the CPU: the other tensors
    /// took their step, the overflowing parameters hold an infinity and that tensor's step
    /// count does not advance), as [`Came`] reports them; [`CudaError::Driver`].
    fn step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<P>, &CudaSlice<G>)],
    ) -> Result<StepReport, CudaError> {
        #[allow(clippy::type_complexity)]
        let mut some: Vec<(&mut CudaSlice<P>, Option<&CudaSlice<G>>)> = tensors
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
        tensors: &mut [(&mut CudaSlice<P>, Option<&CudaSlice<G>>)],
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
