//! Borrowed views over caller-owned optimizer state.

use crate::step::Clip;
use crate::{Error, Float, Layout, Shape, error::Buffer};

/// CAME state for one tensor: a view over one caller-owned buffer plus the step count.
///
/// The buffer holds, in order: `exp_avg` (the momentum, `numel` values), then for a factored
/// tensor `exp_avg_sq_row`, `exp_avg_sq_col`, `exp_avg_res_row`, `exp_avg_res_col` (each
/// `batch x rows` or `batch x cols`) and a scratch workspace the step uses instead of allocating;
/// for a vector `exp_avg_sq` (`numel` values). [`Shape::state_len`] gives the exact length.
///
/// A zeroed buffer is a fresh optimizer, exactly like the reference's lazy initialisation.
/// The workspace holds nothing between steps: checkpoints need only the named pieces
/// ([`CameState::parts`]) and the step count. A step uses it as scratch space even when it
/// fails; "the state is unchanged" always means the named pieces and the step count.
#[derive(Debug)]
pub struct CameState<'a, T> {
    data: &'a mut [T],
    step: u64,
    /// The clip of a step over many tensors, between its two halves.
    pending: Option<Clip<T>>,
}

impl<'a, T: Float> CameState<'a, T> {
    /// A fresh state: zeroes `data` and sets the step count to 0.
    pub fn new(data: &'a mut [T]) -> Self {
        data.fill(T::zero());
        Self::from_parts(data, 0)
    }

    /// Resumes from a buffer that already holds state, after `step` steps.
    pub fn from_parts(data: &'a mut [T], step: u64) -> Self {
        Self {
            data,
            step,
            pending: None,
        }
    }

    /// Gives back the buffer and the step count.
    #[must_use]
    pub fn into_parts(self) -> (&'a mut [T], u64) {
        (self.data, self.step)
    }

    /// Number of successful steps taken with this state.
    #[must_use]
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The whole buffer.
    #[must_use]
    pub fn as_slice(&self) -> &[T] {
        self.data
    }

    /// Zeroes the buffer and the step count: a fresh optimizer again.
    pub fn reset(&mut self) {
        self.data.fill(T::zero());
        self.step = 0;
    }

    /// The named pieces of the state, under the reference's names.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if the buffer's length is not `shape.state_len()`.
    pub fn parts(&self, shape: &Shape) -> Result<StateParts<&[T]>, Error> {
        check_len(shape, self.data.len())?;
        let n = shape.numel();
        let (exp_avg, rest) = self.data.split_at(n);
        Ok(match shape.layout() {
            Layout::Vector { .. } => StateParts::Vector {
                exp_avg,
                exp_avg_sq: &rest[..n],
            },
            Layout::Factored { batch, rows, cols } => {
                let (r, c) = (batch * rows, batch * cols);
                let (exp_avg_sq_row, rest) = rest.split_at(r);
                let (exp_avg_sq_col, rest) = rest.split_at(c);
                let (exp_avg_res_row, rest) = rest.split_at(r);
                StateParts::Factored {
                    exp_avg,
                    exp_avg_sq_row,
                    exp_avg_sq_col,
                    exp_avg_res_row,
                    exp_avg_res_col: &rest[..c],
                }
            }
        })
    }

    /// The named pieces of the state, writable (to load a checkpoint, say).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if the buffer's length is not `shape.state_len()`.
    pub fn parts_mut(&mut self, shape: &Shape) -> Result<StateParts<&mut [T]>, Error> {
        check_len(shape, self.data.len())?;
        let n = shape.numel();
        let (exp_avg, rest) = self.data.split_at_mut(n);
        Ok(match shape.layout() {
            Layout::Vector { .. } => StateParts::Vector {
                exp_avg,
                exp_avg_sq: &mut rest[..n],
            },
            Layout::Factored { batch, rows, cols } => {
                let (r, c) = (batch * rows, batch * cols);
                let (exp_avg_sq_row, rest) = rest.split_at_mut(r);
                let (exp_avg_sq_col, rest) = rest.split_at_mut(c);
                let (exp_avg_res_row, rest) = rest.split_at_mut(r);
                StateParts::Factored {
                    exp_avg,
                    exp_avg_sq_row,
                    exp_avg_sq_col,
                    exp_avg_res_row,
                    exp_avg_res_col: &mut rest[..c],
                }
            }
        })
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        self.data
    }

    pub(crate) fn set_pending(&mut self, clip: Clip<T>) {
        self.pending = Some(clip);
    }

    pub(crate) fn take_pending(&mut self) -> Option<Clip<T>> {
        self.pending.take()
    }

    pub(crate) fn advance(&mut self) {
        self.step = self.step.saturating_add(1);
    }
}

pub(crate) fn check_len(shape: &Shape, actual: usize) -> Result<(), Error> {
    let expected = shape.state_len();
    if actual == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            buffer: Buffer::State,
            expected,
            actual,
        })
    }
}

/// The named pieces of one tensor's CAME state, as the reference names them.
///
/// `S` is `&[T]` or `&mut [T]`. Row statistics are flat `batch x rows`, column statistics flat
/// `batch x cols`, everything row-major like the reference's tensors.
#[derive(Debug)]
pub enum StateParts<S> {
    /// A factored tensor (rank >= 2).
    Factored {
        /// Momentum, like the parameter.
        exp_avg: S,
        /// Row statistics of the squared gradient; shape `dims[..rank-1]`.
        exp_avg_sq_row: S,
        /// Column statistics of the squared gradient; shape `dims[..rank-2] ++ [dims[rank-1]]`.
        exp_avg_sq_col: S,
        /// Row statistics of the instability; shape as `exp_avg_sq_row`.
        exp_avg_res_row: S,
        /// Column statistics of the instability; shape as `exp_avg_sq_col`.
        exp_avg_res_col: S,
    },
    /// A vector or scalar (rank 0 or 1).
    Vector {
        /// Momentum, like the parameter.
        exp_avg: S,
        /// Second moment of the gradient, like the parameter.
        exp_avg_sq: S,
    },
}

/// The reference's state names, in the order [`StateParts::named`] yields them.
pub const FACTORED_KEYS: [&str; 5] = [
    "exp_avg",
    "exp_avg_sq_row",
    "exp_avg_sq_col",
    "exp_avg_res_row",
    "exp_avg_res_col",
];

/// The reference's state names for a vector, in the order [`StateParts::named`] yields them.
pub const VECTOR_KEYS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

impl<S> StateParts<S> {
    /// The pieces paired with their reference names, momentum first.
    pub fn named(self) -> heapless::Vec<(&'static str, S), 5> {
        let mut out = heapless::Vec::new();
        let mut push = |name, s| {
            // capacity 5 is the largest number of pieces
            let _ = out.push((name, s));
        };
        match self {
            StateParts::Factored {
                exp_avg,
                exp_avg_sq_row,
                exp_avg_sq_col,
                exp_avg_res_row,
                exp_avg_res_col,
            } => {
                for (name, s) in FACTORED_KEYS.into_iter().zip([
                    exp_avg,
                    exp_avg_sq_row,
                    exp_avg_sq_col,
                    exp_avg_res_row,
                    exp_avg_res_col,
                ]) {
                    push(name, s);
                }
            }
            StateParts::Vector {
                exp_avg,
                exp_avg_sq,
            } => {
                push(VECTOR_KEYS[0], exp_avg);
                push(VECTOR_KEYS[1], exp_avg_sq);
            }
        }
        out
    }
}
