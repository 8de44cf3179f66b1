//! Why a checkpoint could not be saved or loaded.

use std::fmt;
use std::io;
use std::string::String;
use std::vec::Vec;

use crate::Error;

/// Why a checkpoint could not be saved or loaded. A failed load leaves the optimizer (and the
/// parameters passed to it) exactly as they were.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// Not a valid safetensors file: truncated, a corrupt header, offsets out of range.
    Format(String),
    /// The file holds another optimizer's state (`optimizer` metadata).
    WrongOptimizer {
        /// This optimizer's name.
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// A tensor or metadata entry the optimizer needs is missing.
    MissingKey(String),
    /// A tensor or metadata entry the optimizer does not know (another model's checkpoint,
    /// more tensors than are registered, a typo).
    UnknownKey(String),
    /// A tensor is stored in another dtype than the optimizer's.
    WrongDtype {
        /// The tensor.
        key: String,
        /// The optimizer's dtype.
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// A tensor's shape disagrees with the registered tensor's.
    ShapeMismatch {
        /// The tensor (or `shape.<i>` metadata).
        key: String,
        /// The registered shape.
        expected: Vec<usize>,
        /// The file's.
        found: Vec<usize>,
    },
    /// A metadata entry cannot be parsed or contradicts the optimizer (group count, a name).
    BadMetadata {
        /// The entry.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state tensor holds a NaN or an infinity. (The state of a tensor without elements is
    /// never read and not checked: came-pytorch stores NaN for its statistics over the empty
    /// dim, and they load as zeros.)
    NonFinite {
        /// The tensor.
        key: String,
    },
    /// A second-moment statistic (every state tensor but `exp_avg`) holds a negative value:
    /// they are averages of squares, so the file is corrupt.
    NegativeStatistic {
        /// The tensor.
        key: String,
    },
    /// A config in the file is invalid.
    Config(Error),
    /// The parameter slices passed do not match the registered tensors.
    Params {
        /// The first tensor that does not match, or the count when the count is wrong.
        tensor: usize,
        /// Elements (or tensors) expected.
        expected: usize,
        /// Elements (or tensors) passed.
        actual: usize,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io(e) => write!(f, "checkpoint i/o: {e}"),
            CheckpointError::Format(e) => write!(f, "not a valid safetensors file: {e}"),
            CheckpointError::WrongOptimizer { expected, found } => {
                write!(
                    f,
                    "checkpoint of optimizer {found:?}, expected {expected:?}"
                )
            }
            CheckpointError::MissingKey(k) => write!(f, "checkpoint lacks {k:?}"),
            CheckpointError::UnknownKey(k) => write!(f, "checkpoint has unknown entry {k:?}"),
            CheckpointError::WrongDtype {
                key,
                expected,
                found,
            } => write!(f, "{key}: dtype {found}, expected {expected}"),
            CheckpointError::ShapeMismatch {
                key,
                expected,
                found,
            } => write!(f, "{key}: shape {found:?}, expected {expected:?}"),
            CheckpointError::BadMetadata { key, reason } => write!(f, "metadata {key}: {reason}"),
            CheckpointError::NonFinite { key } => write!(f, "{key} holds a NaN or an infinity"),
            CheckpointError::NegativeStatistic { key } => {
                write!(
                    f,
                    "{key} is a second-moment statistic but holds a negative value"
                )
            }
            CheckpointError::Config(e) => write!(f, "checkpoint config: {e}"),
            CheckpointError::Params {
                tensor,
                expected,
                actual,
            } => write!(
                f,
                "parameters: tensor {tensor} has {actual} elements (or tensors), expected {expected}"
            ),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io(e) => Some(e),
            CheckpointError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for CheckpointError {
    fn from(e: io::Error) -> Self {
        CheckpointError::Io(e)
    }
}
