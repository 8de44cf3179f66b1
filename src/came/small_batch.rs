//! A batch of small matrices (fewer than [`SMALL_COLS`](super::small::SMALL_COLS) columns,
//! such as the 3x3 kernels of a convolution), stepped a vector's width of matrices at a time:
//! one matrix per lane.
//!
//! A 3-wide row fills no vector, but eight 3x3 matrices side by side fill nine. Each group of
//! `L` matrices (`L` the lanes of a vector: 8 `f32` with AVX2, 4 with NEON) is loaded as the
//! nine vectors it fills and transposed in registers (two rounds of three-way deinterleaving,
//! `group.rs`), so that vector `e` holds element `e` of every matrix of the group; the
//! group's row and column statistics and factors (three of each per matrix) are moved the same
//! way. The formulas of [`super::formula`] then run on whole vectors: every statistic, the
//! norm's quotients, each matrix's row mean and the factors of a group are computed while its
//! matrices are in registers, and only the results are stored (transposed back, but for the
//! factors, which only the next sweep here reads: a whole group's stay in the lanes). Every lane
//! computes what the loops of `small.rs` and their passes over the lane's statistics compute
//! for its matrix, the same operations in the same order, so the results are bit-identical to
//! theirs (tested below) for any batch, lane and thread count. A group that holds fewer than
//! `L` matrices (the last of a lane) is moved value by value and leaves the other lanes'
//! stale values in the buffers; they are computed on and never stored. Sweep 3 moves only a
//! group's products `rf_i cf_j` back to the order the matrices are stored in, and reads the
//! parameters and the momentum as they lie, with the sweep of wide rows.
//!
//! Without vectors (`L = 1`, as on a Cortex-M), and for shapes other than 3x3 (see [`fits`]),
//! the loops of `small.rs` run instead. The buffers take seven times [`STAGE`] values of the
//! stack during a sweep (3.9 KiB in `f32`, 7.9 KiB in `f64`), only where vectors are used.
//! On a 256 x 256 x 3 x 3 batch (AVX2) a step takes 36 instructions per element (39 with
//! `bf16` parameters and gradients, 58 when sweep 3 moved them through the lanes too) against
//! 104 with those loops (cachegrind), and 0.7 times the time of the same kernels moving each value
//! through memory one by one (`bench`).

use pulp::Simd;

mod group;

use super::formula::{self, Consts, ema, norm_from_mean, row_mean, rsqrt, sq_term, square};
use super::rows::{batch_factors, factors_from_means};
use super::small;
use super::sweeps::{apply_rows, nothing_follows};
use crate::check::all_finite;
use crate::config::Coefficients;
use crate::exec::simd::{Ops, V};
use crate::float::lanes;
use crate::{Element, Float};
use group::{
    COLS, MAX_LANES, ROWS, SIZE, STAGE, Stage, gather, load_factors, save_factors, scatter,
    scatter_finite, vectors, vectors_mut,
};

/// Whether a batch of `(rows, cols)` matrices is stepped here under `S`: 3x3 matrices (the
/// kernels of most convolutions) where vectors have 2 to [`MAX_LANES`] lanes. The kernels pay
/// off only with the shape compiled in as constants (with it known at run time only, a 256 x
/// 256 x 3 x 3 step took 92 instructions per element, against 104 with the loops of `small.rs`
/// and 51 with constants), and every shape compiled in adds to the build of each binary, so
/// only 3x3 is; other shapes take those loops.
#[inline(always)]
fn fits<S: Simd, T: Float>(rows: usize, cols: usize) -> bool {
    (rows, cols) == (ROWS, COLS) && (2..=MAX_LANES).contains(&lanes::<S, T>())
}

/// Sweep 1 of a lane of small matrices `(rows, cols)`: new squared-gradient statistics into
/// `next` and their factors (lines 7-8) into `factors`; returns the squared norm of the
/// unclipped update and whether the new statistics are all finite.
#[inline(always)]
pub(super) fn batch_sq_stats<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    g: &[G],
    (rows, cols): (usize, usize),
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    factors: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> (f64, bool) {
    if fits::<S, T>(rows, cols) {
        return sq_stats_3x3::<S, T, G>(simd, g, old, next, factors, k);
    }
    let (next_row, next_col) = next;
    let (rf, cf) = factors;
    let sum_sq = small::batch_sq_stats(
        g,
        (rows, cols),
        old,
        (&mut *next_row, &mut *next_col),
        (&mut *rf, &mut *cf),
        k,
    );
    let finite = all_finite(next_row) && all_finite(next_col);
    factors_from_means(Ops::new(simd), (next_row, next_col), (rf, cf), None);
    (sum_sq, finite)
}

/// [`batch_sq_stats`] on 3x3 matrices: every statistic, quotient and factor of a group is
/// computed in vectors and only the results are stored, where the loops of `small.rs` make a
/// pass over the lane's statistics for each of them.
#[inline(always)]
fn sq_stats_3x3<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    g: &[G],
    (old_row, old_col): (&[T], &[T]),
    (next_row, next_col): (&mut [T], &mut [T]),
    (rf_out, cf_out): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> (f64, bool) {
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let n = o.splat(T::from_f64(COLS as f64));
    let [mut gs, mut rs, mut cs, mut qs, mut fs, mut ks]: [Stage<T>; 6] = [[T::zero(); STAGE]; 6];
    let mut means = [T::zero(); MAX_LANES];
    let (mut sum_sq, mut finite) = (0.0, true);
    let groups = g
        .chunks(l * SIZE)
        .zip(old_row.chunks(l * ROWS).zip(old_col.chunks(l * COLS)))
        .zip(
            next_row
                .chunks_mut(l * ROWS)
                .zip(next_col.chunks_mut(l * COLS)),
        )
        .zip(rf_out.chunks_mut(l * ROWS).zip(cf_out.chunks_mut(l * COLS)));
    for (((g, (old_row, old_col)), (next_row, next_col)), (rf_out, cf_out)) in groups {
        let count = next_row.len() / ROWS;
        gather(simd, g, SIZE, l, &mut gs);
        gather(simd, old_row, ROWS, l, &mut rs);
        gather(simd, old_col, COLS, l, &mut cs);
        let g = vectors::<S, T>(&gs, SIZE);
        let (r, col, q) = (
            vectors_mut::<S, T>(&mut rs, ROWS),
            vectors_mut::<S, T>(&mut cs, COLS),
            vectors_mut::<S, T>(&mut qs, COLS),
        );
        // lines 5-6
        let mut sums = [zero; COLS];
        for (g, r) in g.chunks_exact(COLS).zip(r.iter_mut()) {
            let mut s = zero;
            for (&x, sum) in g.iter().zip(sums.iter_mut()) {
                let u = sq_term(o, square(o, x), c.eps1);
                s = o.add(s, u);
                *sum = o.add(*sum, u);
            }
            *r = ema(o, *r, o.div(s, n), c.beta2, c.one_minus_beta2);
        }
        for (col, &sum) in col.iter_mut().zip(&sums) {
            *col = ema(o, *col, o.div(sum, n), c.beta2, c.one_minus_beta2);
        }
        // line 9's norm: the quotients v_j / c_j of the weighted column sums
        // v_j = sum_i g_ij^2 / r_i
        q.fill(zero);
        for (g, &r) in g.chunks_exact(COLS).zip(r.iter()) {
            let w = o.div(c.one, r);
            for (&x, v) in g.iter().zip(q.iter_mut()) {
                *v = o.add(*v, formula::weighted_term(o, square(o, x), w));
            }
        }
        for (v, &col) in q.iter_mut().zip(col.iter()) {
            *v = o.div(*v, col);
        }
        group_means(&rs, l, count, &mut means);
        add_group_norms(&mut sum_sq, &means, &qs, l, count);
        // lines 7-8
        group_factors(o, (&rs, &cs), &means, None, (&mut fs, &mut ks));
        finite &= scatter_finite(simd, &rs, ROWS, l, next_row);
        finite &= scatter_finite(simd, &cs, COLS, l, next_col);
        save_factors(simd, &fs, l, rf_out);
        save_factors(simd, &ks, l, cf_out);
    }
    (sum_sq, finite)
}

/// The row mean (line 7) of each of the `count` matrices of a group, from their staged row
/// statistics `rows`, into `means` (one per lane).
#[inline(always)]
fn group_means<T: Float>(rows: &[T], l: usize, count: usize, means: &mut [T; MAX_LANES]) {
    for (i, mean) in means[..count].iter_mut().enumerate() {
        *mean = row_mean(&[rows[i], rows[l + i], rows[2 * l + i]]);
    }
}

/// The factors of a group's staged row and column statistics into the staging buffers `rf`,
/// `cf`, as `rows::factors_from_means` computes them: `rf = rsqrt(r / mean(r))` (lines 7 and
/// 14), `cf = rsqrt(c)`, the columns bias-corrected first when `bias_correction` is given.
#[inline(always)]
fn group_factors<S: Simd, T: Float>(
    o: Ops<S, T>,
    (rows, cols): (&[T], &[T]),
    means: &[T; MAX_LANES],
    bias_correction: Option<V<S, T>>,
    (rf, cf): (&mut [T], &mut [T]),
) {
    let one = o.splat(T::one());
    let mean = vectors::<S, T>(means, 1)[0];
    let rf = vectors_mut::<S, T>(rf, ROWS);
    for (f, &r) in rf.iter_mut().zip(vectors::<S, T>(rows, ROWS)) {
        *f = rsqrt(o, one, o.div(r, mean));
    }
    let cf = vectors_mut::<S, T>(cf, COLS);
    for (f, &c) in cf.iter_mut().zip(vectors::<S, T>(cols, COLS)) {
        let c = bias_correction.map_or(c, |bc| formula::debias(o, c, bc));
        *f = rsqrt(o, one, c);
    }
}

/// Adds the squared norm of the unclipped update (line 9) of each of the `count` matrices of a
/// group to `sum_sq`, in their order ([`norm_from_mean`]), from their row means and staged
/// quotients `q`.
#[inline(always)]
fn add_group_norms<T: Float>(
    sum_sq: &mut f64,
    means: &[T; MAX_LANES],
    q: &[T],
    l: usize,
    count: usize,
) {
    for (i, &mean) in means[..count].iter().enumerate() {
        *sum_sq += norm_from_mean(mean, &[q[i], q[l + i], q[2 * l + i]]);
    }
}

/// Sweep 2 of a lane of small matrices, with clip divisor `d`: the momentum, the new
/// instability statistics into `next` and, from them, the confidence factors (lines 14-15)
/// into `factors` (which held the factors of lines 7-8); returns whether the new statistics
/// are all finite.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_momentum<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    (g, m): (&[G], &mut [T]),
    (rows, cols): (usize, usize),
    factors: (&mut [T], &mut [T]),
    d: T,
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> bool {
    if fits::<S, T>(rows, cols) {
        return momentum_3x3::<S, T, G>(simd, (g, m), factors, d, old, next, k);
    }
    let (next_row, next_col) = next;
    let (rf, cf) = factors;
    small::batch_momentum(
        (g, m),
        (rows, cols),
        (&mut *rf, &*cf),
        d,
        old,
        (&mut *next_row, &mut *next_col),
        k,
    );
    let finite = all_finite(next_row) && all_finite(next_col);
    if k.confidence {
        let next = (&*next_row, &*next_col);
        batch_factors(Ops::new(simd), rows, next, (rf, cf), k.bias_correction3);
    } else {
        rf.fill(T::one());
        cf.fill(T::one());
    }
    finite
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn momentum_3x3<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    (g, m): (&[G], &mut [T]),
    (rf, cf): (&mut [T], &mut [T]),
    d: T,
    (old_row, old_col): (&[T], &[T]),
    (next_row, next_col): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> bool {
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let (d, n) = (o.splat(d), o.splat(T::from_f64(COLS as f64)));
    let (beta3, one_minus_beta3) = (o.splat(k.beta3), o.splat(k.one_minus_beta3));
    let bias_correction = k.bias_correction3.map(|bc| o.splat(bc));
    let [mut gs, mut ms, mut rfs, mut cfs, mut rs, mut cs]: [Stage<T>; 6] = [[T::zero(); STAGE]; 6];
    let mut means = [T::zero(); MAX_LANES];
    let mut finite = true;
    let groups = g
        .chunks(l * SIZE)
        .zip(m.chunks_mut(l * SIZE))
        .zip(rf.chunks_mut(l * ROWS).zip(cf.chunks_mut(l * COLS)))
        .zip(old_row.chunks(l * ROWS).zip(old_col.chunks(l * COLS)))
        .zip(
            next_row
                .chunks_mut(l * ROWS)
                .zip(next_col.chunks_mut(l * COLS)),
        );
    for ((((g, m_out), (rf, cf)), (old_row, old_col)), (next_row, next_col)) in groups {
        let count = next_row.len() / ROWS;
        gather(simd, g, SIZE, l, &mut gs);
        gather(simd, m_out, SIZE, l, &mut ms);
        load_factors(simd, rf, l, &mut rfs);
        load_factors(simd, cf, l, &mut cfs);
        gather(simd, old_row, ROWS, l, &mut rs);
        gather(simd, old_col, COLS, l, &mut cs);
        let (g, row_factors, col_factors) = (
            vectors::<S, T>(&gs, SIZE),
            vectors_mut::<S, T>(&mut rfs, ROWS),
            vectors_mut::<S, T>(&mut cfs, COLS),
        );
        let (m, r, col) = (
            vectors_mut::<S, T>(&mut ms, SIZE),
            vectors_mut::<S, T>(&mut rs, ROWS),
            vectors_mut::<S, T>(&mut cs, COLS),
        );
        // lines 8-11: momentum and instability; lines 12-13
        let mut sums = [zero; COLS];
        let data = g.chunks_exact(COLS).zip(m.chunks_exact_mut(COLS));
        for ((g, m), (&rf, r)) in data.zip(row_factors.iter().zip(r.iter_mut())) {
            let rf_d = o.div(rf, d);
            let mut s = zero;
            for (((&x, mj), &f), sum) in g.iter().zip(m).zip(&*col_factors).zip(&mut sums) {
                let (m_new, res) = formula::momentum(o, &c, (x, *mj), (rf_d, f));
                *mj = m_new;
                s = o.add(s, res);
                *sum = o.add(*sum, res);
            }
            *r = ema(o, *r, o.div(s, n), beta3, one_minus_beta3);
        }
        for (col, &sum) in col.iter_mut().zip(&sums) {
            *col = ema(o, *col, o.div(sum, n), beta3, one_minus_beta3);
        }
        // lines 14-15: the confidence factors
        if k.confidence {
            group_means(&rs, l, count, &mut means);
            let factors = (&mut rfs[..], &mut cfs[..]);
            group_factors(o, (&rs, &cs), &means, bias_correction, factors);
        } else {
            row_factors.fill(c.one);
            col_factors.fill(c.one);
        }
        scatter(simd, &ms, SIZE, l, m_out);
        finite &= scatter_finite(simd, &rs, ROWS, l, next_row);
        finite &= scatter_finite(simd, &cs, COLS, l, next_col);
        save_factors(simd, &rfs, l, rf);
        save_factors(simd, &cfs, l, cf);
    }
    finite
}

/// Sweep 3 of a lane of small matrices: the parameters (`start`: the flat index of `p[0]`).
#[inline(always)]
pub(super) fn batch_apply<S: Simd, T: Float, P: Element<Compute = T>>(
    simd: S,
    pm: (&mut [P], &[T]),
    (rows, cols): (usize, usize),
    factors: (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    if !fits::<S, T>(rows, cols) {
        return small::batch_apply(pm, (rows, cols), factors, start, k);
    }
    apply_3x3::<S, T, P>(simd, pm, factors, start, k);
}

/// [`batch_apply`] on 3x3 matrices: each group's products `rf_i cf_j` are formed in the lanes
/// and moved back to the order the matrices are stored in, where the parameters and the
/// momentum are then read as they lie, by the sweep of wide rows ([`apply_rows`], with a row
/// factor of exactly 1: `1 (rf_i cf_j) = rf_i cf_j`, so the rounding is that of the loops).
#[inline(always)]
fn apply_3x3<S: Simd, T: Float, P: Element<Compute = T>>(
    simd: S,
    (p, m): (&mut [P], &[T]),
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let [mut rfs, mut cfs, mut products, mut stored]: [Stage<T>; 4] = [[T::zero(); STAGE]; 4];
    let groups = p
        .chunks_mut(l * SIZE)
        .zip(m.chunks(l * SIZE))
        .zip(rf.chunks(l * ROWS).zip(cf.chunks(l * COLS)));
    for (n, ((p, m), (rf, cf))) in groups.enumerate() {
        load_factors(simd, rf, l, &mut rfs);
        load_factors(simd, cf, l, &mut cfs);
        let (rf, cf) = (vectors::<S, T>(&rfs, ROWS), vectors::<S, T>(&cfs, COLS));
        let products_in_lanes = vectors_mut::<S, T>(&mut products, SIZE);
        for (w, &r) in products_in_lanes.chunks_exact_mut(COLS).zip(rf) {
            for (w, &f) in w.iter_mut().zip(cf) {
                *w = o.mul(r, f);
            }
        }
        let stored = &mut stored[..p.len()];
        scatter(simd, &products, SIZE, l, stored);
        let at = start + n * l * SIZE;
        apply_rows::<S, T, P, 1, false>(
            o,
            ([p], [m]),
            nothing_follows(),
            ([T::one()], stored),
            at,
            k,
        );
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use std::{format, vec, vec::Vec};

    use half::bf16;

    use super::*;
    use crate::{CameConfig, Instability};

    /// Values in `[lo, hi)`, from a seeded splitmix64.
    fn values<E: Element>(n: usize, seed: u64, (lo, hi): (f64, f64)) -> Vec<E>
    where
        E::Compute: Float,
    {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut x = z;
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let u = (x ^ (x >> 31)) as f64 / u64::MAX as f64;
                E::from_compute(Float::from_f64(lo + (hi - lo) * u))
            })
            .collect()
    }

    fn bits<E: Element>(values: &[E]) -> Vec<f64> {
        values.iter().map(|x| x.to_compute().as_f64()).collect()
    }

    /// Steps one lane of `batch` matrices `(rows, cols)` with this file's kernels under the
    /// best instruction set and under [`pulp::Scalar`] (the loops of `small.rs` and passes over
    /// the lane), the gradient at `poison` (if any) overflowing, and compares every output bit
    /// for bit. Returns the lanes of the instruction set used and whether the new statistics
    /// were all finite.
    fn compare<T: Float, P: Element<Compute = T>>(
        batch: usize,
        (rows, cols): (usize, usize),
        k: &Coefficients<T>,
        poison: Option<usize>,
    ) -> (usize, bool) {
        struct Both<'a, T: Float, P> {
            batch: usize,
            shape: (usize, usize),
            k: &'a Coefficients<T>,
            poison: Option<usize>,
            p: core::marker::PhantomData<P>,
        }
        impl<T: Float, P: Element<Compute = T>> pulp::WithSimd for Both<'_, T, P> {
            type Output = (usize, bool);
            fn with_simd<S: Simd>(self, simd: S) -> (usize, bool) {
                let Self {
                    batch,
                    shape,
                    k,
                    poison,
                    ..
                } = self;
                let (rows, cols) = shape;
                let n = batch * rows * cols;
                let mut g: Vec<P> = values(n, 1, (-2.0, 2.0));
                if let Some(at) = poison {
                    g[at] = P::from_compute(T::from_f64(1e200));
                }
                let m: Vec<T> = values(n, 2, (-0.5, 0.5));
                let p: Vec<P> = values(n, 3, (-1.0, 1.0));
                let old_row: Vec<T> = values(batch * rows, 4, (0.01, 2.0));
                let old_col: Vec<T> = values(batch * cols, 5, (0.01, 2.0));
                let d = T::from_f64(1.25);
                let zeros = |n| vec![T::zero(); n];
                let (r, c) = (batch * rows, batch * cols);
                let (mut outputs, mut finites) = (Vec::new(), Vec::new());
                for vector in [true, false] {
                    let (mut nr, mut nc, mut fr, mut fc) = (zeros(r), zeros(c), zeros(r), zeros(c));
                    let old = (&old_row[..], &old_col[..]);
                    let scalar = pulp::Scalar;
                    let factors = (&mut fr[..], &mut fc[..]);
                    let (sum, finite) = if vector {
                        batch_sq_stats(simd, &g, shape, old, (&mut nr, &mut nc), factors, k)
                    } else {
                        batch_sq_stats(scalar, &g, shape, old, (&mut nr, &mut nc), factors, k)
                    };
                    // each sweep takes the factors the sweep before left (a whole group's in
                    // the lanes under `simd`), so they are compared through their results
                    let (mut m, mut nr2, mut nc2) = (m.clone(), zeros(r), zeros(c));
                    let (gm, next) = ((&g[..], &mut m[..]), (&mut nr2[..], &mut nc2[..]));
                    let factors = (&mut fr[..], &mut fc[..]);
                    let finite2 = if vector {
                        batch_momentum(simd, gm, shape, factors, d, old, next, k)
                    } else {
                        batch_momentum(scalar, gm, shape, factors, d, old, next, k)
                    };
                    let mut p = p.clone();
                    if vector {
                        batch_apply(simd, (&mut p, &m), shape, (&fr, &fc), 1000, k);
                    } else {
                        batch_apply(scalar, (&mut p, &m), shape, (&fr, &fc), 1000, k);
                    }
                    finites.push((finite, finite2));
                    let out = [bits(&nr), bits(&nc), vec![sum], bits(&m)];
                    outputs.push((out, bits(&nr2), bits(&nc2), bits(&p)));
                }
                for (what, (a, b)) in ["sweep 1 and 2", "row stats", "col stats", "params"]
                    .iter()
                    .zip([
                        (format!("{:?}", outputs[0].0), format!("{:?}", outputs[1].0)),
                        (format!("{:?}", outputs[0].1), format!("{:?}", outputs[1].1)),
                        (format!("{:?}", outputs[0].2), format!("{:?}", outputs[1].2)),
                        (format!("{:?}", outputs[0].3), format!("{:?}", outputs[1].3)),
                    ])
                {
                    assert!(a == b, "{what} differ for {batch} matrices {shape:?}");
                }
                assert_eq!(finites[0], finites[1], "{batch} matrices {shape:?}");
                (lanes::<S, T>(), finites[0].0 && finites[0].1)
            }
        }
        crate::exec::simd::dispatch(Both::<T, P> {
            batch,
            shape: (rows, cols),
            k,
            poison,
            p: core::marker::PhantomData,
        })
    }

    #[test]
    #[cfg_attr(miri, ignore = "no vector instructions under the interpreter")]
    fn each_lane_computes_what_the_loops_compute_bit_for_bit() {
        let vectors = crate::instruction_set() != "pulp::Scalar";
        // betas far from 1, so that every rounding of the new terms shows in the statistics
        let plain = CameConfig::new(0.01).with_betas(0.9, 0.6, 0.7);
        let configs = [
            plain.with_weight_decay(0.1),
            plain,
            plain.with_instability(Instability::BiasCorrected),
            plain.with_confidence(false),
        ];
        // 3x3 steps here; the other shapes take the loops (which must then agree with
        // themselves: this checks the dispatch)
        for shape in [(1, 1), (3, 3), (5, 5), (2, 7), (4, 3), (16, 15)] {
            // whole groups, a partial last group, fewer matrices than lanes
            for batch in [16, 29, 3] {
                for config in &configs {
                    let k = Coefficients::<f32>::new(config, 4);
                    let (lanes, finite) = compare::<f32, f32>(batch, shape, &k, None);
                    assert_eq!(lanes > 1, vectors, "{shape:?}");
                    assert!(finite);
                    compare::<f64, f64>(batch, shape, &Coefficients::new(config, 4), None);
                    compare::<f32, bf16>(batch, shape, &k, None);
                    let stochastic = Coefficients {
                        rounding_key: Some(77),
                        ..k
                    };
                    compare::<f32, bf16>(batch, shape, &stochastic, None);
                }
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "no vector instructions under the interpreter")]
    fn an_overflow_in_any_matrix_is_reported_as_the_loops_report_it() {
        let k = Coefficients::<f32>::new(&CameConfig::new(0.01), 2);
        let size = 9;
        // the first and the last matrix of a lane with a partial last group, and of one
        // with fewer matrices than lanes
        for (batch, matrix) in [(29, 0), (29, 28), (3, 2)] {
            let at = Some(matrix * size + 4);
            assert!(
                !compare::<f32, f32>(batch, (3, 3), &k, at).1,
                "{batch}, {matrix}"
            );
            let k = Coefficients::<f64>::new(&CameConfig::new(0.01), 2);
            assert!(
                !compare::<f64, f64>(batch, (3, 3), &k, at).1,
                "{batch}, {matrix}"
            );
        }
    }
}
