//! What can go wrong on the GPU path.

use std::fmt;
use std::string::String;

use cudarc::driver::DriverError;

use crate::optim::{CheckpointError, OptimizerError};

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
    /// Saving or loading a checkpoint failed (after the state moved to or from the GPU).
    Checkpoint(CheckpointError),
    /// What the GPU path does not run, named in the message: the kernels compute CAME with its
    /// confidence term and the reference's instability statistics, and keep the momentum in
    /// the compute type, so `confidence = false` (the Adafactor baseline),
    /// `Instability::BiasCorrected` and bf16 or 8-bit momentum (`Momentum::Bf16`,
    /// `Momentum::Int8`) run on the CPU only.
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
            CudaError::Checkpoint(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CudaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CudaError::Driver(e) => Some(e),
            CudaError::Optimizer(e) => Some(e),
            CudaError::Checkpoint(e) => Some(e),
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

impl From<CheckpointError> for CudaError {
    fn from(e: CheckpointError) -> Self {
        CudaError::Checkpoint(e)
    }
}
