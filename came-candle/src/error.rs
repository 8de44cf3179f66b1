//! What can go wrong, naming the var it happened to.

use std::fmt;

use candle::{DType, DeviceLocation};

/// Why a call of [`Came`](crate::Came) failed. Every error about one var names it: its name
/// (the `VarMap` name it was registered under, or `var.<i>` for an unnamed var, `i` its
/// position in registration order) and, where it matters, its position.
///
/// A failed step changes nothing (but with the non-finite guard off, where the other vars take
/// their step, and after a momentum that was corrupt already, see [`came::Error::NonFiniteState`]);
/// a failed registration registers nothing of the group it was given; a failed load leaves the
/// optimizer and the vars as they were.
///
/// The [`candle_nn::Optimizer`] methods return `candle::Error`s: this error reaches them as
/// `candle::Error::Wrapped`, with the same message ([`Error::Candle`] as the candle error it
/// holds). The inherent methods ([`Came::step_report`](crate::Came::step_report),
/// [`Came::try_set_learning_rate`](crate::Came::try_set_learning_rate), ...) return it as it
/// is.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The core optimizer refused a call: invalid hyperparameters
    /// ([`came::OptimizerError::Config`], e.g. a learning rate that is not finite and > 0), a
    /// name registered twice, a shape too large, an unknown group.
    Optimizer(came::OptimizerError),
    /// One var's step failed: a NaN or infinite gradient element, a gradient whose square
    /// overflows, a corrupt state. With the non-finite guard on (the default) no var was
    /// changed.
    Tensor {
        /// The var's position in registration order.
        index: usize,
        /// Its name.
        name: String,
        /// What went wrong, with the element's flat position where there is one.
        error: came::Error,
    },
    /// Saving or loading a checkpoint failed (the core's error, which names the file and the
    /// tensor).
    Checkpoint(came::CheckpointError),
    /// The var is stored in a type CAME does not step: only `F32`, `F64`, `BF16` and `F16` are
    /// (integer vars are left out, as candle's own optimizers leave them out).
    UnsupportedDtype {
        /// The var's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// The var lives on a device this build cannot step in place: only the CPU.
    UnsupportedDevice {
        /// The var's name.
        name: String,
        /// Its device.
        device: DeviceLocation,
    },
    /// The var is a strided view (a transpose, a narrow, a broadcast) rather than a contiguous
    /// block of its buffer. The step runs on the var's own buffer and never copies it: make the
    /// var from a contiguous tensor (`Var::from_tensor(&t.contiguous()?)`).
    NonContiguous {
        /// The var's name.
        name: String,
        /// Its dims.
        dims: Vec<usize>,
        /// Its strides, in elements.
        stride: Vec<usize>,
    },
    /// The same var was given twice.
    DuplicateVar {
        /// The name it was given the second time.
        name: String,
        /// The name it is registered under.
        first: String,
    },
    /// Two different vars share one buffer (views of each other): stepping both in place would
    /// update the shared elements twice.
    SharedStorage {
        /// The var being registered.
        name: String,
        /// The registered var whose buffer it shares.
        other: String,
    },
    /// A gradient shares its buffer with a registered var (a `GradStore` filled by hand with a
    /// view of a var): the var cannot be written while its own gradient or another's is read
    /// from the same buffer.
    GradAliasesVar {
        /// The var whose gradient it is.
        name: String,
        /// The var whose buffer the gradient shares.
        var: String,
    },
    /// A gradient's dtype differs from its var's.
    GradDtype {
        /// The var's name.
        name: String,
        /// The var's dtype.
        var: DType,
        /// The gradient's.
        grad: DType,
    },
    /// A gradient's dims differ from its var's.
    GradShape {
        /// The var's name.
        name: String,
        /// The var's dims.
        var: Vec<usize>,
        /// The gradient's.
        grad: Vec<usize>,
    },
    /// A gradient lives on another device than its var.
    GradDevice {
        /// The var's name.
        name: String,
        /// The var's device.
        var: DeviceLocation,
        /// The gradient's.
        grad: DeviceLocation,
    },
    /// A checkpoint of vars of several dtypes: the core's checkpoint files hold the state of
    /// one parameter type, so only an optimizer whose vars share one dtype saves and loads.
    MixedDtypes {
        /// The dtypes of the registered vars, in order of first appearance.
        dtypes: Vec<DType>,
    },
    /// The threads set with [`Came::set_threads`](crate::Came::set_threads) could not be
    /// started for the first var of a dtype.
    Threads(std::io::Error),
    /// candle failed while the vars were locked or a gradient was read.
    Candle(candle::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Optimizer(e) => write!(f, "{e}"),
            Error::Tensor { index, name, error } => {
                write!(f, "var {index} ({name:?}): {error}")
            }
            Error::Checkpoint(e) => write!(f, "checkpoint: {e}"),
            Error::UnsupportedDtype { name, dtype } => write!(
                f,
                "var {name:?} is {dtype:?}; CAME steps F32, F64, BF16 and F16 vars"
            ),
            Error::UnsupportedDevice { name, device } => write!(
                f,
                "var {name:?} is on {device:?}; this build of came-candle steps CPU vars"
            ),
            Error::NonContiguous { name, dims, stride } => write!(
                f,
                "var {name:?} (dims {dims:?}) is strided (strides {stride:?}), not contiguous; \
                 its buffer is stepped in place and never copied"
            ),
            Error::DuplicateVar { name, first } => {
                write!(f, "var {name:?} is registered already, as {first:?}")
            }
            Error::SharedStorage { name, other } => {
                write!(f, "var {name:?} shares its buffer with var {other:?}")
            }
            Error::GradAliasesVar { name, var } => write!(
                f,
                "the gradient of var {name:?} shares its buffer with var {var:?}"
            ),
            Error::GradDtype { name, var, grad } => write!(
                f,
                "the gradient of var {name:?} is {grad:?}, the var {var:?}"
            ),
            Error::GradShape { name, var, grad } => write!(
                f,
                "the gradient of var {name:?} has dims {grad:?}, the var {var:?}"
            ),
            Error::GradDevice { name, var, grad } => write!(
                f,
                "the gradient of var {name:?} is on {grad:?}, the var on {var:?}"
            ),
            Error::MixedDtypes { dtypes } => write!(
                f,
                "a checkpoint holds vars of one dtype; these vars are {dtypes:?}"
            ),
            Error::Threads(e) => write!(f, "starting the optimizer's threads: {e}"),
            Error::Candle(e) => write!(f, "candle: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Optimizer(e) => Some(e),
            Error::Tensor { error, .. } => Some(error),
            Error::Checkpoint(e) => Some(e),
            Error::Threads(e) => Some(e),
            Error::Candle(e) => Some(e),
            _ => None,
        }
    }
}

impl From<came::OptimizerError> for Error {
    fn from(e: came::OptimizerError) -> Self {
        Error::Optimizer(e)
    }
}

impl From<came::CheckpointError> for Error {
    fn from(e: came::CheckpointError) -> Self {
        Error::Checkpoint(e)
    }
}

impl From<candle::Error> for Error {
    fn from(e: candle::Error) -> Self {
        Error::Candle(e)
    }
}

impl From<Error> for candle::Error {
    /// A candle error stays what it was; every other error is wrapped with its message.
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            e => candle::Error::Wrapped(Box::new(e)),
        }
    }
}
