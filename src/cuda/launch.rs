//! The device buffers of a step and the launches that run it: sweeps 1 and 2 with the guard
//! (`launch_prepare`), then the writes, skipped on the device when the guard is set
//! (`launch_update`).

use std::sync::Arc;
use std::vec::Vec;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};

use super::abi::{CudaFloat, GroupDesc, Span, THREADS, Task, TensorDesc};
use super::compile::Kernels;
use super::plan::Plan;

/// The device buffers of the registered tensors (state slab, scratch space, task lists), built
/// from a [`Plan`] and rebuilt when registrations change.
pub(super) struct Slab<T> {
    pub tensors: CudaSlice<TensorDesc>,
    pub tiles: CudaSlice<Task>,
    pub chunks: CudaSlice<Task>,
    pub spans: CudaSlice<Span>,
    pub mats: CudaSlice<Task>,
    pub counts: [u32; 4],
    pub n_device: usize,
    pub state: CudaSlice<T>,
    pub work: CudaSlice<T>,
    pub norm_parts: CudaSlice<f64>,
    /// per device tensor: statuses, first bad gradient element, clip divisor, rms
    pub status: CudaSlice<i32>,
    pub first_bad: CudaSlice<i64>,
    pub clip_d: CudaSlice<T>,
    pub rms: CudaSlice<f64>,
    pub guard: CudaSlice<i32>,
    pub done: CudaSlice<u32>,
    pub params: CudaSlice<u64>,
    pub grads: CudaSlice<u64>,
    /// per device tensor: its stochastic-rounding key for the step (read where its group
    /// rounds stochastically)
    pub keys: CudaSlice<u64>,
    /// host copy of each device tensor's layout, to move state to and from the CPU
    pub descs: Vec<TensorDesc>,
}

impl<T: CudaFloat> Slab<T> {
    /// Allocates the buffers a plan asks for, state zeroed.
    pub(super) fn build(s: &Arc<CudaStream>, plan: Plan) -> Result<Self, DriverError> {
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
        let n_device = descs.len();
        let counts = [tiles.len(), chunks.len(), spans.len(), mats.len()];
        Ok(Self {
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
            keys: s.alloc_zeros(n_device.max(1))?,
            descs,
        })
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
pub(super) fn launch_prepare<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    l: &mut Slab<T>,
    groups: &CudaSlice<GroupDesc<T>>,
) -> Result<(), DriverError> {
    let [n_tiles, n_chunks, _, _] = l.counts;
    let n_tensors = i32::try_from(l.n_device).unwrap_or(i32::MAX);
    // SAFETY (every launch below): the arguments match the kernels' parameters in `came.cu`
    // one for one, in type and order; every buffer was allocated by `Slab::build` with the
    // sizes the task lists index into; the parameter and gradient addresses come from live
    // `CudaSlice`s of the checked lengths, whose element types are the storage types the
    // kernels were loaded for (`Kernels::load::<P, G>`), kept borrowed until the launches are
    // queued.
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
                .arg(&l.status)
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
    l: &mut Slab<T>,
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
    l: &mut Slab<T>,
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
    l: &mut Slab<T>,
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
/// instability statistics, parameters (16-bit ones that come out infinite are flagged with
/// `STATUS_OVERFLOW` and their first flat index in `first_bad`).
pub(super) fn launch_update<T: CudaFloat>(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    l: &mut Slab<T>,
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
                .arg(&l.status)
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
                .arg(&l.keys)
                .arg(&l.guard)
                .arg(&mut l.status)
                .arg(&mut l.first_bad)
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
                .arg(&l.keys)
                .arg(&l.guard)
                .arg(&mut l.status)
                .arg(&mut l.first_bad)
                .launch(grid(n_chunks))?;
        }
    }
    Ok(())
}
