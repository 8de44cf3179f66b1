//! The factored step (rank >= 2) in three sweeps over the tensor:
//!
//! 1. read `g`: row and column sums of `g^2 + eps1`, the new statistics `r`, `c`, and the
//!    squared norm of the unclipped update `u`, for the clip;
//! 2. read `g` and `m`, write `m`: the momentum and the instability statistics `R`, `C`;
//! 3. read `m` and `p`, write `p`: the confidence-scaled update.
//!
//! The norm needs the new statistics of every row and column, so a direct computation would
//! read `g` once more after sweep 1. Instead sweep 1 reads each group of rows twice while it is
//! still in cache: first for the row sums, which give the rows' new statistics `r_i`, then for
//! the column sums and the weighted column sums `v_j = sum_i g_ij^2 / r_i`. With the
//! reference's factors `rf_i^2 = mean(r) / r_i` and `cf_j^2 = 1 / c_j`, the squared norm is
//! `sum_ij (rf_i cf_j g_ij)^2 = mean(r) sum_j v_j / c_j`: the same value, rounded differently
//! (a relative difference of a few units in the last place in the clip divisor).
//!
//! New statistics go to the workspace first and are committed only once checked finite, so a
//! bad gradient or an overflow leaves the state as it was. This file steps a single matrix, cut
//! into lanes of rows (each lane keeps its own column partial sums, added up in lane order
//! afterwards); `batch.rs` steps a batch of matrices, cut into lanes of whole matrices.
//!
//! The update follows the reference operation for operation with one exception: when the
//! update is clipped, the clip divisor `d` divides the row factor once per row
//! (`((rf / d) * cf) * g`) instead of every element (`((rf * cf) * g) / d`), which saves a
//! division per element and moves the result by at most a few units in the last place.

use pulp::Simd;

use super::formula::{Clip, norm_from_quotients, quotients};
use super::packed::Moments;
use super::parts::{Dims, Parts, Stats, Work};
use super::rows::{self, factors, finish_cols};
use super::sum::{ColSums, combine_lanes};
use super::sweeps::Factors;
use crate::Element;
use crate::check::{all_finite, gradient_error};
use crate::config::Coefficients;
use crate::exec::lanes::{LaneItems, lane_range, split, split_mut};
use crate::exec::simd::Ops;
use crate::exec::{Executor, LaneKernel};
use crate::{Error, Float};

/// Sweep 1: the new squared-gradient statistics and their factors (kept in the workspace) and
/// the clip. Writes nothing but the workspace.
pub(super) fn prepare<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> Result<Clip<T>, Error> {
    let sum_sq = matrix_norm(exec, k, dims, grad, &parts.stats, &mut parts.work)?;
    if !sum_sq.is_finite() {
        return Err(gradient_error(grad));
    }
    Ok(Clip::from_sum_sq(sum_sq, grad.len(), k.clip_threshold))
}

// ---- one matrix, lanes of rows ----

/// Sweep 1 of one matrix: squared-gradient statistics of a lane's rows.
struct SqStats<'a, T, G> {
    cols: usize,
    k: &'a Coefficients<T>,
    g: core::marker::PhantomData<G>,
}

impl<'a, T: Float, G: Element<Compute = T>> LaneKernel for SqStats<'a, T, G> {
    /// gradient rows, old row statistics, new row statistics, column sums, weighted column
    /// sums
    type Item = (
        &'a [G],
        &'a [T],
        &'a mut [T],
        ColSums<'a, T>,
        ColSums<'a, T>,
    );

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (g, old, next, sums, weighted): &mut Self::Item) {
        sums.clear();
        weighted.clear();
        let (o, k) = (Ops::new(simd), self.k);
        rows::sq_stats(o, g, self.cols, (old, next), (sums, weighted), k);
    }
}

/// Sweep 2 of one matrix: momentum and instability statistics of a lane's rows.
struct Momentum<'a, T, G> {
    cols: usize,
    cf: &'a [T],
    d: T,
    k: &'a Coefficients<T>,
    g: core::marker::PhantomData<G>,
}

impl<'a, T: Float, G: Element<Compute = T>> LaneKernel for Momentum<'a, T, G> {
    /// gradient rows, momentum rows, row factors, old and new instability row statistics,
    /// column sums
    type Item = (
        &'a [G],
        Moments<'a, T>,
        &'a [T],
        &'a [T],
        &'a mut [T],
        ColSums<'a, T>,
    );

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (g, m, rf, old, next, sums): &mut Self::Item) {
        sums.clear();
        let f = Factors {
            rf,
            cf: self.cf,
            d: self.d,
        };
        rows::momentum(
            Ops::new(simd),
            (g, m.reborrow()),
            self.cols,
            f,
            (old, next),
            sums,
            self.k,
        );
    }

    #[inline(always)]
    fn widest(&self, (_, m, ..): &Self::Item) -> bool {
        m.is_packed()
    }
}

/// Sweep 3 of one matrix: the parameter update of a lane's rows.
struct Apply<'a, T, P> {
    cols: usize,
    cf: &'a [T],
    k: &'a Coefficients<T>,
    p: core::marker::PhantomData<P>,
}

impl<'a, T: Float, P: Element<Compute = T>> LaneKernel for Apply<'a, T, P> {
    /// parameter rows, momentum rows, row factors, flat index of the lane's first parameter,
    /// whether every parameter written is finite ([`rows::apply`])
    type Item = (&'a mut [P], Moments<'a, T>, &'a [T], usize, bool);

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (p, m, rf, start, finite): &mut Self::Item) {
        let o = Ops::new(simd);
        *finite = rows::apply(
            o,
            (p, m.reborrow()),
            self.cols,
            (rf, self.cf),
            *start,
            self.k,
        );
    }

    #[inline(always)]
    fn widest(&self, (_, m, ..): &Self::Item) -> bool {
        m.is_packed()
    }
}

/// Sweep 1 of one matrix: returns the squared norm of the unclipped update, with the new
/// statistics and their factors in the workspace.
fn matrix_norm<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    grad: &[G],
    stats: &Stats<'_, T>,
    work: &mut Work<'_, T>,
) -> Result<f64, Error> {
    sq_lanes(
        exec,
        k,
        dims,
        grad,
        (stats.sq_row, work.next_row),
        (work.col_sums, work.weighted_sums),
    );
    sq_finish(k, dims, stats.sq_col, work).ok_or_else(|| gradient_error(grad))
}

/// Sweep 1 over the `dims.lanes` lanes of `dims.rows` rows: the rows' new statistics into
/// `next_row`, each lane's column sums and weighted column sums into `col_sums`, `weighted`
/// ([`ColSums`], one after another).
pub(super) fn sq_lanes<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    grad: &[G],
    (old_row, next_row): (&[T], &mut [T]),
    (col_sums, weighted): (&mut [T], &mut [T]),
) {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
        .zip(split(old_row, 1, rows, lanes))
        .zip(split_mut(next_row, 1, rows, lanes))
        .zip(col_sums.chunks_exact_mut(ColSums::<T>::PARTS * cols))
        .zip(weighted.chunks_exact_mut(ColSums::<T>::PARTS * cols))
        .map(|((((g, old), next), sums), w)| {
            (
                g,
                old,
                next,
                ColSums::new(sums, cols),
                ColSums::new(w, cols),
            )
        })
        .collect();
    let g = core::marker::PhantomData;
    exec.run(&SqStats { cols, k, g }, &mut items);
}

/// After sweep 1, with every row's new statistic in `work.next_row` and every lane's sums in
/// `work.col_sums` and `work.weighted_sums` (added up here in lane order): the new column
/// statistics, the factors of both and the squared norm of the unclipped update; `None` if a
/// new statistic is not finite. `dims.rows` counts all rows of the matrix.
pub(super) fn sq_finish<T: Float>(
    k: &Coefficients<T>,
    dims: Dims,
    old_col: &[T],
    work: &mut Work<'_, T>,
) -> Option<f64> {
    let Work {
        next_row,
        next_col,
        row_factors: rf,
        col_factors: cf,
        col_sums,
        weighted_sums,
    } = work;
    let cols = dims.cols;
    let col_sums = combine_lanes(col_sums, cols);
    let q = combine_lanes(weighted_sums, cols);
    finish_cols(
        col_sums,
        dims.rows,
        old_col,
        next_col,
        k.beta2,
        k.one_minus_beta2,
    );
    if !(all_finite(next_row) && all_finite(next_col)) {
        return None;
    }
    factors(next_row, next_col, (rf, cf), None);
    quotients(q, next_col);
    Some(norm_from_quotients(next_row, q))
}

/// Sweeps 2 and 3 of one matrix, after the squared-gradient statistics were committed;
/// returns whether every parameter written is finite ([`apply_lanes`]).
pub(super) fn update<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    d: T,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> Result<bool, Error> {
    let stats = &mut parts.stats;
    let work = &mut parts.work;
    let row_factors = &*work.row_factors;
    let old = (&*stats.res_row, &mut *work.next_row);
    momentum_lanes(
        exec,
        k,
        dims,
        (d, row_factors, work.col_factors),
        (grad, parts.m.reborrow()),
        old,
        work.col_sums,
    );
    if !momentum_finish(k, dims, stats.res_col, work) {
        return Err(Error::NonFiniteState);
    }
    if k.confidence {
        stats.res_row.copy_from_slice(work.next_row);
        stats.res_col.copy_from_slice(work.next_col);
    }
    res_factors(
        k,
        (stats.res_row, stats.res_col),
        (work.row_factors, work.col_factors),
    );
    let f = (&*work.row_factors, &*work.col_factors);
    Ok(apply_lanes(
        exec,
        k,
        dims,
        (param, parts.m.reborrow()),
        f,
        0,
    ))
}

/// Sweep 2 over the lanes: the momentum of the lanes' rows with the update's factors and clip
/// divisor `d`, the rows' new instability statistics into `next_row` and each lane's column
/// sums into `col_sums`.
pub(super) fn momentum_lanes<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    (d, rf, cf): (T, &[T], &[T]),
    (grad, m): (&[G], Moments<'_, T>),
    (old_row, next_row): (&[T], &mut [T]),
    col_sums: &mut [T],
) {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
        .zip(m.lanes((rows, lanes), 1, cols))
        .zip(split(rf, 1, rows, lanes))
        .zip(split(old_row, 1, rows, lanes))
        .zip(split_mut(next_row, 1, rows, lanes))
        .zip(col_sums.chunks_exact_mut(ColSums::<T>::PARTS * cols))
        .map(|(((((g, m), f), old), next), sums)| (g, m, f, old, next, ColSums::new(sums, cols)))
        .collect();
    let g = core::marker::PhantomData;
    exec.run(&Momentum { cols, cf, d, k, g }, &mut items);
}

/// After sweep 2, with every row's new instability statistic in `work.next_row` and every
/// lane's sums in `work.col_sums` (added up here in lane order): the new column statistics;
/// whether all new statistics are finite.
pub(super) fn momentum_finish<T: Float>(
    k: &Coefficients<T>,
    dims: Dims,
    old_col: &[T],
    work: &mut Work<'_, T>,
) -> bool {
    let col_sums = combine_lanes(work.col_sums, dims.cols);
    finish_cols(
        col_sums,
        dims.rows,
        old_col,
        work.next_col,
        k.beta3,
        k.one_minus_beta3,
    );
    all_finite(work.next_row) && all_finite(work.next_col)
}

/// The factors of sweep 3 from the committed instability statistics (every row's), or ones
/// without the confidence term.
pub(super) fn res_factors<T: Float>(
    k: &Coefficients<T>,
    (row, col): (&[T], &[T]),
    (rf, cf): (&mut [T], &mut [T]),
) {
    if k.confidence {
        factors(row, col, (rf, cf), k.bias_correction3);
    } else {
        rf.fill(T::one());
        cf.fill(T::one());
    }
}

/// Sweep 3 over the lanes: the parameters of the lanes' rows with factors `(rf, cf)`;
/// `offset` is the flat index of `param[0]` in its tensor (for stochastic rounding). Returns
/// whether every parameter written is finite: a 16-bit parameter can round to an infinity.
pub(super) fn apply_lanes<T: Float, P: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    (param, m): (&mut [P], Moments<'_, T>),
    (rf, cf): (&[T], &[T]),
    offset: usize,
) -> bool {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let mut items: LaneItems<_> = split_mut(param, cols, rows, lanes)
        .zip(m.lanes((rows, lanes), 1, cols))
        .zip(split(rf, 1, rows, lanes))
        .enumerate()
        .map(|(lane, ((p, m), f))| {
            let start = offset + lane_range(rows, lanes, lane).0 * cols;
            (p, m, f, start, false)
        })
        .collect();
    let p = core::marker::PhantomData;
    exec.run(&Apply { cols, cf, k, p }, &mut items);
    items.iter().all(|item| item.4)
}
