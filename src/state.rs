//! Borrowed views over caller-owned optimizer state.

use crate::came::formula::Clip;
use crate::error::Buffer;
use crate::layout::{FACTORED_KEYS, VECTOR_KEYS};
use crate::{Error, Float, Shape};

/// CAME state for one tensor: a view over one caller-owned buffer plus the step count.
///
/// The buffer is laid out as [`crate::StateLayout`] says: `exp_avg`, the statistics under the
/// reference's names, then a scratch workspace the step uses instead of allocating.
/// [`Shape::state_len`] gives the exact length.
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
        let mut rest: &[T] = self.data;
        let mut pieces = shape.state_layout().pieces().into_iter().map(|p| {
            let (piece, tail) = rest.split_at(p.range.len());
            rest = tail;
            piece
        });
        Ok(StateParts::from_pieces(shape, &mut pieces))
    }

    /// The named pieces of the state, writable (to load a checkpoint, say).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if the buffer's length is not `shape.state_len()`.
    pub fn parts_mut(&mut self, shape: &Shape) -> Result<StateParts<&mut [T]>, Error> {
        check_len(shape, self.data.len())?;
        let mut rest: &mut [T] = self.data;
        let mut pieces = shape.state_layout().pieces().into_iter().map(|p| {
            let (piece, tail) = core::mem::take(&mut rest).split_at_mut(p.range.len());
            rest = tail;
            piece
        });
        Ok(StateParts::from_pieces(shape, &mut pieces))
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        self.data
    }

    pub(crate) fn set_pending(&mut self, clip: Option<Clip<T>>) {
        self.pending = clip;
    }

    pub(crate) fn take_pending(&mut self) -> Option<Clip<T>> {
        self.pending.take()
    }

    pub(crate) fn advance(&mut self) {
        self.step = self.step.saturating_add(1);
    }
}

/// [`Error::LengthMismatch`] unless a state buffer of `actual` elements fits `shape`.
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

impl<S: Default> StateParts<S> {
    /// The pieces in [`crate::StateLayout::pieces`] order, for `shape`.
    fn from_pieces(shape: &Shape, pieces: &mut impl Iterator<Item = S>) -> Self {
        let mut next = || pieces.next().unwrap_or_default();
        if shape.is_factored() {
            StateParts::Factored {
                exp_avg: next(),
                exp_avg_sq_row: next(),
                exp_avg_sq_col: next(),
                exp_avg_res_row: next(),
                exp_avg_res_col: next(),
            }
        } else {
            StateParts::Vector {
                exp_avg: next(),
                exp_avg_sq: next(),
            }
        }
    }
}

impl<S> StateParts<S> {
    /// The pieces paired with their reference names ([`FACTORED_KEYS`] or [`VECTOR_KEYS`]),
    /// momentum first.
    pub fn named(self) -> heapless::Vec<(&'static str, S), 5> {
        match self {
            StateParts::Factored {
                exp_avg,
                exp_avg_sq_row,
                exp_avg_sq_col,
                exp_avg_res_row,
                exp_avg_res_col,
            } => FACTORED_KEYS
                .into_iter()
                .zip([
                    exp_avg,
                    exp_avg_sq_row,
                    exp_avg_sq_col,
                    exp_avg_res_row,
                    exp_avg_res_col,
                ])
                .collect(),
            StateParts::Vector {
                exp_avg,
                exp_avg_sq,
            } => VECTOR_KEYS.into_iter().zip([exp_avg, exp_avg_sq]).collect(),
        }
    }
}
