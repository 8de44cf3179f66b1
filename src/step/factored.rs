//! The factored step (rank >= 2) in four sweeps over the tensor:
//!
//! 1. read `g`: row and column sums of `g^2 + eps1`, the new statistics `r`, `c`;
//! 2. read `g`: the squared norm of the unclipped update `u`, for the clip;
//! 3. read `g` and `m`, write `m`: the momentum and the instability statistics `R`, `C`;
//! 4. read `m` and `p`, write `p`: the confidence-scaled update.
//!
//! New statistics go to the workspace first and are committed only once checked finite, so a
//! bad gradient or an overflow leaves the state as it was. A single matrix is cut into lanes of
//! rows (each lane keeps its own column partial sums, added up in lane order afterwards); a
//! batch of matrices is cut into lanes of whole matrices, each lane with its own factor arrays.

use super::{all_finite, clip_divisor, gradient_error};
use crate::config::Coefficients;
use crate::kernels::{apply_row, momentum_row, sq_row, update_sq_row};
use crate::lanes::{Executor, LaneItems, split, split_mut};
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

pub(super) fn step<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<f64, Error> {
    let (r, c) = (dims.batch * dims.rows, dims.batch * dims.cols);
    let (m, rest) = state.split_at_mut(param.len());
    let (sq_row, rest) = rest.split_at_mut(r);
    let (sq_col, rest) = rest.split_at_mut(c);
    let (res_row, rest) = rest.split_at_mut(r);
    let (res_col, workspace) = rest.split_at_mut(c);
    let mut stats = Stats {
        sq_row,
        sq_col,
        res_row,
        res_col,
    };
    let finite = [&stats.sq_row, &stats.sq_col, &stats.res_row, &stats.res_col]
        .into_iter()
        .all(|s| all_finite(s));
    if !finite {
        return Err(Error::NonFiniteState);
    }
    if dims.batch == 1 {
        matrix(exec, k, dims, param, grad, m, &mut stats, workspace)
    } else {
        batched(exec, k, dims, param, grad, m, &mut stats, workspace)
    }
}

// ---- per-matrix building blocks, shared by both ways of cutting lanes ----

/// Squared-gradient sums of some rows: `next = beta2 old + (1 - beta2) mean_j(g^2 + eps1)` per
/// row, and the column sums added to `col_sums`.
fn sq_stats<T: Float>(
    g: &[T],
    cols: usize,
    old: &[T],
    next: &mut [T],
    col_sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    for ((g_row, &o), nx) in g.chunks_exact(cols).zip(old).zip(next) {
        let sum = sq_row(g_row, k.eps1, col_sums);
        *nx = o * k.beta2 + k.one_minus_beta2 * (sum / n);
    }
}

/// Squared norm of the unclipped update over some rows.
fn update_sq<T: Float>(g: &[T], cols: usize, rf: &[T], cf: &[T]) -> f64 {
    g.chunks_exact(cols)
        .zip(rf)
        .map(|(g_row, &f)| update_sq_row(g_row, f, cf).as_f64())
        .sum()
}

/// Momentum of some rows and their instability sums: `next` row statistics, column sums added
/// to `col_sums`.
#[allow(clippy::too_many_arguments)]
fn momentum<T: Float>(
    g: &[T],
    m: &mut [T],
    cols: usize,
    (rf, cf, d): (&[T], &[T], T),
    old: &[T],
    next: &mut [T],
    col_sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let rows = g.chunks_exact(cols).zip(m.chunks_exact_mut(cols));
    for (((g_row, m_row), &f), (&o, nx)) in rows.zip(rf).zip(old.iter().zip(next)) {
        let sum = if d == T::one() {
            momentum_row::<T, false>(g_row, m_row, f, cf, d, k, col_sums)
        } else {
            momentum_row::<T, true>(g_row, m_row, f, cf, d, k, col_sums)
        };
        *nx = o * k.beta3 + k.one_minus_beta3 * (sum / n);
    }
}

/// The parameter update of some rows.
fn apply<T: Float>(p: &mut [T], m: &[T], cols: usize, rf: &[T], cf: &[T], k: &Coefficients<T>) {
    let rows = p.chunks_exact_mut(cols).zip(m.chunks_exact(cols));
    for ((p_row, m_row), &f) in rows.zip(rf) {
        apply_row(p_row, m_row, f, cf, k);
    }
}

/// Column statistics from column sums: `next = beta old + (1 - beta) (sums / rows)`.
fn finish_cols<T: Float>(sums: &[T], rows: usize, old: &[T], next: &mut [T], beta: T, omb: T) {
    let n = T::from_f64(rows as f64);
    for ((nx, &o), &s) in next.iter_mut().zip(old).zip(sums) {
        *nx = o * beta + omb * (s / n);
    }
}

/// The reference's `_approx_sq_grad` factors: `rf = rsqrt(row / mean(row))`, `cf = rsqrt(col)`.
fn factors<T: Float>(row: &[T], col: &[T], rf: &mut [T], cf: &mut [T]) {
    let mean = T::from_f64(row.iter().map(|r| r.as_f64()).sum::<f64>() / row.len() as f64);
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

#[allow(clippy::too_many_arguments)]
fn matrix<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    stats: &mut Stats<'_, T>,
    workspace: &mut [T],
) -> Result<f64, Error> {
    let Dims {
        rows, cols, lanes, ..
    } = dims;
    let (next_row, rest) = workspace.split_at_mut(rows);
    let (next_col, rest) = rest.split_at_mut(cols);
    let (rf, rest) = rest.split_at_mut(rows);
    let (cf, col_parts) = rest.split_at_mut(cols);
    let col_parts = &mut col_parts[..lanes * cols];

    // Sweep 1: squared-gradient statistics.
    {
        let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
            .zip(split(stats.sq_row, 1, rows, lanes))
            .zip(split_mut(next_row, 1, rows, lanes))
            .zip(col_parts.chunks_exact_mut(cols))
            .collect();
        exec.for_each(&mut items, |(((g, old), next), sums)| {
            sums.fill(T::zero());
            sq_stats(g, cols, old, next, sums, k);
        });
    }
    combine_lanes(col_parts, cols);
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

    // Sweep 2: the update's norm, for the clip.
    let sum_sq = {
        let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
            .zip(split(rf, 1, rows, lanes))
            .map(|(g, f)| (g, f, 0.0))
            .collect();
        exec.for_each(&mut items, |(g, f, sum)| *sum = update_sq(g, cols, f, cf));
        items.iter().map(|it| it.2).sum::<f64>()
    };
    if !sum_sq.is_finite() {
        return Err(gradient_error(grad));
    }
    let (d, rms) = clip_divisor(sum_sq, param.len(), k.clip_threshold);
    stats.sq_row.copy_from_slice(next_row);
    stats.sq_col.copy_from_slice(next_col);

    // Sweep 3: momentum and instability statistics.
    {
        let mut items: LaneItems<_> = split(grad, cols, rows, lanes)
            .zip(split_mut(m, cols, rows, lanes))
            .zip(split(rf, 1, rows, lanes))
            .zip(split(stats.res_row, 1, rows, lanes))
            .zip(split_mut(next_row, 1, rows, lanes))
            .zip(col_parts.chunks_exact_mut(cols))
            .collect();
        exec.for_each(&mut items, |(((((g, m), f), old), next), sums)| {
            sums.fill(T::zero());
            momentum(g, m, cols, (f, cf, d), old, next, sums, k);
        });
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
    stats.res_row.copy_from_slice(next_row);
    stats.res_col.copy_from_slice(next_col);
    factors(stats.res_row, stats.res_col, rf, cf);

    // Sweep 4: the parameters.
    {
        let mut items: LaneItems<_> = split_mut(param, cols, rows, lanes)
            .zip(split(m, cols, rows, lanes))
            .zip(split(rf, 1, rows, lanes))
            .collect();
        exec.for_each(&mut items, |((p, m), f)| apply(p, m, cols, f, cf, k));
    }
    Ok(rms)
}

// ---- a batch of matrices, lanes of whole matrices ----

/// One lane's scratch: row factors, column factors, column sums.
fn lane_scratch<T>(scratch: &mut [T], rows: usize, cols: usize) -> (&mut [T], &mut [T], &mut [T]) {
    let (rf, rest) = scratch.split_at_mut(rows);
    let (cf, sums) = rest.split_at_mut(cols);
    (rf, cf, &mut sums[..cols])
}

#[allow(clippy::too_many_arguments)]
fn batched<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    stats: &mut Stats<'_, T>,
    workspace: &mut [T],
) -> Result<f64, Error> {
    let Dims {
        batch,
        rows,
        cols,
        lanes,
    } = dims;
    let size = rows * cols;
    let (next_row, rest) = workspace.split_at_mut(batch * rows);
    let (next_col, scratch) = rest.split_at_mut(batch * cols);
    let scratch = &mut scratch[..lanes * (rows + 2 * cols)];
    let per_lane = rows + 2 * cols;

    // Sweeps 1 and 2 per matrix: statistics, then the update's norm.
    let (ok, sum_sq) = {
        let mut items: LaneItems<_> = split(grad, size, batch, lanes)
            .zip(split(stats.sq_row, rows, batch, lanes))
            .zip(split(stats.sq_col, cols, batch, lanes))
            .zip(split_mut(next_row, rows, batch, lanes))
            .zip(split_mut(next_col, cols, batch, lanes))
            .zip(scratch.chunks_exact_mut(per_lane))
            .map(|it| (it, true, 0.0))
            .collect();
        exec.for_each(
            &mut items,
            |((((((g, r), c), nr), nc), scratch), ok, sum)| {
                let (rf, cf, sums) = lane_scratch(scratch, rows, cols);
                let mats = g.chunks_exact(size).zip(r.chunks_exact(rows));
                let mats = mats.zip(c.chunks_exact(cols));
                let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
                for (((g, r), c), (nr, nc)) in mats.zip(next) {
                    sums.fill(T::zero());
                    sq_stats(g, cols, r, nr, sums, k);
                    finish_cols(sums, rows, c, nc, k.beta2, k.one_minus_beta2);
                    *ok &= all_finite(nr) && all_finite(nc);
                    factors(nr, nc, rf, cf);
                    *sum += update_sq(g, cols, rf, cf);
                }
            },
        );
        let ok = items.iter().all(|it| it.1);
        (ok, items.iter().map(|it| it.2).sum::<f64>())
    };
    if !ok || !sum_sq.is_finite() {
        return Err(gradient_error(grad));
    }
    let (d, rms) = clip_divisor(sum_sq, param.len(), k.clip_threshold);
    stats.sq_row.copy_from_slice(next_row);
    stats.sq_col.copy_from_slice(next_col);

    // Sweep 3 per matrix: momentum and instability statistics.
    let ok = {
        let mut items: LaneItems<_> = split(grad, size, batch, lanes)
            .zip(split_mut(m, size, batch, lanes))
            .zip(split(stats.sq_row, rows, batch, lanes))
            .zip(split(stats.sq_col, cols, batch, lanes))
            .zip(split(stats.res_row, rows, batch, lanes))
            .zip(split(stats.res_col, cols, batch, lanes))
            .zip(split_mut(next_row, rows, batch, lanes))
            .zip(split_mut(next_col, cols, batch, lanes))
            .zip(scratch.chunks_exact_mut(per_lane))
            .map(|it| (it, true))
            .collect();
        exec.for_each(&mut items, |(lane, ok)| {
            let ((((((((g, m), r), c), rr), rc), nr), nc), scratch) = lane;
            let (rf, cf, sums) = lane_scratch(scratch, rows, cols);
            let mats = g.chunks_exact(size).zip(m.chunks_exact_mut(size));
            let sq = r.chunks_exact(rows).zip(c.chunks_exact(cols));
            let res = rr.chunks_exact(rows).zip(rc.chunks_exact(cols));
            let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
            for ((((g, m), (r, c)), (rr, rc)), (nr, nc)) in mats.zip(sq).zip(res).zip(next) {
                factors(r, c, rf, cf);
                sums.fill(T::zero());
                momentum(g, m, cols, (rf, cf, d), rr, nr, sums, k);
                finish_cols(sums, rows, rc, nc, k.beta3, k.one_minus_beta3);
                *ok &= all_finite(nr) && all_finite(nc);
            }
        });
        items.iter().all(|it| it.1)
    };
    if !ok {
        return Err(Error::NonFiniteState);
    }
    stats.res_row.copy_from_slice(next_row);
    stats.res_col.copy_from_slice(next_col);

    // Sweep 4 per matrix: the parameters.
    {
        let mut items: LaneItems<_> = split_mut(param, size, batch, lanes)
            .zip(split(m, size, batch, lanes))
            .zip(split(stats.res_row, rows, batch, lanes))
            .zip(split(stats.res_col, cols, batch, lanes))
            .zip(scratch.chunks_exact_mut(per_lane))
            .collect();
        exec.for_each(&mut items, |((((p, m), rr), rc), scratch)| {
            let (rf, cf, _) = lane_scratch(scratch, rows, cols);
            let mats = p.chunks_exact_mut(size).zip(m.chunks_exact(size));
            let res = rr.chunks_exact(rows).zip(rc.chunks_exact(cols));
            for ((p, m), (rr, rc)) in mats.zip(res) {
                factors(rr, rc, rf, cf);
                apply(p, m, cols, rf, cf, k);
            }
        });
    }
    Ok(rms)
}
