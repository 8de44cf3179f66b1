//! A matrix split by columns over ranks (the weight of a tensor-parallel layer): each rank holds
//! every row of some columns. The column statistics are then a rank's own, and the row
//! statistics, the update's norm and the instability row statistics are combined: each rank
//! sums its columns of every row, the ranks' partial sums are added up in rank order, and the
//! norm's per-rank parts likewise (`came::shard` exchanges them).
//!
//! The formulas are the reference's, element by element ([`super::formula`]); the loops are
//! plain. The sums (a row's over the ranks' columns, a column's over the rows, the norm's) are
//! taken in `f64` and rounded once, so the statistics are as a correctly rounded sum gives them:
//! within rounding of one process's (which sums in the parameters' type, in its own order),
//! not bit for bit, and the same for every run with the same number of ranks.

use crate::Element;
use crate::Float;
use crate::came::formula::{self, scalar, sq_term, square, weighted_term};
use crate::config::Coefficients;

/// Sweep 1 of a rank's block (`rows x cols`, row-major): each row's sum of `g^2 + eps1` over
/// the block's columns into `row_sums`, each column's sum over every row into `col_sums`.
pub(super) fn sq_sums<T: Float, G: Element<Compute = T>>(
    g: &[G],
    cols: usize,
    k: &Coefficients<T>,
    (row_sums, col_sums): (&mut [f64], &mut [f64]),
) {
    let (o, c) = scalar(k);
    col_sums.fill(0.0);
    for (row, s) in g.chunks_exact(cols).zip(row_sums.iter_mut()) {
        let mut sum = 0.0;
        for (&x, col) in row.iter().zip(col_sums.iter_mut()) {
            let term = sq_term(o, square(o, x.to_compute()), c.eps1).as_f64();
            sum += term;
            *col += term;
        }
        *s = sum;
    }
}

/// The block's part of the squared norm of the unclipped update, `sum_j v_j / c_j` over its
/// columns with `v_j = sum_i g_ij^2 / r_i` (every row's new statistic `r`, its columns' `c`);
/// `weighted` is scratch of one value per column. Times `mean(r)` and added up over the ranks
/// it is the norm ([`super::formula::norm_from_quotients`]).
pub(super) fn norm_part<T: Float, G: Element<Compute = T>>(
    g: &[G],
    cols: usize,
    (row, col): (&[T], &[T]),
    weighted: &mut [f64],
) -> f64 {
    let o = crate::exec::simd::Ops::<pulp::Scalar, T>::new(pulp::Scalar);
    weighted.fill(0.0);
    for (g, &r) in g.chunks_exact(cols).zip(row) {
        let w = T::one() / r;
        for (&x, v) in g.iter().zip(weighted.iter_mut()) {
            *v += weighted_term(o, square(o, x.to_compute()), w).as_f64();
        }
    }
    weighted
        .iter()
        .zip(col)
        .map(|(&v, &c)| v / c.as_f64())
        .sum()
}

/// Sweep 2 of a rank's block with every row's factor divided by the clip divisor (`rf_d`) and
/// its columns' factors `cf`: the momentum, each row's sum of instability terms over the
/// block's columns into `row_sums` and each column's over every row into `col_sums`.
pub(super) fn momentum_sums<T: Float, G: Element<Compute = T>>(
    (g, m): (&[G], &mut [T]),
    cols: usize,
    (rf_d, cf): (&[T], &[T]),
    k: &Coefficients<T>,
    (row_sums, col_sums): (&mut [f64], &mut [f64]),
) {
    let (o, c) = scalar(k);
    col_sums.fill(0.0);
    let rows = g.chunks_exact(cols).zip(m.chunks_exact_mut(cols));
    for ((g, m), (&r, s)) in rows.zip(rf_d.iter().zip(row_sums.iter_mut())) {
        let mut sum = 0.0;
        for (((&x, mj), &f), col) in g.iter().zip(m).zip(cf).zip(col_sums.iter_mut()) {
            let (m_new, term) = formula::momentum(o, &c, (x.to_compute(), *mj), (r, f));
            *mj = m_new;
            sum += term.as_f64();
            *col += term.as_f64();
        }
        *s = sum;
    }
}

use core::ops::Range;
use std::vec;
use std::vec::Vec;

use super::exchange::{Extent, Failure, Phase, globally, push, take, take_f64};
use crate::came::formula::{Clip, average, row_mean};
use crate::came::rows::factors;
use crate::came::{factored, small};
use crate::check::{all_finite, gradient_error, valid_statistics};
use crate::{Error, Shape};

/// One rank's part of a matrix split by columns: every row of its columns.
pub(crate) struct ColumnPart<T> {
    rows: usize,
    cols: usize,
    /// the columns of every rank, in rank order
    owners: Vec<Range<usize>>,
    rank: usize,
    /// `exp_avg` (`rows x width`), `exp_avg_sq_row` (every row), `exp_avg_sq_col` (its
    /// columns), `exp_avg_res_row`, `exp_avg_res_col`
    pub(crate) state: Vec<T>,
    /// new rows, new columns, row factors, column factors, row factors over the clip divisor
    work: Vec<T>,
    /// the rows' sums, another rank's, the columns' sums
    sums: Vec<f64>,
}

/// The named pieces of a rank's state, cut.
struct State<'a, T> {
    m: &'a mut [T],
    sq_row: &'a mut [T],
    sq_col: &'a mut [T],
    res_row: &'a mut [T],
    res_col: &'a mut [T],
}

/// A rank's workspace, cut.
struct Scratch<'a, T> {
    next_row: &'a mut [T],
    next_col: &'a mut [T],
    rf: &'a mut [T],
    cf: &'a mut [T],
    rf_d: &'a mut [T],
    row_sums: &'a mut [f64],
    recv: &'a mut [f64],
    cols: &'a mut [f64],
}

impl<T: Float> ColumnPart<T> {
    /// Rank `rank`'s part of the `rows x cols` matrix of `shape` whose columns the ranks own as
    /// `owners` says.
    pub(crate) fn new(shape: &Shape, owners: Vec<Range<usize>>, rank: usize) -> Self {
        let (rows, cols) = match shape.layout() {
            crate::Layout::Factored { rows, cols, .. } => (rows, cols),
            crate::Layout::Vector { len } => (1, len),
        };
        let width = owners[rank].len();
        Self {
            rows,
            cols,
            owners,
            rank,
            state: vec![T::zero(); rows * width + 2 * rows + 2 * width],
            work: vec![T::zero(); 3 * rows + 2 * width],
            sums: vec![0.0; 2 * rows + width],
        }
    }

    fn width(&self) -> usize {
        self.owners[self.rank].len()
    }

    /// The columns rank `rank` owns.
    pub(crate) fn units_of(&self, rank: usize) -> Range<usize> {
        self.owners[rank].clone()
    }

    /// Elements rank `rank` holds.
    pub(crate) fn local_len(&self, rank: usize) -> usize {
        self.rows * self.owners[rank].len()
    }

    pub(crate) fn numel(&self) -> usize {
        self.rows * self.cols
    }

    pub(crate) fn state_len(&self) -> usize {
        self.state.len()
    }

    /// Bytes of the workspace.
    pub(crate) fn work_bytes(&self) -> usize {
        self.work.len() * size_of::<T>() + self.sums.len() * 8
    }

    /// Rank `rank`'s elements (`rows x` its columns) from the whole matrix, or into it.
    pub(crate) fn rows_of<'a>(&self, rank: usize, whole: &'a [T]) -> impl Iterator<Item = &'a [T]> {
        let c = self.owners[rank].clone();
        whole
            .chunks_exact(self.cols.max(1))
            .map(move |row| &row[c.clone()])
    }

    /// Writes rank `rank`'s elements into the whole matrix.
    pub(crate) fn scatter(&self, rank: usize, local: &[T], whole: &mut [T]) {
        let c = self.owners[rank].clone();
        if c.is_empty() {
            return;
        }
        for (row, part) in whole
            .chunks_exact_mut(self.cols)
            .zip(local.chunks_exact(c.len()))
        {
            row[c.clone()].copy_from_slice(part);
        }
    }

    /// The named pieces (see [`super::shard::Part::pieces`]); the units are columns.
    pub(crate) fn pieces(&self) -> Vec<(&'static str, Extent, Range<usize>)> {
        let (rows, w) = (self.rows, self.width());
        let lens = [rows * w, rows, w, rows, w];
        let extents = [
            Extent::Block(rows),
            Extent::Shared(rows),
            Extent::PerUnit(1),
            Extent::Shared(rows),
            Extent::PerUnit(1),
        ];
        let mut start = 0;
        crate::FACTORED_KEYS
            .into_iter()
            .zip(extents.into_iter().zip(lens))
            .map(|(key, (extent, len))| {
                start += len;
                (key, extent, start - len..start)
            })
            .collect()
    }

    /// Bytes rank `rank` sends after `phase`.
    pub(crate) fn payload_len(&self, phase: Phase, rank: usize) -> usize {
        if self.owners[rank].is_empty() {
            return 0;
        }
        match phase {
            Phase::Norm | Phase::Momentum => 1 + self.rows * 8,
            Phase::ColumnNorm => 1 + 8,
        }
    }

    fn cut(&mut self) -> (State<'_, T>, Scratch<'_, T>) {
        let (rows, w) = (self.rows, self.width());
        let (m, rest) = self.state.split_at_mut(rows * w);
        let (sq_row, rest) = rest.split_at_mut(rows);
        let (sq_col, rest) = rest.split_at_mut(w);
        let (res_row, res_col) = rest.split_at_mut(rows);
        let (next_row, rest) = self.work.split_at_mut(rows);
        let (next_col, rest) = rest.split_at_mut(w);
        let (rf, rest) = rest.split_at_mut(rows);
        let (cf, rf_d) = rest.split_at_mut(w);
        let (row_sums, rest) = self.sums.split_at_mut(rows);
        let (recv, cols) = rest.split_at_mut(rows);
        let state = State {
            m,
            sq_row,
            sq_col,
            res_row,
            res_col,
        };
        let scratch = Scratch {
            next_row,
            next_col,
            rf,
            cf,
            rf_d,
            row_sums,
            recv,
            cols,
        };
        (state, scratch)
    }

    /// Sweep 1: the rows' sums over this rank's columns (sent) and its columns' statistics.
    pub(crate) fn sweep_norm<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        grad: &[G],
        out: &mut Vec<u8>,
    ) {
        let (w, rows) = (self.width(), self.rows);
        if w == 0 {
            return;
        }
        let (s, x) = self.cut();
        let valid = [&*s.sq_row, &*s.sq_col, &*s.res_row, &*s.res_col]
            .into_iter()
            .all(valid_statistics);
        out.push(u8::from(!valid));
        sq_sums(grad, w, k, (x.row_sums, x.cols));
        averages(
            x.next_col,
            (s.sq_col, x.cols),
            rows,
            (k.beta2, k.one_minus_beta2),
        );
        push(out, x.row_sums);
    }

    /// After the exchange of sweep 1: every row's new statistic; `Ok` means the column-norm
    /// exchange comes next.
    pub(crate) fn finish_norm<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<(), Failure> {
        let ranks = self.owners.len();
        let cols = self.cols;
        let (s, x) = self.cut();
        let corrupt = !add_up_rows(ranks, payload, (x.row_sums, x.recv));
        let betas = (k.beta2, k.one_minus_beta2);
        averages(x.next_row, (s.sq_row, x.row_sums), cols, betas);
        if corrupt || !all_finite(x.next_row) {
            return Err(Failure::Norm);
        }
        Ok(())
    }

    /// The rank's part of the update's norm (sent), with the factors of sweep 2.
    pub(crate) fn sweep_column_norm<G: Element<Compute = T>>(
        &mut self,
        grad: &[G],
        out: &mut Vec<u8>,
    ) {
        let w = self.width();
        if w == 0 {
            return;
        }
        let (_, x) = self.cut();
        let finite = all_finite(x.next_col);
        out.push(u8::from(!finite));
        let part = if finite {
            norm_part(grad, w, (x.next_row, x.next_col), x.cols)
        } else {
            f64::NAN
        };
        out.extend_from_slice(&part.to_le_bytes());
    }

    /// After the column-norm exchange: the clip.
    pub(crate) fn finish_column_norm<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<Clip<T>, Failure> {
        let (numel, ranks) = (self.numel(), self.owners.len());
        let (_, x) = self.cut();
        let mut sum = 0.0;
        for rank in 0..ranks {
            let Some((&status, mut data)) = payload(rank).split_first() else {
                continue;
            };
            if status != 0 {
                return Err(Failure::Norm);
            }
            sum += take_f64(&mut data);
        }
        let sum_sq = row_mean(x.next_row).as_f64() * sum;
        if !sum_sq.is_finite() {
            return Err(Failure::Norm);
        }
        factors(x.next_row, x.next_col, (x.rf, x.cf), None);
        Ok(Clip::from_sum_sq(sum_sq, numel, k.clip_threshold))
    }

    /// The error this rank sees in its own data after [`Failure::Norm`].
    pub(crate) fn local_error<G: Element<Compute = T>>(&mut self, grad: &[G]) -> Error {
        let (w, cols, c0) = (self.width(), self.cols, self.owners[self.rank].start);
        let (s, _) = self.cut();
        let valid = [&*s.sq_row, &*s.sq_col, &*s.res_row, &*s.res_col]
            .into_iter()
            .all(valid_statistics);
        if !valid {
            return Error::NonFiniteState;
        }
        match gradient_error(grad) {
            Error::NonFiniteGradient { index } => Error::NonFiniteGradient {
                index: (index / w) * cols + c0 + index % w,
            },
            e => globally(e, 0),
        }
    }

    /// Commits the new squared-gradient statistics.
    pub(crate) fn commit_norm(&mut self) {
        let (s, x) = self.cut();
        s.sq_row.copy_from_slice(x.next_row);
        s.sq_col.copy_from_slice(x.next_col);
    }

    /// Sweep 2: the momentum, the rows' instability sums over this rank's columns (sent) and
    /// its columns' instability statistics.
    pub(crate) fn sweep_momentum<G: Element<Compute = T>>(
        &mut self,
        k: &Coefficients<T>,
        clip: Clip<T>,
        grad: &[G],
        out: &mut Vec<u8>,
    ) {
        let (w, rows) = (self.width(), self.rows);
        if w == 0 {
            return;
        }
        let (s, x) = self.cut();
        for (d, &f) in x.rf_d.iter_mut().zip(&*x.rf) {
            *d = f / clip.d;
        }
        momentum_sums((grad, s.m), w, (x.rf_d, x.cf), k, (x.row_sums, x.cols));
        averages(
            x.next_col,
            (s.res_col, x.cols),
            rows,
            (k.beta3, k.one_minus_beta3),
        );
        out.push(u8::from(!all_finite(x.next_col)));
        push(out, x.row_sums);
    }

    /// After the exchange of sweep 2: the instability statistics, committed, and the factors
    /// of sweep 3.
    pub(crate) fn finish_momentum<'p>(
        &mut self,
        k: &Coefficients<T>,
        payload: impl Fn(usize) -> &'p [u8],
    ) -> Result<(), Failure> {
        let ranks = self.owners.len();
        let has_columns = self.width() > 0;
        let cols = self.cols;
        let (s, x) = self.cut();
        let failed = !add_up_rows(ranks, payload, (x.row_sums, x.recv));
        let betas = (k.beta3, k.one_minus_beta3);
        averages(x.next_row, (s.res_row, x.row_sums), cols, betas);
        if failed || !all_finite(x.next_row) {
            return Err(Failure::State);
        }
        if k.confidence {
            s.res_row.copy_from_slice(x.next_row);
            if has_columns {
                s.res_col.copy_from_slice(x.next_col);
            }
        }
        factored::res_factors(k, (x.next_row, x.next_col), (x.rf, x.cf));
        Ok(())
    }

    /// Sweep 3: the parameters of this rank's columns.
    pub(crate) fn sweep_apply(&mut self, k: &Coefficients<T>, param: &mut [T]) {
        let w = self.width();
        if w == 0 {
            return;
        }
        let (s, x) = self.cut();
        small::apply((param, &*s.m), w, (&*x.rf, &*x.cf), 0, k);
    }
}

/// Every rank's row sums (what `payload(rank)` holds after its status byte; a rank without
/// columns sends nothing) added up in rank order into `total` (`scratch`: one rank's);
/// whether every status byte is 0.
fn add_up_rows<'p>(
    ranks: usize,
    payload: impl Fn(usize) -> &'p [u8],
    (total, scratch): (&mut [f64], &mut [f64]),
) -> bool {
    let mut ok = true;
    let mut first = true;
    for rank in 0..ranks {
        let Some((&status, mut data)) = payload(rank).split_first() else {
            continue;
        };
        ok &= status == 0;
        take(&mut data, scratch);
        if first {
            total.copy_from_slice(scratch);
            first = false;
        } else {
            for (a, &b) in total.iter_mut().zip(&*scratch) {
                *a += b;
            }
        }
    }
    ok
}

/// New statistics from the old ones and sums over `n` values each, rounded once from `f64`
/// ([`average`]).
fn averages<T: Float>(next: &mut [T], (old, sums): (&[T], &[f64]), n: usize, (beta, omb): (T, T)) {
    let n = T::from_f64(n as f64);
    for ((x, &old), &sum) in next.iter_mut().zip(old).zip(sums) {
        *x = average(old, T::from_f64(sum), n, beta, omb);
    }
}
