//! One CAME step over one tensor.

mod factored;
mod small;
mod vector;

use crate::config::Coefficients;
use crate::error::Buffer;
use crate::lanes::{Executor, Serial};
use crate::state::check_len;
use crate::{CameConfig, CameState, Error, Float, Layout, Shape};

/// What a successful step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// The state's step count after this step (1 after the first step).
    pub step: u64,
    /// Root mean square of the update before clipping; above `clip_threshold` the update was
    /// scaled down to it. 0 for an empty tensor.
    pub update_rms: f64,
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
pub fn step<T: Float>(
    config: &CameConfig,
    shape: &Shape,
    param: &mut [T],
    grad: &[T],
    state: &mut CameState<'_, T>,
) -> Result<StepInfo, Error> {
    step_on(&Serial, config, shape, param, grad, state)
}

/// [`step`] with the lanes run by `exec`.
pub(crate) fn step_on<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    shape: &Shape,
    param: &mut [T],
    grad: &[T],
    state: &mut CameState<'_, T>,
) -> Result<StepInfo, Error> {
    let clip = prepare(exec, config, shape, param, grad, state.as_mut_slice())?;
    finish(exec, config, shape, clip, param, grad, state.as_mut_slice())?;
    state.advance();
    Ok(StepInfo {
        step: state.step_count(),
        update_rms: clip.rms,
    })
}

/// The first half of a step, done for every tensor before any tensor is changed when a step
/// over many tensors must be all or nothing: validation, the new squared-gradient statistics
/// (kept in the state's workspace), the update's norm and the clip. Changes nothing but the
/// workspace; every error a step can report on a healthy state is found here.
pub(crate) fn prepare<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    shape: &Shape,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<Clip<T>, Error> {
    config.validate()?;
    check_tensor_lens(shape.numel(), param.len(), grad.len())?;
    check_len(shape, state.len())?;
    if shape.numel() == 0 {
        return Ok(Clip {
            d: T::one(),
            rms: 0.0,
        });
    }
    let k = Coefficients::new(config);
    match shape.layout() {
        Layout::Vector { .. } => vector::prepare(exec, &k, shape, grad, state),
        Layout::Factored { batch, rows, cols } => {
            let dims = factored_dims(shape, batch, rows, cols);
            factored::prepare(exec, &k, dims, param, grad, state)
        }
    }
}

/// The second half of a step, after [`prepare`] on the same tensor and state: commits the
/// statistics left in the workspace and updates momentum, instability statistics and
/// parameters. Does not count the step.
pub(crate) fn finish<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    shape: &Shape,
    clip: Clip<T>,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<(), Error> {
    if shape.numel() == 0 {
        return Ok(());
    }
    let k = Coefficients::new(config);
    match shape.layout() {
        Layout::Vector { .. } => {
            vector::finish(exec, &k, shape, clip, param, grad, state);
            Ok(())
        }
        Layout::Factored { batch, rows, cols } => {
            let dims = factored_dims(shape, batch, rows, cols);
            factored::finish(exec, &k, dims, clip, param, grad, state)
        }
    }
}

fn factored_dims(shape: &Shape, batch: usize, rows: usize, cols: usize) -> factored::Dims {
    factored::Dims {
        batch,
        rows,
        cols,
        lanes: shape.lanes(),
    }
}

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

/// The clip of one step: the divisor `d = max(1, rms / clip_threshold)` and the update's RMS.
#[derive(Clone, Copy, Debug)]
pub struct Clip<T> {
    pub(crate) d: T,
    pub(crate) rms: f64,
}

/// The clip divisor `max(1, rms / clip_threshold)` in `T`, as the reference computes it
/// (`norm / sqrt(numel)`, each rounded to the tensor's dtype), and the RMS in `f64`.
fn clip_divisor<T: Float>(sum_sq: f64, numel: usize, clip_threshold: T) -> Clip<T> {
    let norm = num_traits::Float::sqrt(sum_sq);
    let sqrt_n = num_traits::Float::sqrt(numel as f64);
    let rms = T::from_f64(norm) / T::from_f64(sqrt_n);
    let ratio = rms / clip_threshold;
    let d = if ratio > T::one() { ratio } else { T::one() };
    Clip {
        d,
        rms: norm / sqrt_n,
    }
}

/// Which error explains a non-finite statistic: a bad gradient element, or an overflow of a
/// update from finite inputs (the state was checked before).
fn gradient_error<T: Float>(grad: &[T]) -> Error {
    match grad.iter().position(|g| !g.is_finite()) {
        Some(index) => Error::NonFiniteGradient { index },
        None => Error::NonFiniteUpdate,
    }
}

/// Values checked between early exits: within a chunk the checks have no branch per value
/// (the statistics of a batch of small matrices are as long as its data).
const CHECK_CHUNK: usize = 256;

/// Whether every value is finite.
pub(crate) fn all_finite<T: Float>(values: &[T]) -> bool {
    let finite = |ok, v: &T| ok & v.is_finite();
    values
        .chunks(CHECK_CHUNK)
        .all(|c| c.iter().fold(true, finite))
}

/// Whether every value is a possible second-moment statistic: finite and not negative (an
/// average of squares).
pub(crate) fn valid_statistics<T: Float>(values: &[T]) -> bool {
    let zero = T::zero();
    // bitwise, not lazy: no branch per value
    #[allow(clippy::needless_bitwise_bool)]
    let valid = |ok, &v: &T| ok & v.is_finite() & (v >= zero);
    values
        .chunks(CHECK_CHUNK)
        .all(|c| c.iter().fold(true, valid))
}
