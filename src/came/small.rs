//! Matrices whose rows are too short for vectors (fewer than [`SMALL_COLS`] columns, such as
//! the 3x3 kernels of a convolution): plain loops with the same arithmetic as the vector
//! kernels (row sums in order, column terms added to the column sums row by row).
//!
//! A batch of them is stepped a lane at a time: the element-wise work per matrix is a few
//! loops over a handful of elements, while the statistics, their inverses and quotients, one
//! or two per row and column, are computed in passes over the whole lane's contiguous row and
//! column arrays, which vectorise (they would otherwise be a scalar division or two per row
//! and per column of every matrix, more work than the matrices themselves). Where the CPU has
//! vectors, `small_batch.rs` steps a batch a vector's width of matrices at once instead, and
//! the loops below are what each of its lanes reproduces bit for bit.

use super::formula::{self, average, norm_from_mean, row_mean, scalar, sq_term, square};
use crate::Element;
use crate::Float;
use crate::config::Coefficients;
use crate::element::random_bits;

/// Rows of fewer elements take these loops, without the vector set-up per row.
pub(crate) const SMALL_COLS: usize = 16;

/// Row sums first, then the column terms and the weighted column terms of the row.
#[inline(always)]
pub(super) fn sq_stats<T: Float, G: Element<Compute = T>>(
    g: &[G],
    cols: usize,
    (old, next): (&[T], &mut [T]),
    (sums, weighted): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    let (o, c) = scalar(k);
    let n = T::from_f64(cols as f64);
    for ((g, &old), nx) in g.chunks_exact(cols).zip(old).zip(next) {
        let mut s = T::zero();
        for &x in g {
            s = s + sq_term(o, square(o, x.to_compute()), c.eps1);
        }
        *nx = average(old, s, n, k.beta2, k.one_minus_beta2);
        let w = T::one() / *nx;
        for ((&x, col), v) in g.iter().zip(sums.iter_mut()).zip(weighted.iter_mut()) {
            let sq = square(o, x.to_compute());
            *col = *col + sq_term(o, sq, c.eps1);
            *v = *v + formula::weighted_term(o, sq, w);
        }
    }
}

/// Sweep 2 of some rows, with row factors `rf`, column factors `cf` and clip divisor `d`.
#[inline(always)]
pub(super) fn momentum<T: Float, G: Element<Compute = T>>(
    (g, m): (&[G], &mut [T]),
    cols: usize,
    (rf, cf, d): (&[T], &[T], T),
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let data = g.chunks_exact(cols).zip(m.chunks_exact_mut(cols));
    for (((g, m), &r), (&o, nx)) in data.zip(rf).zip(old.iter().zip(next)) {
        let s = momentum_row((g, m), r / d, cf, sums, k);
        *nx = average(o, s, n, k.beta3, k.one_minus_beta3);
    }
}

/// The momentum of one row with the clipped update `u = (r * cf_j) * g_j`; returns the row's
/// `sum_j ((u_j - m_j)^2 + eps2)` and adds the column terms to `sums`.
#[inline(always)]
fn momentum_row<T: Float, G: Element<Compute = T>>(
    (g, m): (&[G], &mut [T]),
    r: T,
    cf: &[T],
    sums: &mut [T],
    k: &Coefficients<T>,
) -> T {
    let (o, c) = scalar(k);
    let mut s = T::zero();
    for (((&x, mj), &f), cs) in g.iter().zip(m).zip(cf).zip(sums.iter_mut()) {
        let (m_new, res) = formula::momentum(o, &c, (x.to_compute(), *mj), (r, f));
        *mj = m_new;
        s = s + res;
        *cs = *cs + res;
    }
    s
}

/// Sweep 3 of some rows: the parameters (`start`: the flat index of `p[0]` in its tensor).
#[inline(always)]
pub(super) fn apply<T: Float, P: Element<Compute = T>>(
    (p, m): (&mut [P], &[T]),
    cols: usize,
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    match (k.decay.is_some(), k.rounding_key.filter(|_| P::ROUNDS)) {
        (false, None) => apply_with::<T, P, false>((p, m), cols, (rf, cf), (start, None), k),
        (true, None) => apply_with::<T, P, true>((p, m), cols, (rf, cf), (start, None), k),
        (false, key) => apply_with::<T, P, false>((p, m), cols, (rf, cf), (start, key), k),
        (true, key) => apply_with::<T, P, true>((p, m), cols, (rf, cf), (start, key), k),
    }
}

#[inline(always)]
fn apply_with<T: Float, P: Element<Compute = T>, const DECAY: bool>(
    (p, m): (&mut [P], &[T]),
    cols: usize,
    (rf, cf): (&[T], &[T]),
    (start, key): (usize, Option<u64>),
    k: &Coefficients<T>,
) {
    let (o, c) = scalar(k);
    let rows = p.chunks_exact_mut(cols).zip(m.chunks_exact(cols));
    for (i, ((p, m), &r)) in rows.zip(rf).enumerate() {
        for (j, ((pj, &mj), &f)) in p.iter_mut().zip(m).zip(cf).enumerate() {
            let round = P::ROUNDS && key.is_none();
            let p = formula::decayed::<_, T, P, DECAY>(o, &c, pj.to_compute(), round);
            let x = formula::apply(o, &c, (p, mj), (r, f));
            *pj = match key {
                Some(key) => P::round_stochastic(x, random_bits(key, start + i * cols + j)),
                None => P::from_compute(x),
            };
        }
    }
}

/// Raw sums of `n` terms in `next` turned into statistics, in place (see [`average`]).
#[inline(always)]
pub(super) fn average_into<T: Float>(old: &[T], next: &mut [T], beta: T, omb: T, n: usize) {
    let n = T::from_f64(n as f64);
    for (nx, &o) in next.iter_mut().zip(old) {
        *nx = average(o, *nx, n, beta, omb);
    }
}

/// Calls `$f::<T, C>` with the column count as the constant `C` for the common kernel widths,
/// so that the loops over a row unroll and a matrix's column data stays in registers, and with
/// `C = 0` (the count known at run time only) for any other width.
macro_rules! by_width {
    ($f:ident::<$($t:ty),+>($cols:expr, $($arg:expr),* $(,)?)) => {
        match $cols {
            1 => $f::<$($t),+, 1>($($arg),*),
            3 => $f::<$($t),+, 3>($($arg),*),
            5 => $f::<$($t),+, 5>($($arg),*),
            _ => $f::<$($t),+, 0>($($arg),*),
        }
    };
}

/// `cols` as the constant `C`, or as given when `C` is 0.
#[inline(always)]
const fn width<const C: usize>(cols: usize) -> usize {
    if C == 0 { cols } else { C }
}

/// Sweep 1 of a lane of small matrices `(rows, cols)`: new squared-gradient statistics into
/// `next`; returns the squared norm of the unclipped update. Uses the factor arrays as scratch
/// and leaves each matrix's row mean in its slots of the row factors (see [`batch_norm`]).
#[inline(always)]
pub(super) fn batch_sq_stats<T: Float, G: Element<Compute = T>>(
    g: &[G],
    (rows, cols): (usize, usize),
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    scratch: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> f64 {
    by_width!(batch_sq_stats_with::<T, G>(
        cols,
        g,
        (rows, cols),
        old,
        next,
        scratch,
        k
    ))
}

#[inline(always)]
fn batch_sq_stats_with<T: Float, G: Element<Compute = T>, const C: usize>(
    g: &[G],
    (rows, cols): (usize, usize),
    (old_row, old_col): (&[T], &[T]),
    (next_row, next_col): (&mut [T], &mut [T]),
    (scratch_row, scratch_col): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> f64 {
    let cols = width::<C>(cols);
    let (o, c) = scalar(k);
    // raw row and column sums of g^2 + eps1
    next_col.fill(T::zero());
    let mats = g.chunks_exact(rows * cols);
    let next = next_row
        .chunks_exact_mut(rows)
        .zip(next_col.chunks_exact_mut(cols));
    for (g, (nr, nc)) in mats.zip(next) {
        for (g, nx) in g.chunks_exact(cols).zip(nr) {
            let mut s = T::zero();
            for (&x, col) in g.iter().zip(nc.iter_mut()) {
                let u = sq_term(o, square(o, x.to_compute()), c.eps1);
                s = s + u;
                *col = *col + u;
            }
            *nx = s;
        }
    }
    average_into(old_row, next_row, k.beta2, k.one_minus_beta2, cols);
    average_into(old_col, next_col, k.beta2, k.one_minus_beta2, rows);
    // weighted column sums v_j = sum_i g_ij^2 / r_i
    for (w, &r) in scratch_row.iter_mut().zip(next_row.iter()) {
        *w = T::one() / r;
    }
    scratch_col.fill(T::zero());
    let mats = g
        .chunks_exact(rows * cols)
        .zip(scratch_row.chunks_exact(rows));
    for ((g, w), v) in mats.zip(scratch_col.chunks_exact_mut(cols)) {
        for (g, &w) in g.chunks_exact(cols).zip(w) {
            for (&x, v) in g.iter().zip(v.iter_mut()) {
                *v = *v + formula::weighted_term(o, square(o, x.to_compute()), w);
            }
        }
    }
    formula::quotients(scratch_col, next_col);
    batch_norm((rows, cols), next_row, scratch_col, scratch_row)
}

/// The squared norm of the unclipped update (line 9) of a lane of small matrices `(rows,
/// cols)`, from their new row statistics and the quotients of their weighted column sums
/// ([`norm_from_mean`]), matrix by matrix; leaves each matrix's row mean (line 7) in its slots
/// of `means`, for the factors (`rows::factors_from_means`), so it is computed once.
#[inline(always)]
pub(super) fn batch_norm<T: Float>(
    (rows, cols): (usize, usize),
    next_row: &[T],
    quotients: &[T],
    means: &mut [T],
) -> f64 {
    let mut sum = 0.0;
    let mats = next_row
        .chunks_exact(rows)
        .zip(quotients.chunks_exact(cols))
        .zip(means.chunks_exact_mut(rows));
    for ((row, q), means) in mats {
        let mean = row_mean(row);
        means.fill(mean);
        sum += norm_from_mean(mean, q);
    }
    sum
}

/// Sweep 2 of a lane of small matrices: the momentum, and the new instability statistics into
/// `next`. Divides the row factors by the clip divisor in place (they are recomputed after
/// this sweep).
#[inline(always)]
pub(super) fn batch_momentum<T: Float, G: Element<Compute = T>>(
    gm: (&[G], &mut [T]),
    (rows, cols): (usize, usize),
    factors: (&mut [T], &[T]),
    d: T,
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    by_width!(batch_momentum_with::<T, G>(
        cols,
        gm,
        (rows, cols),
        factors,
        d,
        old,
        next,
        k
    ));
}

#[inline(always)]
fn batch_momentum_with<T: Float, G: Element<Compute = T>, const C: usize>(
    (g, m): (&[G], &mut [T]),
    (rows, cols): (usize, usize),
    (rf, cf): (&mut [T], &[T]),
    d: T,
    (old_row, old_col): (&[T], &[T]),
    (next_row, next_col): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    let cols = width::<C>(cols);
    for f in rf.iter_mut() {
        *f = *f / d;
    }
    next_col.fill(T::zero());
    let size = rows * cols;
    let mats = g.chunks_exact(size).zip(m.chunks_exact_mut(size));
    let factors = rf.chunks_exact(rows).zip(cf.chunks_exact(cols));
    let next = next_row
        .chunks_exact_mut(rows)
        .zip(next_col.chunks_exact_mut(cols));
    for (((g, m), (rf, cf)), (nr, nc)) in mats.zip(factors).zip(next) {
        let rows = g.chunks_exact(cols).zip(m.chunks_exact_mut(cols));
        for ((g, m), (&r, nx)) in rows.zip(rf.iter().zip(nr)) {
            *nx = momentum_row((g, m), r, cf, nc, k);
        }
    }
    average_into(old_row, next_row, k.beta3, k.one_minus_beta3, cols);
    average_into(old_col, next_col, k.beta3, k.one_minus_beta3, rows);
}

/// Sweep 3 of a lane of small matrices: the parameters (`start`: the flat index of `p[0]`).
#[inline(always)]
pub(super) fn batch_apply<T: Float, P: Element<Compute = T>>(
    pm: (&mut [P], &[T]),
    (rows, cols): (usize, usize),
    factors: (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    by_width!(batch_apply_with::<T, P>(
        cols,
        pm,
        (rows, cols),
        factors,
        start,
        k
    ));
}

#[inline(always)]
fn batch_apply_with<T: Float, P: Element<Compute = T>, const C: usize>(
    (p, m): (&mut [P], &[T]),
    (rows, cols): (usize, usize),
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    let cols = width::<C>(cols);
    let size = rows * cols;
    let mats = p.chunks_exact_mut(size).zip(m.chunks_exact(size));
    let factors = rf.chunks_exact(rows).zip(cf.chunks_exact(cols));
    for (i, ((p, m), f)) in mats.zip(factors).enumerate() {
        apply((p, m), cols, f, start + i * size, k);
    }
}
