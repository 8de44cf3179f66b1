//! Stepping several tensors at once.

use crate::lanes::{Executor, Serial};
use crate::state::check_len;
use core::marker::PhantomData;

use crate::lanes::LaneKernel;
use crate::simd::Ops;
use crate::step::{check_tensor_lens, finish, prepare};

use crate::{CameConfig, CameState, Error, Float, Shape};

/// One tensor of a multi-tensor step: its shape and borrowed parameter, gradient and state.
#[derive(Debug)]
pub struct TensorStep<'a, 's, T> {
    /// The tensor's shape.
    pub shape: Shape,
    /// The parameters, `shape.numel()` elements.
    pub param: &'a mut [T],
    /// The gradient, `shape.numel()` elements.
    pub grad: &'a [T],
    /// The tensor's state.
    pub state: &'a mut CameState<'s, T>,
}

/// An error of a multi-tensor step, with the position of the tensor it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorError {
    /// Position of the tensor in the slice that was stepped.
    pub tensor: usize,
    /// What went wrong with it.
    pub error: Error,
}

impl core::fmt::Display for TensorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "tensor {}: {}", self.tensor, self.error)
    }
}

impl core::error::Error for TensorError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Steps every tensor with one config, without allocating, all or nothing.
///
/// The config and every buffer length are checked first. Then the first half of every
/// tensor's step runs (the squared-gradient statistics and the clip, written only to each
/// state's workspace): a NaN or infinite gradient, an overflow or a corrupt statistic in any
/// tensor stops the step there, with no parameter and no state changed, like the loss-scale
/// guard of a mixed-precision trainer. This costs nothing extra: those sweeps are part of the
/// step anyway. Only then are the tensors updated.
///
/// ```
/// use came::{CameConfig, CameState, Shape, TensorStep};
/// let shapes = [Shape::new(&[4, 3])?, Shape::new(&[3])?];
/// let (mut w, mut b) = ([0.5f32; 12], [0.1f32; 3]);
/// let (mut sw, mut sb) = ([0.0f32; came::state_len(&[4, 3])], [0.0f32; came::state_len(&[3])]);
/// let (mut state_w, mut state_b) = (CameState::new(&mut sw), CameState::new(&mut sb));
/// let (gw, gb) = ([0.1f32; 12], [0.2f32; 3]);
/// let mut tensors: heapless::Vec<TensorStep<'_, '_, f32>, 8> = heapless::Vec::new();
/// tensors.push(TensorStep { shape: shapes[0], param: &mut w, grad: &gw, state: &mut state_w }).unwrap();
/// tensors.push(TensorStep { shape: shapes[1], param: &mut b, grad: &gb, state: &mut state_b }).unwrap();
/// came::step_all(&CameConfig::new(1e-2), &mut tensors)?;
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
///
/// # Errors
/// The error of the first failing tensor, with its position; nothing was changed, except for a
/// [`Error::NonFiniteState`] found in the second half (a momentum corrupted before the step,
/// see there).
pub fn step_all<T: Float>(
    config: &CameConfig,
    tensors: &mut [TensorStep<'_, '_, T>],
) -> Result<(), TensorError> {
    validate_all(config, tensors)?;
    for (i, t) in tensors.iter_mut().enumerate() {
        if let Some(e) = prepare_one(&Serial, config, i, t) {
            return Err(e);
        }
    }
    let mut first = None;
    for (i, t) in tensors.iter_mut().enumerate() {
        first = first_error(first, finish_one(&Serial, config, i, t));
    }
    first.map_or(Ok(()), Err)
}

/// Checks a gradient for NaN and infinities, cheaply (one vectorised read).
///
/// A step finds these by itself and refuses to run; this is for trainers that want to know
/// before doing anything else with a gradient (clipping it, accumulating it, stepping AdamW).
///
/// # Errors
/// [`Error::NonFiniteGradient`] with the flat position of the first bad element.
pub fn check_gradient<T: Float>(grad: &[T]) -> Result<(), Error> {
    scan_gradient(grad).map(|_| ())
}

/// [`check_gradient`], and whether the square of some (finite) element overflows `T`.
pub(crate) fn scan_gradient<T: Float>(grad: &[T]) -> Result<SquaresOverflow, Error> {
    let mut check = (grad, false);
    crate::simd::run(&SquareCheck(PhantomData), &mut check);
    if !check.1 {
        return Ok(SquaresOverflow(false));
    }
    match grad.iter().position(|g| !g.is_finite()) {
        Some(index) => Err(Error::NonFiniteGradient { index }),
        None => Ok(SquaresOverflow(true)),
    }
}

/// Whether the square of a gradient element overflows the float type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SquaresOverflow(pub bool);

/// Sums `x² - x²` over a slice: 0 when every element and its square are finite, NaN otherwise.
struct SquareCheck<'a, T>(PhantomData<&'a T>);

impl<'a, T: Float> LaneKernel for SquareCheck<'a, T> {
    /// the values, and whether any is NaN or infinite or has an infinite square
    type Item = (&'a [T], bool);

    #[inline(always)]
    fn run<S: pulp::Simd>(&self, simd: S, (x, bad): &mut Self::Item) {
        let o = Ops::<S, T>::new(simd);
        let (xv, xt) = T::as_simd::<S>(x);
        let mut acc = o.splat(T::zero());
        for &v in xv {
            let sq = o.mul(v, v);
            acc = o.add(acc, o.sub(sq, sq));
        }
        let mut sum = o.sum(acc);
        for &v in xt {
            sum = sum + crate::kernels::finite_or_nan(v * v);
        }
        *bad = sum != T::zero();
    }
}

/// Checks the config and every tensor's buffer lengths.
pub(crate) fn validate_all<T: Float>(
    config: &CameConfig,
    tensors: &[TensorStep<'_, '_, T>],
) -> Result<(), TensorError> {
    config
        .validate()
        .map_err(|error| TensorError { tensor: 0, error })?;
    for (i, t) in tensors.iter().enumerate() {
        check_tensor_lens(t.shape.numel(), t.param.len(), t.grad.len())
            .and_then(|()| check_len(&t.shape, t.state.as_slice().len()))
            .map_err(|error| TensorError { tensor: i, error })?;
    }
    Ok(())
}

/// The first half of tensor `i`'s step, its lanes on `exec`; the clip waits in its state.
pub(crate) fn prepare_one<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    i: usize,
    t: &mut TensorStep<'_, '_, T>,
) -> Option<TensorError> {
    match prepare(
        exec,
        config,
        &t.shape,
        t.param,
        t.grad,
        t.state.as_mut_slice(),
    ) {
        Ok(clip) => {
            t.state.set_pending(clip);
            None
        }
        Err(error) => Some(TensorError { tensor: i, error }),
    }
}

/// The second half of tensor `i`'s step, after [`prepare_one`].
pub(crate) fn finish_one<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    i: usize,
    t: &mut TensorStep<'_, '_, T>,
) -> Option<TensorError> {
    let clip = match t.state.take_pending() {
        Some(clip) => Ok(clip),
        None => prepare(
            exec,
            config,
            &t.shape,
            t.param,
            t.grad,
            t.state.as_mut_slice(),
        ),
    };
    let result = clip.and_then(|clip| {
        finish(
            exec,
            config,
            &t.shape,
            clip,
            t.param,
            t.grad,
            t.state.as_mut_slice(),
        )
    });
    match result {
        Ok(()) => {
            t.state.advance();
            None
        }
        Err(error) => Some(TensorError { tensor: i, error }),
    }
}

/// The error of the lower-numbered tensor.
pub(crate) fn first_error(a: Option<TensorError>, b: Option<TensorError>) -> Option<TensorError> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.tensor <= b.tensor { a } else { b }),
        (a, b) => a.or(b),
    }
}
