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
//! bad gradient or an overflow leaves the state as it was. A single matrix is cut into lanes of
//! rows (each lane keeps its own column partial sums, added up in lane order afterwards); a
//! batch of matrices is cut into lanes of whole matrices, each lane with its own factor arrays.
//!
//! The update follows the reference operation for operation with one exception: when the
//! update is clipped, the clip divisor `d` divides the row factor once per row
//! (`((rf / d) * cf) * g`) instead of every element (`((rf * cf) * g) / d`), which saves a
//! division per element and moves the result by at most a few units in the last place.

use super::small::{self, SMALL_COLS, norm_from_quotients, quotients};
use super::{Clip, all_finite, clip_divisor, gradient_error, valid_statistics};
use crate::config::Coefficients;
use crate::kernels::{GROUP, apply_rows, col_sq_terms, momentum_rows, row_sq_sum, rows, rows_mut};
use crate::lanes::{Executor, LaneItems, LaneKernel, split, split_mut};
use pulp::Simd;

use crate::simd::Ops;
use crate::{Error, Float};

/// A factored tensor's sizes and its number of lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
    pub lanes: usize,
}

/// The four statistics vectors of the state, `batch x rows` or `batch x cols` each.
struct Stats<'s, T> {
    sq_row: &'s mut [T],
    sq_col: &'s mut [T],
    res_row: &'s mut [T],
    res_col: &'s mut [T],
}

/// The state buffer cut into its pieces.
struct Parts<'s, T> {
    m: &'s mut [T],
    stats: Stats<'s, T>,
    workspace: &'s mut [T],
}

fn parts<T: Float>(dims: Dims, numel: usize, state: &mut [T]) -> Parts<'_, T> {
    let (r, c) = (dims.batch * dims.rows, dims.batch * dims.cols);
    let (m, rest) = state.split_at_mut(numel);
    let (sq_row, rest) = rest.split_at_mut(r);
    let (sq_col, rest) = rest.split_at_mut(c);
    let (res_row, rest) = rest.split_at_mut(r);
    let (res_col, workspace) = rest.split_at_mut(c);
    Parts {
        m,
        stats: Stats {
            sq_row,
            sq_col,
            res_row,
            res_col,
        },
        workspace,
    }
}

/// Sweep 1: the new squared-gradient statistics and their factors (kept in the
/// workspace) and the clip. Writes nothing but the workspace.
pub(super) fn prepare<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<Clip<T>, Error> {
    let mut parts = parts(dims, grad.len(), state);
    let s = &parts.stats;
    let valid = [&s.sq_row, &s.sq_col, &s.res_row, &s.res_col]
        .into_iter()
        .all(|s| valid_statistics(s));
    if !valid {
        return Err(Error::NonFiniteState);
    }
    let sum_sq = if dims.batch == 1 {
        matrix_norm(exec, k, dims, grad, &parts.stats, parts.workspace)?
    } else {
        let lanes = batch_run(
            exec,
            k,
            dims,
            BatchSweep::Norm,
            T::one(),
            param,
            grad,
            &mut parts,
        )?;
        lanes.1
    };
    if !sum_sq.is_finite() {
        return Err(gradient_error(grad));
    }
    Ok(clip_divisor(sum_sq, grad.len(), k.clip_threshold))
}

/// Commits what [`prepare`] computed, then sweeps 2 and 3.
pub(super) fn finish<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    clip: Clip<T>,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<(), Error> {
    let mut parts = parts(dims, grad.len(), state);
    let [next_row, next_col, ..] = workspace_parts(dims, parts.workspace);
    parts.stats.sq_row.copy_from_slice(next_row);
    parts.stats.sq_col.copy_from_slice(next_col);
    if dims.batch == 1 {
        matrix_update(exec, k, dims, clip.d, param, grad, &mut parts)
    } else {
        let (finite, _) = batch_run(
            exec,
            k,
            dims,
            BatchSweep::Momentum,
            clip.d,
            param,
            grad,
            &mut parts,
        )?;
        if !finite {
            return Err(Error::NonFiniteState);
        }
        if k.confidence {
            let [next_row, next_col, ..] = workspace_parts(dims, parts.workspace);
            parts.stats.res_row.copy_from_slice(next_row);
            parts.stats.res_col.copy_from_slice(next_col);
        }
        batch_run(
            exec,
            k,
            dims,
            BatchSweep::Apply,
            clip.d,
            param,
            grad,
            &mut parts,
        )?;
        Ok(())
    }
}

// ---- per-row-range building blocks, shared by both ways of cutting lanes ----
//
// Each works on a range of whole rows, `GROUP` rows side by side and the remaining rows one
// at a time, so the same rows are always grouped the same way.

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

/// Rows up to this many bytes are walked one at a time.
const NARROW_ROW_BYTES: usize = 8192;

/// `next = beta2 old + (1 - beta2) mean_j(g^2 + eps1)` per row; column terms added to `sums`,
/// weighted column terms `g_ij^2 / next_i` to `weighted`.
#[inline(always)]
fn sq_stats<S: Simd, T: Float>(
    o: Ops<S, T>,
    g: &[T],
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
    sq_stats_by::<S, T, GROUP>(o, g4, cols, (old4, next4), (sums, weighted), k);
    sq_stats_by::<S, T, 1>(o, g1, cols, (old1, next1), (sums, weighted), k);
}

#[inline(always)]
fn sq_stats_by<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    g: &[T],
    cols: usize,
    (old, next): (&[T], &mut [T]),
    (sums, weighted): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let groups = g.chunks_exact(R * cols).zip(old.chunks_exact(R));
    for ((g, old), next) in groups.zip(next.chunks_exact_mut(R)) {
        let g = rows::<T, R>(g, cols);
        let mut s = [T::zero(); R];
        for r in 0..R {
            s[r] = row_sq_sum(o, g[r], k.eps1);
        }
        for r in 0..R {
            next[r] = average(old[r], s[r], n, k.beta2, k.one_minus_beta2);
        }
        let w: [T; R] = core::array::from_fn(|r| T::one() / next[r]);
        col_sq_terms::<S, T, R>(o, g, k.eps1, w, (&mut *sums, &mut *weighted));
    }
}

/// The row factors, the column factors and the clip divisor of the update.
#[derive(Clone, Copy)]
pub(super) struct Factors<'a, T> {
    pub(super) rf: &'a [T],
    pub(super) cf: &'a [T],
    pub(super) d: T,
}

/// Momentum of some rows and their instability: `next` row statistics, column terms added to
/// `sums`.
#[inline(always)]
fn momentum<S: Simd, T: Float>(
    o: Ops<S, T>,
    (g, m): (&[T], &mut [T]),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    if cols < SMALL_COLS {
        return small::momentum((g, m), cols, f, (old, next), sums, k);
    }
    let split = grouped::<T>(cols, next.len());
    let (g4, g1) = g.split_at(split * cols);
    let (m4, m1) = m.split_at_mut(split * cols);
    let (rf4, rf1) = f.rf.split_at(split);
    let (old4, old1) = old.split_at(split);
    let (next4, next1) = next.split_at_mut(split);
    let f4 = Factors { rf: rf4, ..f };
    let f1 = Factors { rf: rf1, ..f };
    momentum_by::<S, T, GROUP>(o, (g4, m4), cols, f4, (old4, next4), sums, k);
    momentum_by::<S, T, 1>(o, (g1, m1), cols, f1, (old1, next1), sums, k);
}

#[inline(always)]
fn momentum_by<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    (g, m): (&[T], &mut [T]),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let data = g.chunks_exact(R * cols).zip(m.chunks_exact_mut(R * cols));
    let row_stats = f.rf.chunks_exact(R).zip(old.chunks_exact(R));
    for ((g, m), ((rf, old), next)) in data.zip(row_stats.zip(next.chunks_exact_mut(R))) {
        // the clip divisor divides the row factor (exactly 1 when the update is not clipped)
        let rf_d: [T; R] = core::array::from_fn(|r| rf[r] / f.d);
        let data = (rows(g, cols), rows_mut(m, cols));
        let s = momentum_rows::<S, T, R>(o, data, rf_d, f.cf, k, sums);
        for r in 0..R {
            next[r] = average(old[r], s[r], n, k.beta3, k.one_minus_beta3);
        }
    }
}

/// The parameter update of some rows.
#[inline(always)]
fn apply<S: Simd, T: Float>(
    o: Ops<S, T>,
    (p, m): (&mut [T], &[T]),
    cols: usize,
    rf: &[T],
    cf: &[T],
    k: &Coefficients<T>,
) {
    if cols < SMALL_COLS {
        return small::apply((p, m), cols, rf, cf, k);
    }
    let split = grouped::<T>(cols, rf.len());
    let (p4, p1) = p.split_at_mut(split * cols);
    let (m4, m1) = m.split_at(split * cols);
    let (rf4, rf1) = rf.split_at(split);
    apply_by::<S, T, GROUP>(o, (p4, m4), cols, rf4, cf, k);
    apply_by::<S, T, 1>(o, (p1, m1), cols, rf1, cf, k);
}

#[inline(always)]
fn apply_by<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    (p, m): (&mut [T], &[T]),
    cols: usize,
    rf: &[T],
    cf: &[T],
    k: &Coefficients<T>,
) {
    let data = p.chunks_exact_mut(R * cols).zip(m.chunks_exact(R * cols));
    for ((p, m), rf) in data.zip(rf.chunks_exact(R)) {
        let rf: [T; R] = core::array::from_fn(|r| rf[r]);
        apply_rows::<S, T, R>(o, (rows_mut(p, cols), rows(m, cols)), rf, cf, k);
    }
}

/// The reference's running average of a statistic over `n` terms that add up to `sum`:
/// `beta old + (1 - beta) (sum / n)`.
#[inline(always)]
pub(super) fn average<T: Float>(old: T, sum: T, n: T, beta: T, omb: T) -> T {
    old * beta + omb * (sum / n)
}

/// Column statistics from column sums over `rows` rows.
#[inline(always)]
fn finish_cols<T: Float>(sums: &[T], rows: usize, old: &[T], next: &mut [T], beta: T, omb: T) {
    let n = T::from_f64(rows as f64);
    for ((nx, &o), &s) in next.iter_mut().zip(old).zip(sums) {
        *nx = average(o, s, n, beta, omb);
    }
}

/// The mean of row statistics, summed in `f64` and rounded once.
#[inline(always)]
pub(super) fn row_mean<T: Float>(row: &[T]) -> T {
    let mut sum = 0.0;
    for r in row {
        sum += r.as_f64();
    }
    T::from_f64(sum / row.len() as f64)
}

/// The reference's `_approx_sq_grad` factors: `rf = rsqrt(row / mean(row))`, `cf = rsqrt(col)`.
#[inline(always)]
fn factors<T: Float>(row: &[T], col: &[T], rf: &mut [T], cf: &mut [T]) {
    let mean = row_mean(row);
    for (f, &r) in rf.iter_mut().zip(row) {
        *f = T::one() / (r / mean).sqrt();
    }
    for (f, &c) in cf.iter_mut().zip(col) {
        *f = T::one() / c.sqrt();
    }
}

/// Adds lane `l`'s column partial sums into lane 0's, in lane order.
fn combine_lanes<T: Float>(parts: &mut [T], cols: usize) {
    let (first, others) = parts.split_at_mut(cols);
    for part in others.chunks_exact(cols) {
        for (a, &b) in first.iter_mut().zip(part) {
            *a = *a + b;
        }
    }
}

// ---- one matrix, lanes of rows ----

/// Sweep 1 of one matrix: squared-gradient statistics of a lane's rows.
struct SqStats<'a, T> {
    cols: usize,
    k: &'a Coefficients<T>,
}

impl<'a, T: Float> LaneKernel for SqStats<'a, T> {
    /// gradient rows, old row statistics, new row statistics, column partial sums, weighted
    /// column partial sums
    type Item = (&'a [T], &'a [T], &'a mut [T], &'a mut [T], &'a mut [T]);

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (g, old, next, sums, weighted): &mut Self::Item) {
        sums.fill(T::zero());
        weighted.fill(T::zero());
        let (o, k) = (Ops::new(simd), self.k);
        sq_stats(o, g, self.cols, (old, next), (sums, weighted), k);
    }
}

/// Sweep 2 of one matrix: momentum and instability statistics of a lane's rows.
struct Momentum<'a, T> {
    cols: usize,
    cf: &'a [T],
    d: T,
    k: &'a Coefficients<T>,
}

impl<'a, T: Float> LaneKernel for Momentum<'a, T> {
    /// gradient rows, momentum rows, row factors, old and new instability row statistics,
    /// column partial sums
    type Item = (
        &'a [T],
        &'a mut [T],
        &'a [T],
        &'a [T],
        &'a mut [T],
        &'a mut [T],
    );

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (g, m, rf, old, next, sums): &mut Self::Item) {
        sums.fill(T::zero());
        let f = Factors {
            rf,
            cf: self.cf,
            d: self.d,
        };
        momentum(
            Ops::new(simd),
            (g, m),
            self.cols,
            f,
            (old, next),
            sums,
            self.k,
        );
    }
}

/// Sweep 3 of one matrix: the parameter update of a lane's rows.
struct Apply<'a, T> {
    cols: usize,
    cf: &'a [T],
    k: &'a Coefficients<T>,
}

impl<'a, T: Float> LaneKernel for Apply<'a, T> {
    /// parameter rows, momentum rows, row factors
    type Item = (&'a mut [T], &'a [T], &'a [T]);

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (p, m, rf): &mut Self::Item) {
        apply(Ops::new(simd), (p, m), self.cols, rf, self.cf, self.k);
    }
}

/// The workspace: new row and column statistics and row and column factors of every matrix,
/// and per lane a column partial sum and a weighted column partial sum.
fn workspace_parts<T>(dims: Dims, workspace: &mut [T]) -> [&mut [T]; 6] {
    let Dims {
        batch,
        rows,
        cols,
        lanes,
    } = dims;
    let (r, c) = (batch * rows, batch * cols);
    let (next_row, rest) = workspace.split_at_mut(r);
    let (next_col, rest) = rest.split_at_mut(c);
    let (rf, rest) = rest.split_at_mut(r);
    let (cf, rest) = rest.split_at_mut(c);
    let (col_parts, rest) = rest.split_at_mut(lanes * cols);
    [
        next_row,
        next_col,
        rf,
        cf,
        col_parts,
        &mut rest[..lanes * cols],
    ]
}

/// Sweep 1 of one matrix: returns the squared norm of the unclipped update, with the new
/// statistics and their factors in the workspace.
fn matrix_norm<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    grad: &[T],
    stats: &Stats<'_, T>,
    workspace: &mut [T],
) -> Result<f64, Error> {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let [next_row, next_col, rf, cf, col_parts, weighted] = workspace_parts(dims, workspace);

    // Sweep 1: squared-gradient statistics and the update's norm.
    {
        let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
            .zip(split(stats.sq_row, 1, rows, lanes))
            .zip(split_mut(next_row, 1, rows, lanes))
            .zip(col_parts.chunks_exact_mut(cols))
            .zip(weighted.chunks_exact_mut(cols))
            .map(|((((g, old), next), sums), w)| (g, old, next, sums, w))
            .collect();
        exec.run(&SqStats { cols, k }, &mut items);
    }
    combine_lanes(col_parts, cols);
    combine_lanes(weighted, cols);
    finish_cols(
        &col_parts[..cols],
        rows,
        stats.sq_col,
        next_col,
        k.beta2,
        k.one_minus_beta2,
    );
    if !(all_finite(next_row) && all_finite(next_col)) {
        return Err(gradient_error(grad));
    }
    factors(next_row, next_col, rf, cf);
    let q = &mut weighted[..cols];
    quotients(q, next_col);
    Ok(norm_from_quotients(next_row, q))
}

/// Sweeps 2 and 3 of one matrix, after the squared-gradient statistics were committed.
fn matrix_update<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    d: T,
    param: &mut [T],
    grad: &[T],
    parts: &mut Parts<'_, T>,
) -> Result<(), Error> {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let stats = &mut parts.stats;
    let m = &mut *parts.m;
    let [next_row, next_col, rf, cf, col_parts, _] = workspace_parts(dims, parts.workspace);

    // Sweep 2: momentum and instability statistics.
    {
        let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
            .zip(split_mut(m, cols, rows, lanes))
            .zip(split(rf, 1, rows, lanes))
            .zip(split(stats.res_row, 1, rows, lanes))
            .zip(split_mut(next_row, 1, rows, lanes))
            .zip(col_parts.chunks_exact_mut(cols))
            .map(|(((((g, m), f), old), next), sums)| (g, m, f, old, next, sums))
            .collect();
        exec.run(&Momentum { cols, cf, d, k }, &mut items);
    }
    combine_lanes(col_parts, cols);
    finish_cols(
        &col_parts[..cols],
        rows,
        stats.res_col,
        next_col,
        k.beta3,
        k.one_minus_beta3,
    );
    if !(all_finite(next_row) && all_finite(next_col)) {
        return Err(Error::NonFiniteState);
    }
    if k.confidence {
        stats.res_row.copy_from_slice(next_row);
        stats.res_col.copy_from_slice(next_col);
        factors(stats.res_row, stats.res_col, rf, cf);
    } else {
        rf.fill(T::one());
        cf.fill(T::one());
    }

    // Sweep 3: the parameters.
    let mut items: LaneItems<_> = split_mut(param, cols, rows, lanes)
        .zip(split(m, cols, rows, lanes))
        .zip(split(rf, 1, rows, lanes))
        .map(|((p, m), f)| (p, m, f))
        .collect();
    exec.run(&Apply { cols, cf, k }, &mut items);
    Ok(())
}

// ---- a batch of matrices, lanes of whole matrices ----
//
// Each lane holds whole matrices. Per sweep, a lane first does its per-matrix statistics, then
// computes the factors of all its matrices in one vectorised pass (for small matrices, such as
// the 3x3 kernels of a convolution, the square roots and divisions of the factors cost more
// than the sweeps themselves), then uses them.

/// The reference's factors for every matrix of a lane: `rf = rsqrt(row / mean(row))` per
/// matrix, `cf = rsqrt(col)`.
#[inline(always)]
fn batch_factors<S: Simd, T: Float>(
    o: Ops<S, T>,
    rows: usize,
    (row, col): (&[T], &[T]),
    (rf, cf): (&mut [T], &mut [T]),
) {
    // each matrix's mean in all its row slots, then one division pass over the lane
    for (row, rf) in row.chunks_exact(rows).zip(rf.chunks_exact_mut(rows)) {
        rf.fill(row_mean(row));
    }
    for (f, &r) in rf.iter_mut().zip(row) {
        *f = r / *f;
    }
    rsqrt_in_place(o, rf);
    cf.copy_from_slice(col);
    rsqrt_in_place(o, cf);
}

/// `x = 1 / sqrt(x)`, as the reference rounds it: a square root, then a division.
#[inline(always)]
fn rsqrt_in_place<S: Simd, T: Float>(o: Ops<S, T>, x: &mut [T]) {
    let (xv, xt) = T::as_mut_simd::<S>(x);
    let one = o.splat(T::one());
    for v in xv {
        *v = o.div(one, o.sqrt(*v));
    }
    for v in xt {
        *v = T::one() / v.sqrt();
    }
}

/// One lane of a batch: its share of the matrices' data and statistics.
struct BatchLane<'a, T> {
    /// gradients
    g: &'a [T],
    /// momentum (written in sweep 2)
    m: &'a mut [T],
    /// parameters (written in sweep 3)
    p: &'a mut [T],
    /// committed statistics: squared gradient rows, columns; instability rows, columns
    stats: [&'a [T]; 4],
    /// new row and column statistics, checked before they are committed
    next: (&'a mut [T], &'a mut [T]),
    /// row and column factors of every matrix of the lane
    factors: (&'a mut [T], &'a mut [T]),
    /// one matrix's column sums and weighted column sums
    sums: (&'a mut [T], &'a mut [T]),
    /// all new statistics finite
    finite: bool,
    /// squared norm of the unclipped update
    sum_sq: f64,
}

/// Which sweep of a batch a lane runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchSweep {
    /// sweep 1: squared-gradient statistics, the update's norm, factors
    Norm,
    /// sweep 2: momentum and instability statistics, then their factors
    Momentum,
    /// sweep 3: the parameters
    Apply,
}

struct Batch<'a, T> {
    rows: usize,
    cols: usize,
    d: T,
    k: &'a Coefficients<T>,
    sweep: BatchSweep,
}

impl<'a, T: Float> LaneKernel for Batch<'a, T> {
    type Item = BatchLane<'a, T>;

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, lane: &mut Self::Item) {
        let (rows, cols, k, o) = (self.rows, self.cols, self.k, Ops::new(simd));
        let size = rows * cols;
        let (fr, fc) = (&mut *lane.factors.0, &mut *lane.factors.1);
        let (nr, nc) = (&mut *lane.next.0, &mut *lane.next.1);
        let [sq_row, sq_col, res_row, res_col] = lane.stats;
        let (sums, weighted) = (&mut *lane.sums.0, &mut *lane.sums.1);
        match self.sweep {
            BatchSweep::Norm if cols < SMALL_COLS => {
                let stats = (sq_row, sq_col);
                lane.sum_sq =
                    small::batch_sq_stats(lane.g, (rows, cols), stats, (nr, nc), (fr, fc), k);
                lane.finite = all_finite(nr) && all_finite(nc);
                batch_factors(o, rows, (nr, nc), (fr, fc));
            }
            BatchSweep::Norm => {
                let mats = lane.g.chunks_exact(size);
                let old = sq_row.chunks_exact(rows).zip(sq_col.chunks_exact(cols));
                let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
                for ((g, (r, c)), (nr, nc)) in mats.zip(old).zip(next) {
                    sums.fill(T::zero());
                    weighted.fill(T::zero());
                    sq_stats(o, g, cols, (r, nr), (sums, &mut *weighted), k);
                    finish_cols(sums, rows, c, nc, k.beta2, k.one_minus_beta2);
                    quotients(weighted, nc);
                    lane.sum_sq += norm_from_quotients(nr, weighted);
                }
                lane.finite = all_finite(nr) && all_finite(nc);
                batch_factors(o, rows, (nr, nc), (fr, fc));
            }
            BatchSweep::Momentum => {
                if cols < SMALL_COLS {
                    let (gm, f) = ((lane.g, &mut *lane.m), (&mut *fr, &*fc));
                    let old = (res_row, res_col);
                    small::batch_momentum(gm, (rows, cols), f, self.d, old, (nr, nc), k);
                } else {
                    let mats = lane.g.chunks_exact(size).zip(lane.m.chunks_exact_mut(size));
                    let f = fr.chunks_exact(rows).zip(fc.chunks_exact(cols));
                    let old = res_row.chunks_exact(rows).zip(res_col.chunks_exact(cols));
                    let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
                    for ((((g, m), (rf, cf)), (rr, rc)), (nr, nc)) in mats.zip(f).zip(old).zip(next)
                    {
                        sums.fill(T::zero());
                        let f = Factors { rf, cf, d: self.d };
                        momentum(o, (g, m), cols, f, (rr, nr), sums, k);
                        finish_cols(sums, rows, rc, nc, k.beta3, k.one_minus_beta3);
                    }
                }
                lane.finite = all_finite(nr) && all_finite(nc);
                if k.confidence {
                    batch_factors(o, rows, (nr, nc), (fr, fc));
                } else {
                    fr.fill(T::one());
                    fc.fill(T::one());
                }
            }
            BatchSweep::Apply if cols < SMALL_COLS => {
                let pm = (&mut *lane.p, &*lane.m);
                small::batch_apply(pm, (rows, cols), (&*fr, &*fc), k);
            }
            BatchSweep::Apply => {
                let mats = lane.p.chunks_exact_mut(size).zip(lane.m.chunks_exact(size));
                let f = fr.chunks_exact(rows).zip(fc.chunks_exact(cols));
                for ((p, m), (rf, cf)) in mats.zip(f) {
                    apply(o, (p, m), cols, rf, cf, k);
                }
            }
        }
    }
}

/// Runs one sweep of a batch over all lanes; returns whether all new statistics are finite and
/// the squared norm of the update (sweep [`BatchSweep::Norm`]).
#[allow(clippy::too_many_arguments)]
fn batch_run<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    sweep: BatchSweep,
    d: T,
    param: &mut [T],
    grad: &[T],
    parts: &mut Parts<'_, T>,
) -> Result<(bool, f64), Error> {
    let Dims {
        batch,
        rows,
        cols,
        lanes,
    } = dims;
    let size = rows * cols;
    let [next_row, next_col, fac_row, fac_col, col_sums, weighted] =
        workspace_parts(dims, parts.workspace);
    let stats = &parts.stats;
    let mut items: LaneItems<_> = split(grad, size, batch, lanes)
        .zip(split_mut(parts.m, size, batch, lanes))
        .zip(split_mut(param, size, batch, lanes))
        .zip(split(stats.sq_row, rows, batch, lanes).zip(split(stats.sq_col, cols, batch, lanes)))
        .zip(split(stats.res_row, rows, batch, lanes).zip(split(stats.res_col, cols, batch, lanes)))
        .zip(split_mut(next_row, rows, batch, lanes).zip(split_mut(next_col, cols, batch, lanes)))
        .zip(split_mut(fac_row, rows, batch, lanes).zip(split_mut(fac_col, cols, batch, lanes)))
        .zip(
            col_sums
                .chunks_exact_mut(cols)
                .zip(weighted.chunks_exact_mut(cols)),
        )
        .map(
            |(((((((g, m), p), (sr, sc)), (rr, rc)), next), factors), sums)| BatchLane {
                g,
                m,
                p,
                stats: [sr, sc, rr, rc],
                next,
                factors,
                sums,
                finite: true,
                sum_sq: 0.0,
            },
        )
        .collect();
    exec.run(
        &Batch {
            rows,
            cols,
            d,
            k,
            sweep,
        },
        &mut items,
    );
    let finite = items.iter().all(|it| it.finite);
    if sweep == BatchSweep::Norm && !finite {
        return Err(gradient_error(grad));
    }
    Ok((finite, items.iter().map(|it| it.sum_sq).sum::<f64>()))
}
