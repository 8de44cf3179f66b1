//! Why a checkpoint could not be saved or loaded.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::string::String;
use std::vec::Vec;

use crate::Error;

/// Why a checkpoint could not be saved or loaded. A failed load leaves the optimizer (and the
/// parameters passed to it) exactly as they were.
///
/// Every error of a call that reads or writes a file comes wrapped in
/// [`CheckpointError::File`], which names the file; the errors of the calls on bytes
/// ([`crate::CpuOptimizer::load_safetensors`], [`crate::CpuOptimizer::to_safetensors`]) come as
/// they are. Each error about one tensor names it: its position in registration order, its
/// name, and the file's key.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The error happened reading or writing this file.
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::boxed::Box<CheckpointError>,
    },
    /// Reading or writing failed (a missing file or directory, no permission, a full disk).
    Io(io::Error),
    /// The file ends before its own header says it does: it was cut short (a copy or a
    /// download that did not finish).
    Truncated {
        /// Bytes the file has.
        actual: usize,
        /// Bytes its header (or the 8-byte length before it) needs.
        needed: usize,
        /// What is cut: `"the header length"`, `"the header"`, or the first tensor that does
        /// not fit.
        place: String,
    },
    /// Not a valid safetensors file: a corrupt header, offsets out of range.
    Format(String),
    /// A tensor's bytes or the metadata do not match the checksum stored with them: the file
    /// was changed or damaged after it was written. Files written before checksums existed
    /// (and files converted from PyTorch) have none and are not checked.
    Corrupt {
        /// The tensor, or `"metadata"`.
        key: String,
    },
    /// The file holds another optimizer's state (`optimizer` metadata).
    WrongOptimizer {
        /// This optimizer's name.
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// The file holds the state of another number of tensors than are registered.
    TensorCount {
        /// Tensors in the file.
        file: usize,
        /// Tensors registered in the optimizer.
        optimizer: usize,
    },
    /// A tensor or metadata entry the optimizer needs is missing.
    MissingKey(String),
    /// A tensor or metadata entry the optimizer does not know (another model's checkpoint, a
    /// typo).
    UnknownKey(String),
    /// A tensor is stored in another dtype than the optimizer's.
    WrongDtype {
        /// The file's key of the tensor.
        key: String,
        /// The optimizer's dtype, as safetensors names it (`F32`, `F64`).
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// A registered tensor's shape (or that of a piece of its state) disagrees with the file's.
    ShapeMismatch {
        /// Position of the tensor in registration order.
        index: usize,
        /// Its registered name.
        name: String,
        /// The file's key (`shape.<i>` metadata or a state tensor).
        key: String,
        /// The shape the optimizer has.
        optimizer: Vec<usize>,
        /// The file's.
        file: Vec<usize>,
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
    /// Another number of parameter buffers was passed than tensors are registered.
    ParamCount {
        /// Registered tensors.
        expected: usize,
        /// Buffers passed.
        actual: usize,
    },
    /// A parameter buffer passed has another length than its registered tensor.
    ParamLength {
        /// Position of the tensor in registration order.
        index: usize,
        /// Its registered name.
        name: String,
        /// Elements of the registered tensor.
        expected: usize,
        /// Elements of the buffer passed.
        actual: usize,
    },
}

impl CheckpointError {
    /// This error, as it happened to the file at `path`.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        CheckpointError::File {
            path: path.to_path_buf(),
            error: std::boxed::Box::new(self),
        }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::File { path, error } => write!(f, "{}: {error}", path.display()),
            CheckpointError::Io(e) => write!(f, "{e}"),
            CheckpointError::Truncated {
                actual,
                needed,
                place,
            } => write!(
                f,
                "the file is truncated: it has {actual} bytes, {place} needs {needed}"
            ),
            CheckpointError::Format(e) => write!(f, "not a valid safetensors file: {e}"),
            CheckpointError::Corrupt { key } => write!(
                f,
                "{key} does not match the checksum stored with it: the file was changed or \
                 damaged after it was written"
            ),
            CheckpointError::WrongOptimizer { expected, found } => write!(
                f,
                "the file holds the state of optimizer {found:?}, this optimizer is {expected:?}"
            ),
            CheckpointError::TensorCount { file, optimizer } => write!(
                f,
                "the file holds {file} tensors, the optimizer has {optimizer} registered"
            ),
            CheckpointError::MissingKey(k) => write!(f, "the file lacks {k:?}"),
            CheckpointError::UnknownKey(k) => {
                write!(f, "the file has {k:?}, which the optimizer does not know")
            }
            CheckpointError::WrongDtype {
                key,
                expected,
                found,
            } => write!(
                f,
                "{key}: the file stores {found}, the optimizer's dtype is {expected}"
            ),
            CheckpointError::ShapeMismatch {
                index,
                name,
                key,
                optimizer,
                file,
            } => write!(
                f,
                "tensor {index} ({name:?}): the file's {key} has shape {file:?}, the optimizer \
                 has {optimizer:?}"
            ),
            CheckpointError::BadMetadata { key, reason } => write!(f, "metadata {key}: {reason}"),
            CheckpointError::NonFinite { key } => write!(f, "{key} holds a NaN or an infinity"),
            CheckpointError::NegativeStatistic { key } => write!(
                f,
                "{key} is a second-moment statistic but holds a negative value"
            ),
            CheckpointError::Config(e) => write!(f, "the file's config: {e}"),
            CheckpointError::ParamCount { expected, actual } => write!(
                f,
                "{actual} parameter buffers passed for {expected} registered tensors"
            ),
            CheckpointError::ParamLength {
                index,
                name,
                expected,
                actual,
            } => write!(
                f,
                "tensor {index} ({name:?}): its parameter buffer has {actual} elements, the \
                 tensor {expected}"
            ),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::File { error, .. } => Some(error.as_ref()),
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
