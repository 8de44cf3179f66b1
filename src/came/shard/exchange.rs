//! What the ranks of a sharded step exchange, and how: the exchanges of a step, why one
//! failed, how a piece of a rank's state spreads over the tensor's units, and the payloads'
//! bytes (values in this machine's order, as every rank of one job has it).

use std::vec::Vec;

use crate::{Error, Float};

/// Which sweep's results are exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// After sweep 1: the squared-gradient statistics and the norm.
    Norm,
    /// After sweep 1 of the matrices split by columns: their norm's parts.
    ColumnNorm,
    /// After sweep 2: the instability statistics.
    Momentum,
}

/// Why a tensor's step failed on some rank: every rank finds the same failure in the same
/// exchanged data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Sweep 1: a new statistic or the norm is not finite, or a state was corrupt; which one
    /// is decided from every rank's [`Part::local_error`].
    Norm,
    /// Sweep 2: a new instability statistic is not finite (the state was corrupt).
    State,
}

/// How a piece of a rank's state spreads over the tensor's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    /// This many values per unit (row, matrix or element) the rank owns.
    PerUnit(usize),
    /// This many values, the same on every rank that owns a unit of the tensor (a matrix's
    /// column statistics).
    Shared(usize),
    /// This many rows of the units the rank owns, row-major (the momentum of a matrix split by
    /// columns: `rows x` its columns).
    Block(usize),
}

/// A gradient error of a rank's elements with the index in the whole tensor.
pub(crate) fn globally(error: Error, start: usize) -> Error {
    match error {
        Error::NonFiniteGradient { index } => Error::NonFiniteGradient {
            index: start + index,
        },
        e => e,
    }
}

/// Appends values to a payload.
pub(crate) fn push<T: Float>(out: &mut Vec<u8>, values: &[T]) {
    out.extend_from_slice(bytemuck::cast_slice(values));
}

/// Reads `into.len()` values from the front of a payload.
pub(crate) fn take<T: Float>(data: &mut &[u8], into: &mut [T]) {
    let (head, tail) = data.split_at(size_of_val(into));
    for (x, b) in into.iter_mut().zip(head.chunks_exact(size_of::<T>())) {
        *x = bytemuck::pod_read_unaligned(b);
    }
    *data = tail;
}

/// Reads an `f64` from the front of a payload.
pub(crate) fn take_f64(data: &mut &[u8]) -> f64 {
    let (head, tail) = data.split_at(8);
    *data = tail;
    f64::from_le_bytes(head.try_into().expect("eight bytes"))
}
