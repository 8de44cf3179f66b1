//! The CAME step. [`formula`] is the update itself, element by element, as Algorithm 1 of the
//! paper writes it; the files beside it are the sweeps that feed it:
//!
//! - `sweeps.rs`: the inner loops over groups of rows (and vector blocks), in SIMD vectors;
//! - `rows.rs`: a range of rows through the three sweeps, shared by the two ways of cutting a
//!   factored tensor into lanes: `factored.rs` (one matrix, lanes of rows) and `batch.rs`
//!   (a batch of matrices, lanes of matrices);
//! - `small.rs`: matrices whose rows are too short for vectors, one element at a time;
//! - `small_batch.rs`: a batch of such matrices, a vector's width of matrices at once;
//! - `vector.rs`: rank 0 and 1 (no factoring, no confidence term);
//! - `parts.rs`: a factored tensor's state buffer cut into its pieces;
//! - `multi.rs`: many tensors in one all-or-nothing step.
//!
//! This file checks a step's inputs and sends each tensor to its sweeps, in two halves: the
//! half that only reads ([`prepare`]) and the half that writes ([`finish`]), so that a step over
//! many tensors can check all of them before changing any.

mod batch;
mod factored;
pub(crate) mod formula;
pub(crate) mod multi;
mod packed;
mod parts;
mod rows;
#[cfg(feature = "std")]
pub(crate) mod shard;
mod small;
mod small_batch;
mod sum;
mod sweeps;
mod vector;

use formula::Clip;

use crate::Element;
use crate::check::all_finite_vectorised;
use crate::config::Coefficients;
use crate::error::Buffer;
use crate::exec::{Executor, Serial};
use crate::state::check_len;
use crate::{CameConfig, CameState, Error, Float, Momentum, Shape};

/// What a successful step of one tensor reports (CAME and AdamW alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// The state's step count after this step (1 after the first step).
    pub step: u64,
    /// CAME: the root mean square of the update before clipping (line 9 of Algorithm 1);
    /// above `clip_threshold` the update was scaled down to it; 0 for an empty tensor.
    /// AdamW, which does not clip: `None`.
    pub update_rms: Option<f64>,
}

/// Applies one CAME step to one tensor, in place, without allocating.
///
/// `param` and `grad` are the tensor's elements, flat and row-major, `shape.numel()` each;
/// `state` is this tensor's [`CameState`] over a buffer of `shape.state_len()` elements.
/// The update is the reference's (came-pytorch 0.1.3), operation for operation: the squared-
/// gradient statistics, the clip over the whole tensor's update RMS, the momentum, the
/// confidence (instability) statistics for factored tensors, then decoupled weight decay
/// `p -= lr * weight_decay * p` and `p -= lr * update`. An empty tensor (a zero dim) is a no-op
/// that succeeds and counts the step.
///
/// ```
/// use came::{CameConfig, CameState, Shape};
/// let shape = Shape::new(&[2, 3])?;
/// let mut param = [0.5f32, -1.0, 0.25, 2.0, 0.0, -0.75];
/// let grad = [0.1f32, -0.2, 0.3, -0.4, 0.5, -0.6];
/// let mut buf = [0.0f32; came::state_len(&[2, 3])];
/// let mut state = CameState::new(&mut buf);
/// came::step(&CameConfig::new(1e-3), &shape, &mut param, &grad, &mut state)?;
/// assert_eq!(state.step_count(), 1);
/// # Ok::<(), came::Error>(())
/// ```
///
/// # Errors
/// - a config error from [`CameConfig::validate`];
/// - [`Error::LengthMismatch`] if a buffer's length does not match `shape`;
/// - [`Error::NonFiniteGradient`] if `grad` holds a NaN or an infinity;
/// - [`Error::NonFiniteUpdate`] if the gradient is so large that its square overflows `T`;
/// - [`Error::NonFiniteState`] if `state` holds a NaN or an infinity.
///
/// On every error the parameters are unchanged and so is the state, except where
/// [`Error::NonFiniteState`] says otherwise (the state was corrupt already).
pub fn step<P: Element, G: Element<Compute = P::Compute>>(
    config: &CameConfig,
    shape: &Shape,
    param: &mut [P],
    grad: &[G],
    state: &mut CameState<'_, P::Compute>,
) -> Result<StepInfo, Error> {
    step_on(&Serial, config, shape, param, grad, state)
}

/// [`step`] with the lanes run by `exec`.
pub(crate) fn step_on<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    config: &CameConfig,
    shape: &Shape,
    param: &mut [P],
    grad: &[G],
    state: &mut CameState<'_, T>,
) -> Result<StepInfo, Error> {
    let steps = state.step_count();
    let clip = prepare(
        exec,
        config,
        shape,
        param,
        grad,
        state.as_mut_slice(),
        steps,
    )?;
    finish(
        exec,
        (config, 0),
        shape,
        clip,
        param,
        grad,
        state.as_mut_slice(),
        steps,
    )?;
    state.advance();
    Ok(StepInfo {
        step: state.step_count(),
        update_rms: Some(clip.rms),
    })
}

/// The first half of a step, done for every tensor before any tensor is changed when a step
/// over many tensors must be all or nothing: validation, the new squared-gradient statistics
/// (kept in the state's workspace), the update's norm and the clip. Changes nothing but the
/// workspace; every error a step can report on a healthy state is found here. `steps` counts
/// the steps the tensor took before this one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    config: &CameConfig,
    shape: &Shape,
    param: &mut [P],
    grad: &[G],
    state: &mut [T],
    steps: u64,
) -> Result<Clip<T>, Error> {
    config.validate()?;
    check_tensor_lens(shape.numel(), param.len(), grad.len())?;
    check_len(shape, state.len())?;
    if shape.numel() == 0 {
        return Ok(Clip::none());
    }
    let k = Coefficients::new(config, steps);
    k.check(config)?;
    if shape.state_layout().momentum() != Momentum::Full && size_of::<T>() != 4 {
        return Err(Error::PackedMomentumNeedsF32);
    }
    let Some((dims, mut parts)) = parts::factored(shape, state) else {
        return vector::prepare(exec, &k, shape, grad, state);
    };
    if !parts.stats.valid() {
        return Err(Error::NonFiniteState);
    }
    if dims.batch == 1 {
        factored::prepare(exec, &k, dims, grad, &mut parts)
    } else {
        batch::prepare(exec, &k, dims, param, grad, &mut parts)
    }
}

/// The second half of a step, after [`prepare`] on the same tensor and state: commits the
/// statistics left in the workspace and updates momentum, instability statistics and
/// parameters. Does not count the step. `tensor` is the tensor's position in the step (for
/// stochastic rounding, [`crate::Rounding`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    (config, tensor): (&CameConfig, usize),
    shape: &Shape,
    clip: Clip<T>,
    param: &mut [P],
    grad: &[G],
    state: &mut [T],
    steps: u64,
) -> Result<(), Error> {
    if shape.numel() == 0 {
        return Ok(());
    }
    let k = Coefficients::new(config, steps).for_tensor(config, steps, tensor);
    // whether the step itself found every parameter it wrote finite
    let finite = if let Some((dims, mut parts)) = parts::factored(shape, state) {
        parts.commit_sq();
        if dims.batch == 1 {
            factored::update(exec, &k, dims, clip.d, param, grad, &mut parts)?
        } else {
            batch::update(exec, &k, dims, clip.d, param, grad, &mut parts)?
        }
    } else {
        vector::finish(exec, &k, shape, clip, param, grad, state);
        false
    };
    if finite { Ok(()) } else { check_range(param) }
}

/// [`Error::ParameterOverflow`] if a 16-bit parameter was rounded to an infinity (the
/// `f32` and `f64` steps check their results before writing them).
fn check_range<P: Element>(param: &[P]) -> Result<(), Error> {
    if !P::ROUNDS {
        return Ok(());
    }
    if all_finite_vectorised(param) {
        return Ok(());
    }
    let index = param
        .iter()
        .position(|p| !num_traits::Float::is_finite(p.to_compute()))
        .unwrap_or_default();
    Err(Error::ParameterOverflow { index })
}

/// [`Error::LengthMismatch`] unless the parameter and the gradient have `numel` elements.
pub(crate) fn check_tensor_lens(numel: usize, param: usize, grad: usize) -> Result<(), Error> {
    for (buffer, actual) in [(Buffer::Param, param), (Buffer::Grad, grad)] {
        if actual != numel {
            return Err(Error::LengthMismatch {
                buffer,
                expected: numel,
                actual,
            });
        }
    }
    Ok(())
}
