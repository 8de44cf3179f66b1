//! Stepping several tensors at once.

use crate::lanes::{Executor, Serial};
use crate::state::check_len;
use crate::step::{check_tensor_lens, step_on};

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
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// Steps every tensor with one config, in order, without allocating.
///
/// The config and every buffer length are checked before any tensor is stepped. A tensor
/// whose step fails on its numbers (see [`crate::step`]) is left unchanged and the others still
/// take their step, so the outcome is the same whatever order or thread runs them.
///
/// # Errors
/// A config or length error (nothing is changed), or else the numeric error of the first
/// failing tensor.
pub fn step_all<T: Float>(
    config: &CameConfig,
    tensors: &mut [TensorStep<'_, '_, T>],
) -> Result<(), TensorError> {
    validate_all(config, tensors)?;
    let mut first = None;
    for (i, t) in tensors.iter_mut().enumerate() {
        first = first_error(first, step_one(&Serial, config, i, t));
    }
    first.map_or(Ok(()), Err)
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

/// Steps tensor `i`, its lanes on `exec`.
pub(crate) fn step_one<T: Float, E: Executor>(
    exec: &E,
    config: &CameConfig,
    i: usize,
    t: &mut TensorStep<'_, '_, T>,
) -> Option<TensorError> {
    step_on(exec, config, &t.shape, t.param, t.grad, t.state)
        .err()
        .map(|error| TensorError { tensor: i, error })
}

/// The error of the lower-numbered tensor.
pub(crate) fn first_error(a: Option<TensorError>, b: Option<TensorError>) -> Option<TensorError> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.tensor <= b.tensor { a } else { b }),
        (a, b) => a.or(b),
    }
}
