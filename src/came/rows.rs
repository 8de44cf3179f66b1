//! The three sweeps on a range of whole rows of one matrix: the building blocks that a single
//! matrix (cut into lanes of rows, `factored.rs`) and a batch of matrices (cut into lanes of
//! matrices, `batch.rs`) share.
//!
//! Wide rows are walked `GROUP` side by side and the remaining rows one at a time, so the same
//! rows are always grouped the same way; rows too short for vectors take the loops of
//! `small.rs`.

use pulp::Simd;

use super::formula::{self, average, row_mean, rsqrt};
use super::packed::{self, Moments};
use super::small::{self, SMALL_COLS};
use super::sum::{BLOCK_ROWS, ColSums};
use super::sweeps::{
    Factors, GROUP, apply_rows, col_sq_terms, momentum_rows, row_sq_sum, rows, rows_mut,
    written_finite,
};
use crate::Element;
use crate::Float;
use crate::config::Coefficients;
use crate::exec::simd::{Ops, Scalar};

/// How many of `rows` rows of `cols` elements are walked `GROUP` at a time (the rest one at a
/// time). Narrow rows are walked one after another: the tensor is then one sequential stream
/// per array, which the hardware prefetchers follow best, and the per-column data stays in the
/// L1 cache anyway. Wide rows are walked in groups, which loads the per-column data (too big
/// to stay in L1 beside the streams) once per group and keeps `GROUP` long streams in flight.
#[inline(always)]
fn grouped<T>(cols: usize, rows: usize) -> usize {
    if cols * size_of::<T>() > NARROW_ROW_BYTES {
        rows / GROUP * GROUP
    } else {
        0
    }
}

/// The rows of group `group` (of `R` rows of `cols`) of `data`, or empty rows where `data`
/// ends first (group `g + 1`: what follows group `g`'s rows in their streams).
#[inline(always)]
fn group_rows<T, const R: usize>(data: &[T], group: usize, cols: usize) -> [&[T]; R] {
    match data.get(group * R * cols..(group + 1) * R * cols) {
        Some(group) => rows(group, cols),
        None => [&[]; R],
    }
}

/// Rows up to this many bytes are walked one at a time.
const NARROW_ROW_BYTES: usize = 8192;

/// Sweep 1 on some rows: `next = beta2 old + (1 - beta2) mean_j(g^2 + eps1)` per row; column
/// terms added to `sums`, weighted column terms `g_ij^2 / next_i` to `weighted`, in blocks of
/// [`BLOCK_ROWS`] rows (see [`super::sum`]).
#[inline(always)]
pub(super) fn sq_stats<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    g: &[G],
    cols: usize,
    (old, next): (&[T], &mut [T]),
    (sums, weighted): (&mut ColSums<'_, T>, &mut ColSums<'_, T>),
    k: &Coefficients<T>,
) {
    let blocks = g.chunks(BLOCK_ROWS * cols).zip(old.chunks(BLOCK_ROWS));
    for ((g, old), next) in blocks.zip(next.chunks_mut(BLOCK_ROWS)) {
        let block = (&mut *sums.block, &mut *weighted.block);
        sq_stats_block(o, g, cols, (old, next), block, k);
        sums.fold(o);
        weighted.fold(o);
    }
}

/// [`sq_stats`] on one block of rows, adding to the blocks' column sums.
#[inline(always)]
fn sq_stats_block<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    g: &[G],
    cols: usize,
    (old, next): (&[T], &mut [T]),
    sums: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    if cols < SMALL_COLS {
        return small::sq_stats(g, cols, (old, next), sums, k);
    }
    let split = grouped::<T>(cols, next.len());
    let (g4, g1) = g.split_at(split * cols);
    let (old4, old1) = old.split_at(split);
    let (next4, next1) = next.split_at_mut(split);
    let (sums, weighted) = sums;
    sq_stats_by::<S, T, G, GROUP>(o, g4, cols, (old4, next4), (sums, weighted), k);
    sq_stats_by::<S, T, G, 1>(o, g1, cols, (old1, next1), (sums, weighted), k);
}

#[inline(always)]
fn sq_stats_by<S: Simd, T: Float, G: Element<Compute = T>, const R: usize>(
    o: Ops<S, T>,
    g: &[G],
    cols: usize,
    (old, next): (&[T], &mut [T]),
    (sums, weighted): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let stats = old.chunks_exact(R).zip(next.chunks_exact_mut(R));
    for (group, (old, next)) in stats.enumerate() {
        let g_rows = group_rows::<G, R>(g, group, cols);
        let after = group_rows::<G, R>(g, group + 1, cols);
        // the rows are summed one after another: each is followed in its stream by the next
        let mut s = [T::zero(); R];
        for r in 0..R {
            let next = if r + 1 < R { g_rows[r + 1] } else { after[0] };
            s[r] = row_sq_sum(o, (g_rows[r], next), k.eps1);
        }
        for r in 0..R {
            next[r] = average(old[r], s[r], n, k.beta2, k.one_minus_beta2);
        }
        let w: [T; R] = core::array::from_fn(|r| T::one() / next[r]);
        col_sq_terms::<S, T, G, R>(o, g_rows, k.eps1, w, (&mut *sums, &mut *weighted));
    }
}

/// Sweep 2 on some rows: their momentum and instability, `next` row statistics, column terms
/// added to `sums` in blocks of [`BLOCK_ROWS`] rows.
#[inline(always)]
pub(super) fn momentum<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    (g, m): (&[G], Moments<'_, T>),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut ColSums<'_, T>,
    k: &Coefficients<T>,
) {
    let data = g.chunks(BLOCK_ROWS * cols).zip(m.chunks(BLOCK_ROWS, cols));
    let stats = f.rf.chunks(BLOCK_ROWS).zip(old.chunks(BLOCK_ROWS));
    for (((g, m), (rf, old)), next) in data.zip(stats).zip(next.chunks_mut(BLOCK_ROWS)) {
        let f = Factors { rf, ..f };
        match m {
            Moments::Full(m) => momentum_block(o, (g, m), cols, f, (old, next), sums.block, k),
            packed => packed::momentum(o, (g, packed), cols, f, (old, next), sums.block, k),
        }
        sums.fold(o);
    }
}

/// [`momentum`] on one block of rows, adding to the block's column sums.
#[inline(always)]
fn momentum_block<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    (g, m): (&[G], &mut [T]),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    if cols < SMALL_COLS {
        return small::momentum((g, m), cols, (f.rf, f.cf, f.d), (old, next), sums, k);
    }
    let split = grouped::<T>(cols, next.len());
    let (g4, g1) = g.split_at(split * cols);
    let (m4, m1) = m.split_at_mut(split * cols);
    let (rf4, rf1) = f.rf.split_at(split);
    let (old4, old1) = old.split_at(split);
    let (next4, next1) = next.split_at_mut(split);
    let f4 = Factors { rf: rf4, ..f };
    let f1 = Factors { rf: rf1, ..f };
    momentum_by::<S, T, G, GROUP>(o, (g4, m4), cols, f4, (old4, next4), sums, k);
    momentum_by::<S, T, G, 1>(o, (g1, m1), cols, f1, (old1, next1), sums, k);
}

#[inline(always)]
fn momentum_by<S: Simd, T: Float, G: Element<Compute = T>, const R: usize>(
    o: Ops<S, T>,
    (g, m): (&[G], &mut [T]),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let row_stats = f.rf.chunks_exact(R).zip(old.chunks_exact(R));
    let mut m_rest = m;
    for (group, ((rf, old), next)) in row_stats.zip(next.chunks_exact_mut(R)).enumerate() {
        // the clip divisor divides the row factor (exactly 1 when the update is not clipped)
        let rf_d: [T; R] = core::array::from_fn(|r| rf[r] / f.d);
        let (m, m_after) = core::mem::take(&mut m_rest).split_at_mut(R * cols);
        let data = (group_rows(g, group, cols), rows_mut(m, cols));
        let after = (group_rows(g, group + 1, cols), group_rows(m_after, 0, cols));
        let s = momentum_rows::<S, T, G, R, true>(o, data, after, rf_d, f.cf, k, sums);
        for r in 0..R {
            next[r] = average(old[r], s[r], n, k.beta3, k.one_minus_beta3);
        }
        m_rest = m_after;
    }
}

/// Sweep 3 on some rows: the parameters (`start`: the flat index of `p[0]` in its tensor).
/// Returns whether every parameter written is known to be finite. A 16-bit parameter can round
/// to an infinity ([`crate::Error::ParameterOverflow`]): wide rows are checked a group at a
/// time right after they are written, while in cache, instead of in another sweep over the
/// tensor; rows too short for vectors are not checked here (`false`). `f32` and `f64`
/// parameters are finite whenever the statistics are (checked before sweep 3).
#[inline(always)]
pub(super) fn apply<S: Simd, T: Float, P: Element<Compute = T>>(
    o: Ops<S, T>,
    (p, m): (&mut [P], Moments<'_, T>),
    cols: usize,
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) -> bool {
    let m = match m {
        Moments::Full(m) => &*m,
        packed => return packed::apply(o, (p, packed), cols, (rf, cf), start, k),
    };
    if cols < SMALL_COLS {
        small::apply((p, m), cols, (rf, cf), start, k);
        return !P::ROUNDS;
    }
    let split = grouped::<T>(cols, rf.len());
    let (p4, p1) = p.split_at_mut(split * cols);
    let (m4, m1) = m.split_at(split * cols);
    let (rf4, rf1) = rf.split_at(split);
    let finite = apply_by::<S, T, P, GROUP>(o, (p4, m4), cols, (rf4, cf), start, k);
    finite & apply_by::<S, T, P, 1>(o, (p1, m1), cols, (rf1, cf), start + split * cols, k)
}

/// [`apply`] on rows `R` at a time; whether every parameter written is finite.
#[inline(always)]
fn apply_by<S: Simd, T: Float, P: Element<Compute = T>, const R: usize>(
    o: Ops<S, T>,
    (p, m): (&mut [P], &[T]),
    cols: usize,
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) -> bool {
    let mut p_rest = p;
    let mut finite = true;
    for (group, rf) in rf.chunks_exact(R).enumerate() {
        let rf: [T; R] = core::array::from_fn(|r| rf[r]);
        let at = start + group * R * cols;
        let (p, p_after) = core::mem::take(&mut p_rest).split_at_mut(R * cols);
        let data = (rows_mut(&mut *p, cols), group_rows(m, group, cols));
        let after = (group_rows(p_after, 0, cols), group_rows(m, group + 1, cols));
        apply_rows::<S, T, P, R, true>(o, data, after, (rf, cf), at, k);
        finite &= written_finite(p);
        p_rest = p_after;
    }
    finite
}

/// Column statistics from column sums over `rows` rows.
#[inline(always)]
pub(super) fn finish_cols<T: Float>(
    sums: &[T],
    rows: usize,
    old: &[T],
    next: &mut [T],
    beta: T,
    omb: T,
) {
    let n = T::from_f64(rows as f64);
    for ((nx, &o), &s) in next.iter_mut().zip(old).zip(sums) {
        *nx = average(o, s, n, beta, omb);
    }
}

/// The factors of one matrix's statistics (lines 7-8 or 14-15 of Algorithm 1):
/// `rf = rsqrt(row / mean(row))`, `cf = rsqrt(col)`, or `rsqrt(col / bc)` with a bias
/// correction `bc` ([`formula::debias`]).
#[inline(always)]
pub(super) fn factors<T: Float>(
    row: &[T],
    col: &[T],
    (rf, cf): (&mut [T], &mut [T]),
    bias_correction: Option<T>,
) {
    let (s, one) = (Ops::<Scalar, T>::new(Scalar), T::one());
    let mean = row_mean(row);
    for (f, &r) in rf.iter_mut().zip(row) {
        *f = rsqrt(s, one, r / mean);
    }
    for (f, &c) in cf.iter_mut().zip(col) {
        let c = bias_correction.map_or(c, |bc| formula::debias(s, c, bc));
        *f = rsqrt(s, one, c);
    }
}

/// `x = rsqrt(x)` over a slice, in vectors.
#[inline(always)]
pub(super) fn rsqrt_in_place<S: Simd, T: Float>(o: Ops<S, T>, x: &mut [T]) {
    let (xv, xt) = T::as_mut_simd::<S>(x);
    let one = o.splat(T::one());
    for v in xv {
        *v = rsqrt(o, one, *v);
    }
    let s = Ops::<Scalar, T>::new(Scalar);
    for v in xt {
        *v = rsqrt(s, T::one(), *v);
    }
}

/// The factors of every matrix of a batch lane (lines 7-8 or 14-15), in vector passes over
/// the lane: each matrix's mean in all its row slots, one division pass, then the square roots
/// (the columns bias-corrected first when `bias_correction` is given, as in [`factors`]).
#[inline(always)]
pub(super) fn batch_factors<S: Simd, T: Float>(
    o: Ops<S, T>,
    rows: usize,
    (row, col): (&[T], &[T]),
    (rf, cf): (&mut [T], &mut [T]),
    bias_correction: Option<T>,
) {
    for (row, rf) in row.chunks_exact(rows).zip(rf.chunks_exact_mut(rows)) {
        rf.fill(row_mean(row));
    }
    factors_from_means(o, (row, col), (rf, cf), bias_correction);
}

/// [`batch_factors`] with each matrix's row mean already in its slots of `rf`.
#[inline(always)]
pub(super) fn factors_from_means<S: Simd, T: Float>(
    o: Ops<S, T>,
    (row, col): (&[T], &[T]),
    (rf, cf): (&mut [T], &mut [T]),
    bias_correction: Option<T>,
) {
    for (f, &r) in rf.iter_mut().zip(row) {
        *f = r / *f;
    }
    rsqrt_in_place(o, rf);
    cf.copy_from_slice(col);
    if let Some(bc) = bias_correction {
        let s = Ops::<Scalar, T>::new(Scalar);
        for c in cf.iter_mut() {
            *c = formula::debias(s, *c, bc);
        }
    }
    rsqrt_in_place(o, cf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_rows_are_grouped_and_narrow_rows_are_not() {
        // 8 KiB rows are narrow, one element more is wide
        assert_eq!(grouped::<f32>(2048, 10), 0);
        assert_eq!(grouped::<f32>(2049, 10), 8);
        assert_eq!(grouped::<f64>(1025, 3), 0);
        assert_eq!(grouped::<f64>(1025, 4), 4);
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact: the same operations as the reference
    fn factors_are_reciprocal_square_roots() {
        let (mut rf, mut cf) = ([0.0f64; 2], [0.0f64; 3]);
        factors(&[1.0, 4.0], &[4.0, 16.0, 0.25], (&mut rf, &mut cf), None);
        // mean(row) = 2.5: rf = 1 / sqrt(row / 2.5)
        assert_eq!(rf, [1.0 / (0.4f64).sqrt(), 1.0 / (1.6f64).sqrt()]);
        assert_eq!(cf, [0.5, 0.25, 2.0]);
        // bias-corrected columns: rsqrt(c / bc)
        factors(
            &[1.0, 4.0],
            &[4.0, 16.0, 0.25],
            (&mut rf, &mut cf),
            Some(0.25),
        );
        assert_eq!(cf, [0.25, 0.125, 1.0]);
    }
}
