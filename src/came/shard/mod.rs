//! One rank's part of a sharded step ([`crate::shard`]): a tensor cut into lanes
//! (`lanes.rs`, bit for bit one process's step) or a matrix cut into columns (`columns.rs`), and
//! what the ranks exchange (`exchange.rs`).

mod columns;
mod exchange;
mod lanes;

use core::ops::Range;
use std::vec::Vec;

pub(crate) use columns::ColumnPart;
pub(crate) use exchange::{Extent, Failure, Phase};
pub(crate) use lanes::LanePart;

use super::formula::Clip;
use crate::config::Coefficients;
use crate::{Element, Error, Float};

/// One rank's part of one tensor: cut into lanes (rows, matrices or elements; bit for bit one
/// process's step) or, for a matrix of a tensor-parallel layer, into columns (`columns.rs`).
pub(crate) enum Part<T> {
    /// Lanes of rows, matrices or elements.
    Lanes(LanePart<T>),
    /// Columns of a matrix.
    Columns(ColumnPart<T>),
}

impl<T: Float> Part<T> {
    /// Elements of the whole tensor.
    pub(crate) fn numel(&self) -> usize {
        match self {
            Self::Lanes(p) => p.numel(),
            Self::Columns(p) => p.numel(),
        }
    }

    /// The units rank `rank` owns: rows, matrices, elements or columns.
    pub(crate) fn units_of(&self, rank: usize) -> Range<usize> {
        match self {
            Self::Lanes(p) => p.units_of(rank),
            Self::Columns(p) => p.units_of(rank),
        }
    }

    /// Elements rank `rank` holds and steps.
    pub(crate) fn local_len(&self, rank: usize) -> usize {
        match self {
            Self::Lanes(p) => p.elements_of(rank).len(),
            Self::Columns(p) => p.local_len(rank),
        }
    }

    /// The elements rank `rank` holds, copied out of the whole tensor.
    pub(crate) fn local_of(&self, rank: usize, whole: &[T]) -> Vec<T> {
        match self {
            Self::Lanes(p) => whole[p.elements_of(rank)].to_vec(),
            Self::Columns(p) => p.rows_of(rank, whole).flatten().copied().collect(),
        }
    }

    /// The elements rank `rank` holds as a run of the whole tensor, where they are one.
    pub(crate) fn run_of(&self, rank: usize) -> Option<Range<usize>> {
        match self {
            Self::Lanes(p) => Some(p.elements_of(rank)),
            Self::Columns(_) => None,
        }
    }

    /// Writes rank `rank`'s elements into the whole tensor.
    pub(crate) fn scatter(&self, rank: usize, local: &[T], whole: &mut [T]) {
        match self {
            Self::Lanes(p) => whole[p.elements_of(rank)].copy_from_slice(local),
            Self::Columns(p) => p.scatter(rank, local, whole),
        }
    }

    /// The state's named pieces.
    pub(crate) fn state(&self) -> &[T] {
        match self {
            Self::Lanes(p) => &p.state,
            Self::Columns(p) => &p.state,
        }
    }

    /// The state's named pieces, to load into.
    pub(crate) fn state_mut(&mut self) -> &mut Vec<T> {
        match self {
            Self::Lanes(p) => &mut p.state,
            Self::Columns(p) => &mut p.state,
        }
    }

    /// See [`LanePart::pieces`].
    pub(crate) fn pieces(&self) -> Vec<(&'static str, Extent, Range<usize>)> {
        match self {
            Self::Lanes(p) => p.pieces(),
            Self::Columns(p) => p.pieces(),
        }
    }

    pub(crate) fn state_len(&self) -> usize {
        match self {
            Self::Lanes(p) => p.state_len(),
            Self::Columns(p) => p.state_len(),
        }
    }

    /// Bytes of the workspace.
    pub(crate) fn work_bytes(&self) -> usize {
        match self {
            Self::Lanes(p) => p.work_len() * size_of::<T>(),
            Self::Columns(p) => p.work_bytes(),
        }
    }

    pub(crate) fn payload_len(&self, phase: Phase, rank: usize) -> usize {
        match self {
            Self::Lanes(p) => p.payload_len(phase, rank),
            Self::Columns(p) => p.payload_len(phase, rank),
        }
    }

    pub(crate) fn sweep_norm<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        (param, grad): (&mut [T], &[G]),
        out: &mut Vec<u8>,
    ) {
        match self {
            Self::Lanes(p) => p.sweep_norm(k, (param, grad), out),
            Self::Columns(p) => p.sweep_norm(k, grad, out),
        }
    }

    /// The clip, or `None` where the column-norm exchange must come first.
    pub(crate) fn finish_norm<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<Option<Clip<T>>, Failure> {
        match self {
            Self::Lanes(p) => p.finish_norm(k, payload).map(Some),
            Self::Columns(p) => p.finish_norm(k, payload).map(|()| None),
        }
    }

    pub(crate) fn sweep_column_norm<G: Element<Compute = T>>(
        &mut self,
        grad: &[G],
        out: &mut Vec<u8>,
    ) {
        if let Self::Columns(p) = self {
            p.sweep_column_norm(grad, out);
        }
    }

    pub(crate) fn finish_column_norm<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<Option<Clip<T>>, Failure> {
        match self {
            Self::Lanes(_) => Ok(None),
            Self::Columns(p) => p.finish_column_norm(k, payload).map(Some),
        }
    }

    pub(crate) fn local_error<G: Element<Compute = T>>(&mut self, grad: &[G]) -> Error {
        match self {
            Self::Lanes(p) => p.local_error(grad),
            Self::Columns(p) => p.local_error(grad),
        }
    }

    pub(crate) fn commit_norm(&mut self) {
        match self {
            Self::Lanes(p) => p.commit_norm(),
            Self::Columns(p) => p.commit_norm(),
        }
    }

    pub(crate) fn sweep_momentum<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        clip: Clip<T>,
        (param, grad): (&mut [T], &[G]),
        out: &mut Vec<u8>,
    ) {
        match self {
            Self::Lanes(p) => p.sweep_momentum(k, clip, (param, grad), out),
            Self::Columns(p) => p.sweep_momentum(k, clip, grad, out),
        }
    }

    pub(crate) fn finish_momentum<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<(), Failure> {
        match self {
            Self::Lanes(p) => p.finish_momentum(k, payload),
            Self::Columns(p) => p.finish_momentum(k, payload),
        }
    }

    pub(crate) fn sweep_apply<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        clip: Clip<T>,
        (param, grad): (&mut [T], &[G]),
    ) {
        match self {
            Self::Lanes(p) => p.sweep_apply(k, clip, (param, grad)),
            Self::Columns(p) => p.sweep_apply(k, param),
        }
    }
}
