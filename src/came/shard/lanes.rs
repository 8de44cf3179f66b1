//! A rank's lanes of a tensor: the sweeps of `factored.rs`, `batch.rs` and `vector.rs` over
//! the lanes the rank owns, and what it sends of them.
//!
//! A tensor's lanes are the unit of sharding. A lane's sweeps depend only on the lane's own
//! rows (or matrices, or elements), and everything that crosses lanes (column sums, the mean of
//! the row statistics, the update's squared norm) is added up in lane order. So a rank that
//! runs its lanes, sends each lane's partial results and adds every lane's up in lane order
//! after the exchange computes what one process computes, bit for bit. Per step and per tensor:
//!
//! | tensor | after sweep 1 | after sweep 2 |
//! |---|---|---|
//! | matrix | per lane: column sums, weighted column sums; the rank's new row statistics | per lane: instability column sums; the rank's new instability row statistics |
//! | batch of matrices | a status byte; per lane: the update's squared norm | a status byte |
//! | vector | a status byte; per lane: squared norm and check | nothing |
//!
//! Each rank then holds every row's new statistics (so the mean of the rows and the factors are
//! its own computation, the same on every rank) and the full column statistics.

use core::ops::Range;
use std::vec;
use std::vec::Vec;

use super::exchange::{Extent, Failure, Phase, globally, push, take, take_f64};
use crate::came::formula::Clip;
use crate::came::packed::Moments;
use crate::came::parts::{Dims, Parts, Work, cut_lens};
use crate::came::sum::ColSums;
use crate::came::{batch, factored, vector};
use crate::check::{all_finite, gradient_error, valid_statistics};
use crate::config::Coefficients;
use crate::exec::Serial;
use crate::exec::lanes::lane_range;
use crate::{Element, Error, Float, Layout, Shape};

/// How a tensor is stepped, and so what its lanes are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One matrix: lanes of rows.
    Matrix,
    /// A batch of matrices: lanes of whole matrices.
    Batch,
    /// Rank 0 or 1: lanes of elements.
    Vector,
}

/// The units (rows, matrices or elements) each lane of a tensor covers start at
/// `unit_start(lane)`; `lanes` is one past the last lane.
fn unit_start(units: usize, lanes: usize, lane: usize) -> usize {
    if lane >= lanes {
        units
    } else {
        lane_range(units, lanes, lane).0
    }
}

/// One rank's part of one tensor cut into lanes: the lanes and units it owns, every rank's lanes (to read the
/// exchanged data), its state and its workspace.
pub(crate) struct LanePart<T> {
    kind: Kind,
    /// the whole tensor (a vector: `rows` elements of one column)
    full: Dims,
    /// the rank's part of it: owned units, owned lanes
    local: Dims,
    /// lanes of every rank, in rank order
    owners: Vec<Range<usize>>,
    rank: usize,
    numel: usize,
    /// the state's named pieces, in [`crate::StateLayout`]'s order
    pub(crate) state: Vec<T>,
    work: Vec<T>,
}

impl<T: Float> LanePart<T> {
    /// Rank `rank`'s part of a tensor of `shape` whose lanes the ranks own as `owners` says.
    pub(crate) fn new(shape: &Shape, owners: Vec<Range<usize>>, rank: usize) -> Self {
        let lanes = shape.lanes();
        let (kind, full) = match shape.layout() {
            Layout::Factored { batch, rows, cols } => {
                let kind = if batch == 1 {
                    Kind::Matrix
                } else {
                    Kind::Batch
                };
                let dims = Dims {
                    batch,
                    rows,
                    cols,
                    lanes,
                };
                (kind, dims)
            }
            Layout::Vector { len } => {
                let dims = Dims {
                    batch: 1,
                    rows: len,
                    cols: 1,
                    lanes,
                };
                (Kind::Vector, dims)
            }
        };
        let mut part = Self {
            kind,
            full,
            local: full,
            owners,
            rank,
            numel: shape.numel(),
            state: Vec::new(),
            work: Vec::new(),
        };
        let units = part.units_of(rank);
        part.local = Dims {
            lanes: part.owners[rank].len(),
            ..full
        };
        match kind {
            Kind::Batch => part.local.batch = units.len(),
            _ => part.local.rows = units.len(),
        }
        let (state, work) = part.lens();
        part.state = vec![T::zero(); state];
        part.work = vec![T::zero(); work];
        part
    }

    /// Elements of the whole tensor.
    pub(crate) fn numel(&self) -> usize {
        self.numel
    }

    /// The units (rows, matrices, elements) rank `rank` owns.
    pub(crate) fn units_of(&self, rank: usize) -> Range<usize> {
        let lanes = &self.owners[rank];
        let units = self.units();
        if lanes.is_empty() {
            return 0..0;
        }
        unit_start(units, self.full.lanes, lanes.start)
            ..unit_start(units, self.full.lanes, lanes.end)
    }

    /// The tensor's units: rows of a matrix, matrices of a batch, elements of a vector.
    fn units(&self) -> usize {
        match self.kind {
            Kind::Batch => self.full.batch,
            _ => self.full.rows,
        }
    }

    /// Elements of one unit.
    fn unit_len(&self) -> usize {
        match self.kind {
            Kind::Matrix => self.full.cols,
            Kind::Batch => self.full.rows * self.full.cols,
            Kind::Vector => 1,
        }
    }

    /// The flat elements of the tensor that rank `rank` owns.
    pub(crate) fn elements_of(&self, rank: usize) -> Range<usize> {
        let units = self.units_of(rank);
        units.start * self.unit_len()..units.end * self.unit_len()
    }

    /// Lengths of the rank's state (named pieces) and workspace.
    fn lens(&self) -> (usize, usize) {
        let Dims {
            rows, cols, lanes, ..
        } = self.full;
        let own = self.local;
        let parts = ColSums::<T>::PARTS * cols;
        match self.kind {
            Kind::Matrix => (
                own.rows * cols + 2 * own.rows + 2 * cols,
                2 * rows + 2 * cols + 2 * lanes * parts,
            ),
            Kind::Batch => {
                let (r, c) = (own.batch * rows, own.batch * cols);
                (
                    own.batch * rows * cols + 2 * r + 2 * c,
                    2 * r + 2 * c + 2 * own.lanes * parts,
                )
            }
            Kind::Vector => (2 * own.rows, 0),
        }
    }

    /// The named pieces of the rank's state: their keys ([`crate::FACTORED_KEYS`],
    /// [`crate::VECTOR_KEYS`]), how they spread over the units, and where they lie in
    /// `self.state`.
    pub(crate) fn pieces(&self) -> Vec<(&'static str, Extent, Range<usize>)> {
        let Dims { rows, cols, .. } = self.full;
        let extents: Vec<(&'static str, Extent)> = match self.kind {
            Kind::Matrix => crate::FACTORED_KEYS
                .into_iter()
                .zip([
                    Extent::PerUnit(cols),
                    Extent::PerUnit(1),
                    Extent::Shared(cols),
                    Extent::PerUnit(1),
                    Extent::Shared(cols),
                ])
                .collect(),
            Kind::Batch => crate::FACTORED_KEYS
                .into_iter()
                .zip([rows * cols, rows, cols, rows, cols].map(Extent::PerUnit))
                .collect(),
            Kind::Vector => crate::VECTOR_KEYS
                .into_iter()
                .zip([Extent::PerUnit(1); 2])
                .collect(),
        };
        let own = self.units_of(self.rank).len();
        let mut start = 0;
        extents
            .into_iter()
            .map(|(key, extent)| {
                let len = match extent {
                    Extent::PerUnit(w) | Extent::Block(w) => own * w,
                    Extent::Shared(n) => n,
                };
                start += len;
                (key, extent, start - len..start)
            })
            .collect()
    }

    /// Elements of the rank's state (its named pieces, without the workspace).
    pub(crate) fn state_len(&self) -> usize {
        self.state.len()
    }

    /// Elements of the rank's workspace (new statistics, factors, every lane's column sums).
    pub(crate) fn work_len(&self) -> usize {
        self.work.len()
    }

    /// Bytes rank `rank` sends for this tensor after `phase` (every rank can tell).
    pub(crate) fn payload_len(&self, phase: Phase, rank: usize) -> usize {
        let lanes = self.owners[rank].len();
        if lanes == 0 {
            return 0;
        }
        let t = size_of::<T>();
        let rows = self.units_of(rank).len();
        let cols = self.full.cols;
        match (self.kind, phase) {
            (Kind::Matrix, Phase::Norm) => 1 + (2 * lanes * cols + rows) * t,
            (Kind::Matrix, Phase::Momentum) => (lanes * cols + rows) * t,
            (Kind::Batch, Phase::Norm) => 1 + lanes * 8,
            (Kind::Batch, Phase::Momentum) => 1,
            (Kind::Vector, Phase::Norm) => 1 + lanes * 16,
            (Kind::Vector | Kind::Batch | Kind::Matrix, Phase::ColumnNorm)
            | (Kind::Vector, Phase::Momentum) => 0,
        }
    }

    /// The named pieces of a factored state and the workspace.
    fn split(&mut self) -> Parts<'_, T> {
        let own = self.local;
        // the rank's rows (and each matrix's columns) of the state; every row of a matrix in
        // the workspace, whose column sums are every lane's
        let (rows, cols, next_rows) = if self.kind == Kind::Matrix {
            (own.rows, self.full.cols, self.full.rows)
        } else {
            let rows = own.batch * self.full.rows;
            (rows, own.batch * self.full.cols, rows)
        };
        let (m, rest) = self.state.split_at_mut(own.rows * own.cols * own.batch);
        let stats = cut_lens(rest, [rows, cols, rows, cols]);
        let sums = (self.work.len() - 2 * (next_rows + cols)) / 2;
        let work = cut_lens(
            &mut self.work,
            [next_rows, cols, next_rows, cols, sums, sums],
        );
        Parts::assemble(Moments::Full(m), stats, work)
    }

    /// Sweep 1 over the rank's lanes; appends what the other ranks need to `out`.
    pub(crate) fn sweep_norm<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        (param, grad): (&mut [T], &[G]),
        out: &mut Vec<u8>,
    ) {
        if self.local.lanes == 0 {
            return;
        }
        let (kind, local, rank) = (self.kind, self.local, self.rank);
        let units = self.units_of(rank);
        let lanes = self.owners[rank].clone();
        if kind == Kind::Vector {
            // a vector's state is checked only when its norm fails, as in one process
            let (m, v) = self.state.split_at(local.rows);
            out.push(0);
            for (sum, check) in vector::norm_lanes(&Serial, k, local.lanes, grad, (v, m)) {
                out.extend_from_slice(&sum.to_le_bytes());
                out.extend_from_slice(&check.to_le_bytes());
            }
            return;
        }
        let mut parts = self.split();
        out.push(u8::from(!parts.stats.valid()));
        if kind == Kind::Batch {
            let (finite, sums) = batch::sq_lanes(&Serial, k, local, param, grad, &mut parts);
            let last = out.len() - 1;
            out[last] |= u8::from(!finite) << 1;
            for sum in sums {
                out.extend_from_slice(&sum.to_le_bytes());
            }
            return;
        }
        let stride = ColSums::<T>::PARTS * local.cols;
        let work = &mut parts.work;
        let own = lanes.start * stride..lanes.end * stride;
        factored::sq_lanes(
            &Serial,
            k,
            local,
            grad,
            (parts.stats.sq_row, &mut work.next_row[units.clone()]),
            (
                &mut work.col_sums[own.clone()],
                &mut work.weighted_sums[own],
            ),
        );
        for lane in lanes {
            let total = lane * stride + local.cols..(lane + 1) * stride;
            push(out, &work.col_sums[total.clone()]);
            push(out, &work.weighted_sums[total]);
        }
        push(out, &work.next_row[units]);
    }

    /// After the exchange of sweep 1 (`payload(rank)`: what rank `rank` sent for this tensor):
    /// the clip, with the new statistics and factors in the workspace.
    pub(crate) fn finish_norm<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<Clip<T>, Failure> {
        let ranks = self.owners.len();
        let mut lane_sums = vec![(0.0, 0.0); self.full.lanes];
        let mut corrupt = false;
        let (kind, full, me, numel) = (self.kind, self.full, self.rank, self.numel);
        let units: Vec<_> = (0..ranks).map(|r| self.units_of(r)).collect();
        let owners = self.owners.clone();
        let stride = ColSums::<T>::PARTS * full.cols;
        let mut parts = (kind != Kind::Vector).then(|| self.split());
        for rank in 0..ranks {
            let data = payload(rank);
            let Some((&status, mut data)) = data.split_first() else {
                continue;
            };
            corrupt |= status != 0;
            match kind {
                Kind::Vector => {
                    for lane in owners[rank].clone() {
                        lane_sums[lane] = (take_f64(&mut data), take_f64(&mut data));
                    }
                }
                Kind::Batch => {
                    for lane in owners[rank].clone() {
                        lane_sums[lane].0 = take_f64(&mut data);
                    }
                }
                Kind::Matrix if rank == me => {}
                Kind::Matrix => {
                    let work = &mut parts.as_mut().expect("a factored part").work;
                    for lane in owners[rank].clone() {
                        let total = lane * stride + full.cols..(lane + 1) * stride;
                        take(&mut data, &mut work.col_sums[total.clone()]);
                        take(&mut data, &mut work.weighted_sums[total]);
                    }
                    take(&mut data, &mut work.next_row[units[rank].clone()]);
                }
            }
        }
        if corrupt {
            return Err(Failure::Norm);
        }
        let clip = match kind {
            Kind::Vector => vector::clip_from_lanes(k, &lane_sums, numel),
            Kind::Batch => {
                let sum_sq = lane_sums.iter().map(|l| l.0).sum::<f64>();
                sum_sq
                    .is_finite()
                    .then(|| Clip::from_sum_sq(sum_sq, numel, k.clip_threshold))
            }
            Kind::Matrix => {
                let parts = parts.as_mut().expect("a factored part");
                factored::sq_finish(k, full, parts.stats.sq_col, &mut parts.work)
                    .filter(|s| s.is_finite())
                    .map(|s| Clip::from_sum_sq(s, numel, k.clip_threshold))
            }
        };
        clip.ok_or(Failure::Norm)
    }

    /// The error this rank sees in its own data after [`Failure::Norm`]: a corrupt state, a
    /// non-finite gradient (with its index in the whole tensor) or an overflow.
    pub(crate) fn local_error<G: Element<Compute = T>>(&mut self, grad: &[G]) -> Error {
        let start = self.elements_of(self.rank).start;
        // the order of one process: a factored state is checked first, a vector's last
        if self.kind != Kind::Vector {
            if !self.split().stats.valid() {
                return Error::NonFiniteState;
            }
            return globally(gradient_error(grad), start);
        }
        let (m, v) = self.state.split_at(self.local.rows);
        match gradient_error(grad) {
            Error::NonFiniteUpdate if !(valid_statistics(v) && all_finite(m)) => {
                Error::NonFiniteState
            }
            e => globally(e, start),
        }
    }

    /// Commits the new squared-gradient statistics (after every tensor's [`Self::finish_norm`]).
    pub(crate) fn commit_norm(&mut self) {
        // a rank that owns none of a matrix keeps its column statistics all the same
        if self.kind == Kind::Vector {
            return;
        }
        let units = self.units_of(self.rank);
        let kind = self.kind;
        let parts = self.split();
        let (stats, work) = (parts.stats, parts.work);
        match kind {
            Kind::Matrix => stats.sq_row.copy_from_slice(&work.next_row[units]),
            _ => stats.sq_row.copy_from_slice(work.next_row),
        }
        stats.sq_col.copy_from_slice(work.next_col);
    }

    /// Sweep 2 over the rank's lanes with the clip `clip`; appends what the other ranks need.
    pub(crate) fn sweep_momentum<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        clip: Clip<T>,
        (param, grad): (&mut [T], &[G]),
        out: &mut Vec<u8>,
    ) {
        if self.local.lanes == 0 || self.kind == Kind::Vector {
            return;
        }
        let (kind, local, rank) = (self.kind, self.local, self.rank);
        let units = self.units_of(rank);
        let lanes = self.owners[rank].clone();
        let mut parts = self.split();
        if kind == Kind::Batch {
            let finite = batch::momentum_lanes(&Serial, k, local, clip.d, param, grad, &mut parts);
            out.push(u8::from(!finite));
            return;
        }
        let stride = ColSums::<T>::PARTS * local.cols;
        let (stats, work) = (parts.stats, parts.work);
        factored::momentum_lanes(
            &Serial,
            k,
            local,
            (clip.d, &work.row_factors[units.clone()], work.col_factors),
            (grad, parts.m),
            (stats.res_row, &mut work.next_row[units.clone()]),
            &mut work.col_sums[lanes.start * stride..lanes.end * stride],
        );
        for lane in lanes {
            push(
                out,
                &work.col_sums[lane * stride + local.cols..(lane + 1) * stride],
            );
        }
        push(out, &work.next_row[units]);
    }

    /// After the exchange of sweep 2: the new instability statistics, committed, and the
    /// factors of sweep 3.
    pub(crate) fn finish_momentum<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<(), Failure> {
        if self.kind == Kind::Vector {
            return Ok(());
        }
        let ranks = self.owners.len();
        let (kind, full, me) = (self.kind, self.full, self.rank);
        let units: Vec<_> = (0..ranks).map(|r| self.units_of(r)).collect();
        let owners = self.owners.clone();
        let own_units = units[me].clone();
        let stride = ColSums::<T>::PARTS * full.cols;
        let parts = self.split();
        let (stats, mut work) = (parts.stats, parts.work);
        let mut failed = false;
        for rank in 0..ranks {
            let mut data = payload(rank);
            match kind {
                Kind::Batch => failed |= data.first().is_some_and(|&s| s != 0),
                Kind::Matrix if rank == me || data.is_empty() => {}
                _ => {
                    for lane in owners[rank].clone() {
                        let total = lane * stride + full.cols..(lane + 1) * stride;
                        take(&mut data, &mut work.col_sums[total]);
                    }
                    take(&mut data, &mut work.next_row[units[rank].clone()]);
                }
            }
        }
        if kind == Kind::Batch {
            return if failed { Err(Failure::State) } else { Ok(()) };
        }
        if !factored::momentum_finish(k, full, stats.res_col, &mut work) {
            return Err(Failure::State);
        }
        let Work {
            next_row,
            next_col,
            row_factors,
            col_factors,
            ..
        } = work;
        if k.confidence {
            stats.res_row.copy_from_slice(&next_row[own_units]);
            stats.res_col.copy_from_slice(next_col);
        }
        factored::res_factors(k, (next_row, next_col), (row_factors, col_factors));
        Ok(())
    }

    /// Sweep 3 over the rank's lanes (a vector: its whole update, with the clip `clip`).
    pub(crate) fn sweep_apply<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        clip: Clip<T>,
        (param, grad): (&mut [T], &[G]),
    ) {
        if self.local.lanes == 0 {
            return;
        }
        let (kind, local) = (self.kind, self.local);
        let units = self.units_of(self.rank);
        let offset = self.elements_of(self.rank).start;
        if kind == Kind::Vector {
            let (m, v) = self.state.split_at_mut(local.rows);
            vector::finish_lanes(
                &Serial,
                k,
                (local.lanes, offset),
                clip,
                (param, grad),
                (m, v),
            );
            return;
        }
        let mut parts = self.split();
        if kind == Kind::Batch {
            batch::apply_lanes(&Serial, k, local, param, grad, &mut parts, offset);
            return;
        }
        let work = parts.work;
        let f = (&work.row_factors[units], &*work.col_factors);
        factored::apply_lanes(&Serial, k, local, (param, parts.m), f, offset);
    }
}
