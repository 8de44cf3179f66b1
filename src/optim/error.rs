//! What can go wrong in the owned optimizers.

use std::fmt;
use std::string::String;
use std::vec::Vec;

use crate::Error;

/// What went wrong in an owned optimizer (CPU or GPU).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OptimizerError {
    /// A group's hyperparameters are invalid (see [`Error`] for each case).
    Config(Error),
    /// No group with this id.
    UnknownGroup(usize),
    /// A tensor with this name is registered already.
    DuplicateName(String),
    /// The tensor's shape is too large (see [`Error::ShapeOverflow`]).
    Shape {
        /// The tensor's name.
        name: String,
        /// The shape error.
        error: Error,
    },
    /// A step got this many `(param, grad)` pairs for `expected` registered tensors. Nothing
    /// was changed.
    TensorCount {
        /// Registered tensors.
        expected: usize,
        /// Pairs passed.
        actual: usize,
    },
    /// One tensor's step failed. With the non-finite guard on (the default), nothing at all
    /// was changed (see [`crate::CpuOptimizer::set_nonfinite_guard`]).
    Tensor {
        /// Position of the tensor in registration order.
        index: usize,
        /// The tensor's name.
        name: String,
        /// What went wrong, e.g. [`Error::NonFiniteGradient`] with the element's position.
        error: Error,
    },
    /// Two optimizers (a GPU one and the CPU one whose state it is to take, say) do not have
    /// the same groups and tensors. Nothing was changed.
    Mismatch(Mismatch),
    /// A learning-rate scale that is not finite and > 0. Nothing was changed.
    LrScale(f64),
}

/// How the registrations of two optimizers differ: the first difference found, in the order
/// group count, tensor count, then tensor by tensor its name, dims and group. "Here" is the
/// optimizer that was called, "there" the one it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mismatch {
    /// Different numbers of parameter groups.
    GroupCount {
        /// Groups here.
        here: usize,
        /// Groups there.
        there: usize,
    },
    /// Different numbers of registered tensors.
    TensorCount {
        /// Tensors here.
        here: usize,
        /// Tensors there.
        there: usize,
    },
    /// Tensor `index` is registered under another name.
    Name {
        /// Position in registration order.
        index: usize,
        /// Its name here.
        here: String,
        /// Its name there.
        there: String,
    },
    /// Tensor `index` has other dims.
    Dims {
        /// Position in registration order.
        index: usize,
        /// Its name.
        name: String,
        /// Its dims here.
        here: Vec<usize>,
        /// Its dims there.
        there: Vec<usize>,
    },
    /// Tensor `index` is in another parameter group.
    Group {
        /// Position in registration order.
        index: usize,
        /// Its name.
        name: String,
        /// Its group here.
        here: usize,
        /// Its group there.
        there: usize,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::GroupCount { here, there } => {
                write!(f, "{here} parameter groups here, {there} there")
            }
            Mismatch::TensorCount { here, there } => {
                write!(f, "{here} registered tensors here, {there} there")
            }
            Mismatch::Name { index, here, there } => {
                write!(f, "tensor {index} is {here:?} here, {there:?} there")
            }
            Mismatch::Dims {
                index,
                name,
                here,
                there,
            } => write!(
                f,
                "tensor {index} ({name:?}) has dims {here:?} here, {there:?} there"
            ),
            Mismatch::Group {
                index,
                name,
                here,
                there,
            } => write!(
                f,
                "tensor {index} ({name:?}) is in group {here} here, {there} there"
            ),
        }
    }
}

impl fmt::Display for OptimizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerError::Config(e) => write!(f, "invalid config: {e}"),
            OptimizerError::UnknownGroup(g) => write!(f, "no parameter group {g}"),
            OptimizerError::DuplicateName(n) => write!(f, "tensor {n:?} is registered already"),
            OptimizerError::Shape { name, error } => write!(f, "tensor {name:?}: {error}"),
            OptimizerError::TensorCount { expected, actual } => write!(
                f,
                "step got {actual} (param, grad) pairs for {expected} registered tensors"
            ),
            OptimizerError::Tensor { index, name, error } => {
                write!(f, "tensor {index} ({name:?}): {error}")
            }
            OptimizerError::Mismatch(m) => write!(f, "the optimizers' registrations differ: {m}"),
            OptimizerError::LrScale(x) => {
                write!(f, "a learning-rate scale must be finite and > 0, got {x}")
            }
        }
    }
}

impl std::error::Error for OptimizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptimizerError::Config(e)
            | OptimizerError::Shape { error: e, .. }
            | OptimizerError::Tensor { error: e, .. } => Some(e),
            _ => None,
        }
    }
}
