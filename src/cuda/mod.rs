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
#![allow(unsafe_code)]
// Offsets and sizes go to the device as `long long`; device memory is far below 2^63 elements.
#![allow(clippy::cast_possible_wrap)]

use std::string::{String, ToString};
use std::sync::{Arc, OnceLock};
use std::vec::Vec;
use std::{fmt, format, vec};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::config::Coefficients;
use crate::optim::{OptimizerError, TensorId};
use crate::{Came, CameConfig, Error, Float, Layout, Shape};

/// The kernels' source, compiled at run time.
const SOURCE: &str = include_str!("came.cu");

const TILE_R: usize = 64;
const TILE_C: usize = 256;
const THREADS: u32 = 256;
const VEC_CHUNK: usize = 4096;
const STATUS_GRAD: i32 = 1;
const STATUS_STATE: i32 = 2;

/// What can go wrong on the GPU path.
#[derive(Debug)]
#[non_exhaustive]
pub enum CudaError {
    /// The CUDA driver library (libcuda) or NVRTC (libnvrtc) cannot be loaded: no NVIDIA driver,
    /// or CUDA's `lib64` is not on the library path.
    NoCuda(&'static str),
    /// No GPU with this ordinal.
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// GPUs present.
        count: usize,
    },
    /// A CUDA driver call failed.
    Driver(DriverError),
    /// NVRTC could not compile the kernels (the message is NVRTC's log).
    Compile(String),
    /// A registration or call error, as the CPU optimizer reports it.
    Optimizer(OptimizerError),
    /// A config the GPU path does not run: the kernels compute CAME with its confidence term,
    /// so `confidence = false` (the Adafactor baseline) runs on the CPU only.
    Unsupported(&'static str),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoCuda(what) => write!(f, "CUDA is not available: {what}"),
            CudaError::NoDevice { ordinal, count } => {
                write!(f, "no CUDA device {ordinal} ({count} present)")
            }
            CudaError::Driver(e) => write!(f, "CUDA driver: {e}"),
            CudaError::Compile(log) => write!(f, "NVRTC could not compile the kernels: {log}"),
            CudaError::Optimizer(e) => write!(f, "{e}"),
            CudaError::Unsupported(what) => write!(f, "not supported on the GPU: {what}"),
        }
    }
}

impl std::error::Error for CudaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CudaError::Driver(e) => Some(e),
            CudaError::Optimizer(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e)
    }
}

impl From<OptimizerError> for CudaError {
    fn from(e: OptimizerError) -> Self {
        CudaError::Optimizer(e)
    }
}

/// Whether libcuda can be loaded (cudarc panics on its first call otherwise).
fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library with libloading; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnvrtc can be loaded.
fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library with libloading; no NVRTC call is made.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the kernels to PTX for a virtual architecture (`compute_XY`), once per process and
/// architecture. Needs NVRTC only, no GPU: a trainer can check its CUDA setup with it.
///
/// # Errors
/// [`CudaError::NoCuda`] without libnvrtc, [`CudaError::Compile`] with NVRTC's log.
pub fn compile_kernels(arch: &'static str) -> Result<Ptx, CudaError> {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(&'static str, Ptx)>>> = OnceLock::new();
    if !nvrtc_present() {
        return Err(CudaError::NoCuda("libnvrtc cannot be loaded"));
    }
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, ptx)) = cache.iter().find(|(a, _)| *a == arch) {
        return Ok(ptx.clone());
    }
    let options = CompileOptions {
        // no contraction into fused multiply-adds: the same roundings as the CPU kernels
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        arch: Some(arch),
        name: Some("came.cu".to_string()),
        ..Default::default()
    };
    let ptx =
        compile_ptx_with_opts(SOURCE, options).map_err(|e| CudaError::Compile(e.to_string()))?;
    cache.push((arch, ptx.clone()));
    Ok(ptx)
}

/// NVRTC's virtual architecture for a compute capability.
fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (9, _) => "compute_90",
        (8, 9) => "compute_89",
        (8, 7) => "compute_87",
        (8, 6) => "compute_86",
        (8, _) => "compute_80",
        (7, 5) => "compute_75",
        (7, _) => "compute_70",
        (m, _) if m >= 10 => "compute_90",
        _ => "compute_60",
    }
}

/// The element types the GPU path runs: `f32` and `f64`.
pub trait CudaFloat: Float + DeviceRepr + ValidAsZeroBits {
    /// The suffix of the kernels' names.
    const SUFFIX: &'static str;
}

impl CudaFloat for f32 {
    const SUFFIX: &'static str = "f32";
}

impl CudaFloat for f64 {
    const SUFFIX: &'static str = "f64";
}

/// A tensor's place in the device buffers, as `struct Tensor` of `came.cu` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct TensorDesc {
    numel: i64,
    batch: i64,
    rows: i64,
    cols: i64,
    m: i64,
    sq_row: i64,
    sq_col: i64,
    res_row: i64,
    res_col: i64,
    next_row: i64,
    next_col: i64,
    fac_row: i64,
    fac_col: i64,
    row_part: i64,
    col_part: i64,
    tiles_r: i64,
    tiles_c: i64,
    norm_part: i64,
    norm_parts: i64,
    factored: i32,
    group: i32,
}

/// A group's coefficients, as `struct Group<T>` of `came.cu` lays them out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GroupDesc<T> {
    beta1: T,
    beta2: T,
    beta3: T,
    omb1: T,
    omb2: T,
    omb3: T,
    eps1: T,
    eps2: T,
    clip: T,
    lr: T,
    decay: T,
    has_decay: i32,
    pad: i32,
}

/// A tile or a vector chunk, as `struct Task`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Task {
    tensor: i32,
    pad: i32,
    b: i64,
    tr: i64,
    tc: i64,
}

/// Up to 256 consecutive row or column statistics of one tensor, as `struct Span`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    tensor: i32,
    cols: i32,
    start: i64,
    len: i64,
}

// SAFETY: plain `#[repr(C)]` data of integers, the same fields in the same order as the
// structs of `came.cu`, so the kernels read them as laid out here.
unsafe impl DeviceRepr for TensorDesc {}
// SAFETY: as above; `T` is `f32` or `f64`, `#[repr(C)]` like `struct Group<T>`.
unsafe impl<T: CudaFloat> DeviceRepr for GroupDesc<T> {}
// SAFETY: as above, `struct Task`.
unsafe impl DeviceRepr for Task {}
// SAFETY: as above, `struct Span`.
unsafe impl DeviceRepr for Span {}

/// A registered tensor.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dims: Vec<usize>,
    shape: Shape,
    group: usize,
    step: u64,
    /// Position in the device tensor table; `None` for an empty tensor.
    device: Option<usize>,
}

/// The kernels of one element type, loaded in a context.
struct Kernels {
    _module: Arc<CudaModule>,
    tile_sq: CudaFunction,
    tile_res: CudaFunction,
    finish_sq: CudaFunction,
    finish_res: CudaFunction,
    factors_sq: CudaFunction,
    factors_res: CudaFunction,
    commit_sq: CudaFunction,
    tile_norm: CudaFunction,
    vector_norm: CudaFunction,
    finish_norm: CudaFunction,
    vector_update: CudaFunction,
    tile_apply: CudaFunction,
}

impl Kernels {
    fn load<T: CudaFloat>(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(compile_kernels(arch_for(major, minor))?)?;
        let f = |name: &str| module.load_function(&format!("came_{name}_{}", T::SUFFIX));
        Ok(Self {
            tile_sq: f("tile_sq")?,
            tile_res: f("tile_res")?,
            finish_sq: f("finish_sq")?,
            finish_res: f("finish_res")?,
            factors_sq: f("factors_sq")?,
            factors_res: f("factors_res")?,
            commit_sq: f("commit_sq")?,
            tile_norm: f("tile_norm")?,
            vector_norm: f("vector_norm")?,
            finish_norm: f("finish_norm")?,
            vector_update: f("vector_update")?,
            tile_apply: f("tile_apply")?,
            _module: module,
        })
    }
}

/// The device-side layout of the registered tensors, rebuilt when registrations change.
struct Layout_<T> {
    tensors: CudaSlice<TensorDesc>,
    tiles: CudaSlice<Task>,
    chunks: CudaSlice<Task>,
    spans: CudaSlice<Span>,
    mats: CudaSlice<Task>,
    counts: [u32; 4],
    n_device: usize,
    state: CudaSlice<T>,
    work: CudaSlice<T>,
    norm_parts: CudaSlice<f64>,
    /// per device tensor: statuses, first bad gradient element, clip divisor, rms
    status: CudaSlice<i32>,
    first_bad: CudaSlice<i64>,
    clip_d: CudaSlice<T>,
    rms: CudaSlice<f64>,
    guard: CudaSlice<i32>,
    done: CudaSlice<u32>,
    params: CudaSlice<u64>,
    grads: CudaSlice<u64>,
    /// host copy of each device tensor's layout, to move state to and from the CPU
    descs: Vec<TensorDesc>,
}

/// CAME on a GPU: owns the state of registered tensors in device memory; steps parameters and
/// gradients the trainer keeps on the device.
///
/// Registration, groups and learning rates work as on [`Came`]; the state moves to and from a
/// [`Came`] ([`CudaCame::to_cpu`], [`CudaCame::load_from_cpu`]) so checkpoints are the same
/// safetensors files.
pub struct CudaCame<T: CudaFloat> {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    groups: Vec<CameConfig>,
    tensors: Vec<Entry>,
    layout: Option<Layout_<T>>,
}

impl<T: CudaFloat> fmt::Debug for CudaCame<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaCame")
            .field("device", &self.ctx.ordinal())
            .field("groups", &self.groups)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
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
            ctx,
            stream,
            kernels,
            groups: vec![config],
            tensors: Vec::new(),
            layout: None,
        })
    }

    /// The stream steps run on; give the optimizer buffers allocated on it (or synchronise).
    #[must_use]
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Adds a parameter group.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] (as [`CudaError::Optimizer`]), or
    /// [`CudaError::Unsupported`] for `confidence = false`.
    pub fn add_group(&mut self, config: CameConfig) -> Result<crate::optim::GroupId, CudaError> {
        check_config(&config)?;
        self.groups.push(config);
        Ok(crate::optim::GroupId(self.groups.len() - 1))
    }

    /// The groups' configs.
    #[must_use]
    pub fn groups(&self) -> &[CameConfig] {
        &self.groups
    }

    /// Sets every group's learning rate (schedules); takes effect at the next step.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] (as [`CudaError::Optimizer`]) if `lr` is not finite and > 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), CudaError> {
        crate::config::check_lr(lr).map_err(|e| CudaError::Optimizer(OptimizerError::Config(e)))?;
        for g in &mut self.groups {
            g.lr = lr;
        }
        Ok(())
    }

    /// Registers a tensor in group 0 with a fresh state.
    ///
    /// # Errors
    /// As [`Came::register`].
    pub fn register(&mut self, name: &str, dims: &[usize]) -> Result<TensorId, CudaError> {
        self.register_in(crate::optim::GroupId(0), name, dims)
    }

    /// Registers a tensor in a group with a fresh state. Registering after steps keeps the
    /// state of the tensors registered before.
    ///
    /// # Errors
    /// As [`Came::register_in`].
    pub fn register_in(
        &mut self,
        group: crate::optim::GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, CudaError> {
        let names = self.tensors.iter().map(|t| t.name.as_str());
        let shape = crate::optim::new_tensor_shape(self.groups.len(), names, group, name, dims)?;
        // keep what was learnt so far across the re-layout
        let kept = if self.layout.is_some() {
            Some(self.to_cpu()?)
        } else {
            None
        };
        self.tensors.push(Entry {
            name: name.to_string(),
            dims: dims.to_vec(),
            shape,
            group: group.0,
            step: 0,
            device: None,
        });
        self.layout = None;
        if let Some(cpu) = kept {
            self.build_layout()?;
            self.upload_state(&cpu, cpu.len())?;
        }
        Ok(TensorId(self.tensors.len() - 1))
    }

    /// Number of registered tensors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes of device memory held for state and scratch space.
    #[must_use]
    pub fn device_bytes(&self) -> usize {
        self.layout.as_ref().map_or(0, |l| {
            (l.state.len() + l.work.len()) * size_of::<T>() + l.norm_parts.len() * 8
        })
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
    /// [`Error::NonFiniteUpdate`], [`Error::NonFiniteState`]), as [`Came::step`] reports them;
    /// [`CudaError::Driver`].
    pub fn step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<T>, &CudaSlice<T>)],
    ) -> Result<(), CudaError> {
        if tensors.len() != self.tensors.len() {
            return Err(OptimizerError::TensorCount {
                expected: self.tensors.len(),
                actual: tensors.len(),
            }
            .into());
        }
        for (i, (e, (p, g))) in self.tensors.iter().zip(tensors.iter()).enumerate() {
            let n = e.shape.numel();
            crate::step::check_tensor_lens(n, p.len(), g.len()).map_err(|error| {
                OptimizerError::Tensor {
                    index: i,
                    name: e.name.clone(),
                    error,
                }
            })?;
        }
        if self.layout.is_none() {
            self.build_layout()?;
        }
        let outcome = self.launch_step(tensors)?;
        // a step refused by the guard changed nothing; otherwise every tensor but one that
        // failed late (a corrupt momentum) took its step
        if !outcome.refused {
            for (e, done) in self.tensors.iter_mut().zip(&outcome.stepped) {
                if *done {
                    e.step = e.step.saturating_add(1);
                }
            }
        }
        match outcome.first_error {
            Some((index, error)) => Err(OptimizerError::Tensor {
                index,
                name: self.tensors[index].name.clone(),
                error,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The state as a CPU optimizer (same tensors, groups, steps): save it as a checkpoint.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn to_cpu(&self) -> Result<Came<T>, CudaError> {
        let mut cpu = Came::<T>::new(self.groups[0])?;
        for g in &self.groups[1..] {
            cpu.add_group(*g)?;
        }
        for e in &self.tensors {
            cpu.register_in(crate::optim::GroupId(e.group), &e.name, &e.dims)?;
        }
        let Some(layout) = &self.layout else {
            for (i, e) in self.tensors.iter().enumerate() {
                cpu.set_step(TensorId(i), e.step);
            }
            return Ok(cpu);
        };
        let state = self.stream.clone_dtoh(&layout.state)?;
        for (i, e) in self.tensors.iter().enumerate() {
            cpu.set_step(TensorId(i), e.step);
            let Some(d) = e.device else { continue };
            let desc = &layout.descs[d];
            let buf = cpu.state_buffer_mut(TensorId(i));
            for (name, src) in state_pieces(&e.shape, desc) {
                let dst = cpu_piece(&e.shape, name);
                buf[dst.clone()].copy_from_slice(&state[src.start..src.start + dst.len()]);
            }
        }
        Ok(cpu)
    }

    /// Replaces the state (and group configs, step counts) with a CPU optimizer's, e.g. one
    /// just loaded from a checkpoint. The tensors must be registered alike.
    ///
    /// # Errors
    /// [`OptimizerError::TensorCount`] or [`OptimizerError::Shape`] (as
    /// [`CudaError::Optimizer`]) when the registrations differ; [`CudaError::Unsupported`] when
    /// a group has `confidence = false`; [`CudaError::Driver`].
    pub fn load_from_cpu(&mut self, cpu: &Came<T>) -> Result<(), CudaError> {
        for config in cpu.groups() {
            check_config(config)?;
        }
        if cpu.len() != self.tensors.len() || cpu.groups().len() != self.groups.len() {
            return Err(OptimizerError::TensorCount {
                expected: self.tensors.len(),
                actual: cpu.len(),
            }
            .into());
        }
        for (i, e) in self.tensors.iter().enumerate() {
            let info = cpu
                .tensor(TensorId(i))
                .ok_or(OptimizerError::UnknownGroup(i))?;
            if info.dims != e.dims.as_slice() || info.group.0 != e.group {
                return Err(OptimizerError::Shape {
                    name: e.name.clone(),
                    error: Error::ShapeOverflow,
                }
                .into());
            }
        }
        if self.layout.is_none() {
            self.build_layout()?;
        }
        self.upload_state(cpu, cpu.len())?;
        self.groups = cpu.groups().to_vec();
        Ok(())
    }

    /// Copies the first `n` tensors' state and steps from `cpu`.
    fn upload_state(&mut self, cpu: &Came<T>, n: usize) -> Result<(), CudaError> {
        let Some(layout) = &mut self.layout else {
            return Ok(());
        };
        let mut state = self.stream.clone_dtoh(&layout.state)?;
        for (i, e) in self.tensors.iter_mut().enumerate().take(n) {
            e.step = cpu.tensor(TensorId(i)).map_or(0, |t| t.step);
            let Some(d) = e.device else { continue };
            let desc = &layout.descs[d];
            let buf = cpu.state_buffer(TensorId(i));
            for (name, dst) in state_pieces(&e.shape, desc) {
                let src = cpu_piece(&e.shape, name);
                state[dst.start..dst.start + src.len()].copy_from_slice(&buf[src]);
            }
        }
        self.stream.memcpy_htod(&state, &mut layout.state)?;
        Ok(())
    }

    /// Lays out state, scratch space and task lists for the registered tensors.
    fn build_layout(&mut self) -> Result<(), CudaError> {
        let mut plan = Plan::default();
        for e in &mut self.tensors {
            e.device = plan.add(&e.shape, e.group);
        }
        let Plan {
            descs,
            tiles,
            chunks,
            spans,
            mats,
            state_len,
            work_len,
            norm_len,
        } = plan;
        let s = &self.stream;
        let n_device = descs.len();
        let counts = [tiles.len(), chunks.len(), spans.len(), mats.len()];
        self.layout = Some(Layout_ {
            tensors: upload(s, &descs)?,
            counts: counts.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
            tiles: upload(s, &tiles)?,
            chunks: upload(s, &chunks)?,
            spans: upload(s, &spans)?,
            mats: upload(s, &mats)?,
            n_device,
            state: s.alloc_zeros(state_len.max(1))?,
            work: s.alloc_zeros(work_len.max(1))?,
            norm_parts: s.alloc_zeros(norm_len.max(1))?,
            status: s.alloc_zeros(n_device.max(1))?,
            first_bad: s.alloc_zeros(n_device.max(1))?,
            clip_d: s.alloc_zeros(n_device.max(1))?,
            rms: s.alloc_zeros(n_device.max(1))?,
            guard: s.alloc_zeros(2)?,
            done: s.alloc_zeros(1)?,
            params: s.alloc_zeros(n_device.max(1))?,
            grads: s.alloc_zeros(n_device.max(1))?,
            descs,
        });
        Ok(())
    }

    /// Launches one step and reads what became of it.
    fn launch_step(
        &mut self,
        tensors: &mut [(&mut CudaSlice<T>, &CudaSlice<T>)],
    ) -> Result<Outcome, CudaError> {
        let stream = self.stream.clone();
        let mut outcome = Outcome {
            refused: false,
            stepped: vec![true; self.tensors.len()],
            first_error: None,
        };
        let Some(l) = &mut self.layout else {
            return Ok(outcome);
        };
        if l.n_device == 0 {
            return Ok(outcome);
        }
        // per-step inputs: the buffers' addresses, the groups' coefficients (lr may change),
        // statuses cleared
        let mut keep = Vec::with_capacity(2 * tensors.len());
        let (mut pp, mut gp) = (vec![0u64; l.n_device], vec![0u64; l.n_device]);
        for (e, (p, g)) in self.tensors.iter().zip(tensors.iter_mut()) {
            let Some(d) = e.device else { continue };
            let (ptr, sync) = p.device_ptr_mut(&stream);
            pp[d] = ptr;
            keep.push(sync);
            let (ptr, sync) = g.device_ptr(&stream);
            gp[d] = ptr;
            keep.push(sync);
        }
        stream.memcpy_htod(&pp, &mut l.params)?;
        stream.memcpy_htod(&gp, &mut l.grads)?;
        let groups: Vec<GroupDesc<T>> = self.groups.iter().map(group_desc).collect();
        let groups = stream.clone_htod(&groups)?;
        stream.memset_zeros(&mut l.status)?;
        stream.memcpy_htod(&vec![i64::MAX; l.n_device], &mut l.first_bad)?;
        stream.memset_zeros(&mut l.guard)?;
        launch_prepare(&stream, &self.kernels, l, &groups)?;
        launch_update(&stream, &self.kernels, l, &groups)?;
        drop(keep);
        // the one read of the step: the guard, statuses, first bad gradient element per tensor
        let guard = stream.clone_dtoh(&l.guard)?;
        let status = stream.clone_dtoh(&l.status)?;
        let first_bad = stream.clone_dtoh(&l.first_bad)?;
        outcome.refused = guard[0] != 0;
        for (i, e) in self.tensors.iter().enumerate() {
            let Some(d) = e.device else { continue };
            let s = status[d];
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

/// A kernel argument needs a buffer even when there is nothing to put in it.
fn upload<D: DeviceRepr + Default + Clone>(
    s: &Arc<CudaStream>,
    v: &[D],
) -> Result<CudaSlice<D>, DriverError> {
    if v.is_empty() {
        s.clone_htod(&[D::default()])
    } else {
        s.clone_htod(v)
    }
}

fn grid(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Sweeps 1 and 2 of every tensor, then the guard: statistics, factors, norms, clip divisors.
fn launch_prepare<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    l: &mut Layout_<T>,
    groups: &CudaSlice<GroupDesc<T>>,
) -> Result<(), DriverError> {
    let [n_tiles, n_chunks, _, _] = l.counts;
    let n_tensors = i32::try_from(l.n_device).unwrap_or(i32::MAX);
    // SAFETY (every launch below): the arguments match the kernels' parameters in `came.cu`
    // one for one, in type and order; every buffer was allocated by `build_layout` with the
    // sizes the task lists index into; the parameter and gradient addresses come from live
    // `CudaSlice`s of the checked lengths, kept borrowed until the launches are queued.
    unsafe {
        launch_tiles(stream, &k.tile_sq, l, groups)?;
        if n_chunks > 0 {
            stream
                .launch_builder(&k.vector_norm)
                .arg(&l.tensors)
                .arg(groups)
                .arg(&l.chunks)
                .arg(&l.state)
                .arg(&l.grads)
                .arg(&mut l.norm_parts)
                .arg(&mut l.status)
                .arg(&mut l.first_bad)
                .launch(grid(n_chunks))?;
        }
        launch_finish(stream, &k.finish_sq, l, groups)?;
        // the guard is not set yet: the squared-gradient factors are always computed
        launch_factors(stream, &k.factors_sq, l)?;
        if n_tiles > 0 {
            let zero = 0i64;
            stream
                .launch_builder(&k.tile_norm)
                .arg(&l.tensors)
                .arg(&l.tiles)
                .arg(&l.work)
                .arg(&l.grads)
                .arg(&mut l.norm_parts)
                .arg(&zero)
                .launch(grid(n_tiles))?;
        }
        stream
            .launch_builder(&k.finish_norm)
            .arg(&l.tensors)
            .arg(groups)
            .arg(&l.norm_parts)
            .arg(&mut l.clip_d)
            .arg(&mut l.rms)
            .arg(&mut l.status)
            .arg(&n_tensors)
            .arg(&mut l.guard)
            .arg(&mut l.done)
            .launch(grid(u32::try_from(l.n_device).unwrap_or(u32::MAX)))?;
    }
    Ok(())
}

/// `tile_sq` or `tile_res` (the same parameters): each tile's partial row and column sums (and,
/// for `tile_res`, the momentum).
fn launch_tiles<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    kernel: &CudaFunction,
    l: &mut Layout_<T>,
    groups: &CudaSlice<GroupDesc<T>>,
) -> Result<(), DriverError> {
    let n_tiles = l.counts[0];
    if n_tiles > 0 {
        // SAFETY: as in `launch_prepare`; both kernels take exactly these arguments.
        unsafe {
            stream
                .launch_builder(kernel)
                .arg(&l.tensors)
                .arg(groups)
                .arg(&l.tiles)
                .arg(&mut l.state)
                .arg(&mut l.work)
                .arg(&l.params)
                .arg(&l.grads)
                .arg(&l.clip_d)
                .arg(&l.guard)
                .arg(&mut l.status)
                .arg(&mut l.first_bad)
                .launch(grid(n_tiles))?;
        }
    }
    Ok(())
}

/// `finish_sq` or `finish_res` (the same parameters): the new row or column statistics of each
/// span from the tiles' partial sums.
fn launch_finish<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    kernel: &CudaFunction,
    l: &mut Layout_<T>,
    groups: &CudaSlice<GroupDesc<T>>,
) -> Result<(), DriverError> {
    let n_spans = l.counts[2];
    if n_spans > 0 {
        // SAFETY: as in `launch_prepare`; both kernels take exactly these arguments.
        unsafe {
            stream
                .launch_builder(kernel)
                .arg(&l.tensors)
                .arg(groups)
                .arg(&l.spans)
                .arg(&mut l.state)
                .arg(&mut l.work)
                .arg(&mut l.guard)
                .arg(&mut l.status)
                .launch(grid(n_spans))?;
        }
    }
    Ok(())
}

/// `factors_sq` or `factors_res` (the same parameters): each matrix's row and column factors.
fn launch_factors<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    kernel: &CudaFunction,
    l: &mut Layout_<T>,
) -> Result<(), DriverError> {
    let n_mats = l.counts[3];
    if n_mats > 0 {
        // SAFETY: as in `launch_prepare`; both kernels take exactly these arguments.
        unsafe {
            stream
                .launch_builder(kernel)
                .arg(&l.tensors)
                .arg(&l.mats)
                .arg(&mut l.state)
                .arg(&mut l.work)
                .arg(&l.guard)
                .arg(&l.status)
                .launch(grid(n_mats))?;
        }
    }
    Ok(())
}

/// The rest of the step, skipped on the device when the guard is set: commits, momentum,
/// instability statistics, parameters.
fn launch_update<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    l: &mut Layout_<T>,
    groups: &CudaSlice<GroupDesc<T>>,
) -> Result<(), DriverError> {
    let [n_tiles, n_chunks, n_spans, _] = l.counts;
    // SAFETY: as in `launch_prepare`.
    unsafe {
        if n_spans > 0 {
            stream
                .launch_builder(&k.commit_sq)
                .arg(&l.tensors)
                .arg(&l.spans)
                .arg(&mut l.state)
                .arg(&l.work)
                .arg(&l.guard)
                .launch(grid(n_spans))?;
        }
        launch_tiles(stream, &k.tile_res, l, groups)?;
        launch_finish(stream, &k.finish_res, l, groups)?;
        launch_factors(stream, &k.factors_res, l)?;
        if n_tiles > 0 {
            stream
                .launch_builder(&k.tile_apply)
                .arg(&l.tensors)
                .arg(groups)
                .arg(&l.tiles)
                .arg(&l.state)
                .arg(&l.work)
                .arg(&l.params)
                .arg(&l.guard)
                .arg(&l.status)
                .launch(grid(n_tiles))?;
        }
        if n_chunks > 0 {
            stream
                .launch_builder(&k.vector_update)
                .arg(&l.tensors)
                .arg(groups)
                .arg(&l.chunks)
                .arg(&mut l.state)
                .arg(&l.params)
                .arg(&l.grads)
                .arg(&l.clip_d)
                .arg(&l.guard)
                .launch(grid(n_chunks))?;
        }
    }
    Ok(())
}

/// The device layout being planned: descriptors, task lists, buffer sizes.
#[derive(Default)]
struct Plan {
    descs: Vec<TensorDesc>,
    tiles: Vec<Task>,
    chunks: Vec<Task>,
    spans: Vec<Span>,
    mats: Vec<Task>,
    state_len: usize,
    work_len: usize,
    norm_len: usize,
}

impl Plan {
    /// Places one tensor; returns its position in the device table (`None` when empty).
    fn add(&mut self, shape: &Shape, group: usize) -> Option<usize> {
        let n = shape.numel();
        if n == 0 {
            return None;
        }
        let t = self.descs.len();
        let ti = i32::try_from(t).unwrap_or(i32::MAX);
        let mut d = TensorDesc {
            numel: n as i64,
            m: self.state_len as i64,
            group: i32::try_from(group).unwrap_or(0),
            ..TensorDesc::default()
        };
        self.state_len += n;
        match shape.layout() {
            Layout::Vector { .. } => {
                d.sq_row = self.state_len as i64;
                self.state_len += n;
                let parts = n.div_ceil(VEC_CHUNK);
                (d.norm_part, d.norm_parts) = (self.norm_len as i64, parts as i64);
                self.norm_len += parts;
                for c in 0..parts {
                    let b = c as i64;
                    self.chunks.push(Task {
                        tensor: ti,
                        b,
                        ..Task::default()
                    });
                }
            }
            Layout::Factored { batch, rows, cols } => {
                let (br, bc) = (batch * rows, batch * cols);
                let (tr, tc) = (rows.div_ceil(TILE_R), cols.div_ceil(TILE_C));
                let (st, wk) = (self.state_len, self.work_len);
                d.factored = 1;
                (d.batch, d.rows, d.cols) = (batch as i64, rows as i64, cols as i64);
                (d.sq_row, d.sq_col) = (st as i64, (st + br) as i64);
                (d.res_row, d.res_col) = ((st + br + bc) as i64, (st + 2 * br + bc) as i64);
                self.state_len += 2 * (br + bc);
                (d.next_row, d.next_col) = (wk as i64, (wk + br) as i64);
                (d.fac_row, d.fac_col) = ((wk + br + bc) as i64, (wk + 2 * br + bc) as i64);
                d.row_part = (wk + 2 * (br + bc)) as i64;
                d.col_part = d.row_part + (tc * br) as i64;
                self.work_len += 2 * (br + bc) + tc * br + tr * bc;
                (d.tiles_r, d.tiles_c) = (tr as i64, tc as i64);
                (d.norm_part, d.norm_parts) = (self.norm_len as i64, (batch * tr * tc) as i64);
                self.norm_len += batch * tr * tc;
                for b in 0..batch as i64 {
                    self.mats.push(Task {
                        tensor: ti,
                        b,
                        ..Task::default()
                    });
                    for r in 0..tr as i64 {
                        for c in 0..tc as i64 {
                            self.tiles.push(Task {
                                tensor: ti,
                                pad: 0,
                                b,
                                tr: r,
                                tc: c,
                            });
                        }
                    }
                }
                for (cols_flag, len) in [(0, br), (1, bc)] {
                    for start in (0..len).step_by(THREADS as usize) {
                        let take = (len - start).min(THREADS as usize);
                        let (start, len) = (start as i64, take as i64);
                        self.spans.push(Span {
                            tensor: ti,
                            cols: cols_flag,
                            start,
                            len,
                        });
                    }
                }
            }
        }
        self.descs.push(d);
        Some(t)
    }
}

/// What became of a step on the device.
struct Outcome {
    /// The guard refused the step: nothing changed.
    refused: bool,
    /// Per registered tensor, whether it took its step.
    stepped: Vec<bool>,
    /// The first failing tensor and why.
    first_error: Option<(usize, Error)>,
}

/// A config the kernels can run.
fn check_config(config: &CameConfig) -> Result<(), CudaError> {
    config
        .validate()
        .map_err(|e| CudaError::Optimizer(OptimizerError::Config(e)))?;
    if config.confidence {
        Ok(())
    } else {
        Err(CudaError::Unsupported(
            "confidence = false (the Adafactor baseline) runs on the CPU only",
        ))
    }
}

fn group_desc<T: CudaFloat>(config: &CameConfig) -> GroupDesc<T> {
    let k = Coefficients::<T>::new(config);
    GroupDesc {
        beta1: k.beta1,
        beta2: k.beta2,
        beta3: k.beta3,
        omb1: k.one_minus_beta1,
        omb2: k.one_minus_beta2,
        omb3: k.one_minus_beta3,
        eps1: k.eps1,
        eps2: k.eps2,
        clip: k.clip_threshold,
        lr: k.lr,
        decay: k.decay.unwrap_or(T::zero()),
        has_decay: i32::from(k.decay.is_some()),
        pad: 0,
    }
}

/// The named pieces of a tensor's device state: their places in the state slab.
fn state_pieces(shape: &Shape, d: &TensorDesc) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let at = |x: i64| usize::try_from(x).unwrap_or(0);
    let n = shape.numel();
    match shape.layout() {
        Layout::Vector { .. } => vec![
            ("exp_avg", at(d.m)..at(d.m) + n),
            ("exp_avg_sq", at(d.sq_row)..at(d.sq_row) + n),
        ],
        Layout::Factored { batch, rows, cols } => {
            let (r, c) = (batch * rows, batch * cols);
            vec![
                ("exp_avg", at(d.m)..at(d.m) + n),
                ("exp_avg_sq_row", at(d.sq_row)..at(d.sq_row) + r),
                ("exp_avg_sq_col", at(d.sq_col)..at(d.sq_col) + c),
                ("exp_avg_res_row", at(d.res_row)..at(d.res_row) + r),
                ("exp_avg_res_col", at(d.res_col)..at(d.res_col) + c),
            ]
        }
    }
}

/// The place of a named piece in a CPU state buffer (the layout of [`crate::CameState`]).
fn cpu_piece(shape: &Shape, name: &str) -> std::ops::Range<usize> {
    let n = shape.numel();
    match (shape.layout(), name) {
        (_, "exp_avg") => 0..n,
        (Layout::Vector { .. }, _) => n..2 * n,
        (Layout::Factored { batch, rows, cols }, name) => {
            let (r, c) = (batch * rows, batch * cols);
            match name {
                "exp_avg_sq_row" => n..n + r,
                "exp_avg_sq_col" => n + r..n + r + c,
                "exp_avg_res_row" => n + r + c..n + 2 * r + c,
                _ => n + 2 * r + c..n + 2 * r + 2 * c,
            }
        }
    }
}
