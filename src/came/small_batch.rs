//! A batch of small matrices (fewer than [`SMALL_COLS`](super::small::SMALL_COLS) columns,
//! such as the 3x3 kernels of a convolution), stepped a vector's width of matrices at a time:
//! one matrix per lane.
//!
//! A 3-wide row fills no vector, but eight 3x3 matrices side by side fill nine. Each group of
//! `L` matrices (`L` the lanes of a vector: 8 `f32` with AVX2, 4 with NEON) is copied into
//! small stack buffers transposed, so that vector `e` holds element `e` of every matrix of the
//! group, together with the group's row statistics or factors and column factors; the formulas
//! of [`super::formula`] run on whole vectors, and the results are copied back. Averages that
//! need no other value of the group (the column statistics, and sweep 2's row statistics) are
//! left as raw sums and finished in passes over the lane's contiguous statistics, as the loops
//! of `small.rs` do. Every lane computes what those loops compute for its matrix, the same
//! operations in the same order, so the results are bit-identical to theirs (tested below) for
//! any batch, lane and thread count. A group that holds fewer than `L` matrices (the last of a
//! lane) leaves the other lanes' stale values in the buffers; they are computed on and never
//! copied back.
//!
//! Without vectors (`L = 1`, as on a Cortex-M), and for shapes other than 3x3 (see [`fits`]),
//! the loops of `small.rs` run instead. The buffers take six times [`STAGE`] values of the
//! stack during a sweep (3.4 KiB in `f32`, 6.8 KiB in `f64`), only where vectors are used.
//! On a 256 x 256 x 3 x 3 batch (AVX2) a step takes 51 instructions per element against 104
//! with those loops (cachegrind), and about two thirds of their time; a third of what remains
//! is the copying in and out (`perf`).

use pulp::Simd;

use super::formula::{self, Consts, ema, sq_term, square};
use super::small;
use crate::config::Coefficients;
use crate::element::random_bits;
use crate::exec::simd::{Ops, V};
use crate::float::lanes;
use crate::{Element, Float};

/// Rows of each matrix stepped here.
const ROWS: usize = 3;
/// Columns of each matrix stepped here.
const COLS: usize = 3;
/// Elements of each matrix.
const SIZE: usize = ROWS * COLS;
/// The most lanes a group may have (`f32` in a 512-bit vector).
const MAX_LANES: usize = 16;
/// Elements of each staging buffer: a group's matrices, `SIZE * L`.
const STAGE: usize = SIZE * MAX_LANES;

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

/// A staging buffer.
type Stage<T> = [T; STAGE];

/// The matrices of `src` (`size` elements each, at most `l` of them) into `buf`, transposed:
/// element `e` of matrix `i` goes to `buf[e * l + i]`, widened to the compute type.
#[inline(always)]
fn gather<T: Float, E: Element<Compute = T>>(src: &[E], size: usize, l: usize, buf: &mut [T]) {
    let count = src.len() / size;
    let buf = &mut buf[..size * l];
    if count == l {
        let src = &src[..l * size];
        for (e, slots) in buf.chunks_exact_mut(l).enumerate() {
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = src[i * size + e].to_compute();
            }
        }
    } else {
        for (e, slots) in buf.chunks_exact_mut(l).enumerate() {
            for (i, slot) in slots[..count].iter_mut().enumerate() {
                *slot = src[i * size + e].to_compute();
            }
        }
    }
}

/// The inverse of [`gather`], each value stored by `put(destination, value, index in dst)`.
#[inline(always)]
fn scatter_with<T: Float, E>(
    buf: &[T],
    size: usize,
    l: usize,
    dst: &mut [E],
    mut put: impl FnMut(&mut E, T, usize),
) {
    let count = dst.len() / size;
    let buf = &buf[..size * l];
    if count == l {
        let dst = &mut dst[..l * size];
        for (e, values) in buf.chunks_exact(l).enumerate() {
            for (i, &v) in values.iter().enumerate() {
                let at = i * size + e;
                put(&mut dst[at], v, at);
            }
        }
    } else {
        for (e, values) in buf.chunks_exact(l).enumerate() {
            for (i, &v) in values[..count].iter().enumerate() {
                let at = i * size + e;
                put(&mut dst[at], v, at);
            }
        }
    }
}

/// The inverse of [`gather`] for values kept in the compute type.
#[inline(always)]
fn scatter<T: Float>(buf: &[T], size: usize, l: usize, dst: &mut [T]) {
    scatter_with(buf, size, l, dst, |x, v, _| *x = v);
}

/// The first `n` vectors of `buf`.
#[inline(always)]
fn vectors<S: Simd, T: Float>(buf: &[T], n: usize) -> &[V<S, T>] {
    T::as_simd::<S>(&buf[..n * lanes::<S, T>()]).0
}

/// The first `n` vectors of `buf`, writable.
#[inline(always)]
fn vectors_mut<S: Simd, T: Float>(buf: &mut [T], n: usize) -> &mut [V<S, T>] {
    T::as_mut_simd::<S>(&mut buf[..n * lanes::<S, T>()]).0
}

/// Sweep 1 of a lane of small matrices `(rows, cols)`: new squared-gradient statistics into
/// `next`; returns the squared norm of the unclipped update. Uses the column factors as
/// scratch and leaves each matrix's row mean in its slots of the row factors, as
/// `small::batch_sq_stats` (which runs instead when the matrices do not fit) does.
#[inline(always)]
pub(super) fn batch_sq_stats<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    g: &[G],
    (rows, cols): (usize, usize),
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    scratch: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> f64 {
    if fits::<S, T>(rows, cols) {
        return sq_stats_3x3::<S, T, G>(simd, g, old, next, scratch, k);
    }
    small::batch_sq_stats(g, (rows, cols), old, next, scratch, k)
}

#[inline(always)]
fn sq_stats_3x3<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    g: &[G],
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    (means, quotients): (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) -> f64 {
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let n_cols = o.splat(T::from_f64(COLS as f64));
    let (old_row, old_col) = old;
    let (next_row, next_col) = next;
    let [mut gs, mut rs, mut cs, mut qs]: [Stage<T>; 4] = [[T::zero(); STAGE]; 4];
    let groups = g
        .chunks(l * SIZE)
        .zip(old_row.chunks(l * ROWS))
        .zip(
            next_row
                .chunks_mut(l * ROWS)
                .zip(next_col.chunks_mut(l * COLS)),
        )
        .zip(quotients.chunks_mut(l * COLS));
    for (((g, old_row), (next_row, next_col)), q_out) in groups {
        gather(g, SIZE, l, &mut gs);
        gather(old_row, ROWS, l, &mut rs);
        let g = vectors::<S, T>(&gs, SIZE);
        let (r, sums, q) = (
            vectors_mut::<S, T>(&mut rs, ROWS),
            vectors_mut::<S, T>(&mut cs, COLS),
            vectors_mut::<S, T>(&mut qs, COLS),
        );
        // line 5, and the column sums of line 6
        sums.fill(zero);
        for (g, r) in g.chunks_exact(COLS).zip(r.iter_mut()) {
            let mut s = zero;
            for (&x, col) in g.iter().zip(sums.iter_mut()) {
                let u = sq_term(o, square(o, x), c.eps1);
                s = o.add(s, u);
                *col = o.add(*col, u);
            }
            *r = ema(o, *r, o.div(s, n_cols), c.beta2, c.one_minus_beta2);
        }
        // line 9's norm: weighted column sums v_j = sum_i g_ij^2 / r_i
        q.fill(zero);
        for (g, &r) in g.chunks_exact(COLS).zip(r.iter()) {
            let w = o.div(c.one, r);
            for (&x, v) in g.iter().zip(q.iter_mut()) {
                *v = o.add(*v, formula::weighted_term(o, square(o, x), w));
            }
        }
        scatter(&rs, ROWS, l, next_row);
        scatter(&cs, COLS, l, next_col);
        scatter(&qs, COLS, l, q_out);
    }
    // line 6 and the quotients v_j / c_j, in passes over the lane's statistics
    small::average_into(old_col, next_col, k.beta2, k.one_minus_beta2, ROWS);
    formula::quotients(quotients, next_col);
    small::batch_norm((ROWS, COLS), next_row, quotients, means)
}

/// Sweep 2 of a lane of small matrices: the momentum, and the new instability statistics into
/// `next`. Divides the row factors by the clip divisor in place (they are recomputed after
/// this sweep).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_momentum<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    (g, m): (&[G], &mut [T]),
    (rows, cols): (usize, usize),
    (rf, cf): (&mut [T], &[T]),
    d: T,
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    if fits::<S, T>(rows, cols) {
        return momentum_3x3::<S, T, G>(simd, (g, m), (rf, cf), d, old, next, k);
    }
    small::batch_momentum((g, m), (rows, cols), (rf, cf), d, old, next, k);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn momentum_3x3<S: Simd, T: Float, G: Element<Compute = T>>(
    simd: S,
    (g, m): (&[G], &mut [T]),
    (rf, cf): (&mut [T], &[T]),
    d: T,
    old: (&[T], &[T]),
    next: (&mut [T], &mut [T]),
    k: &Coefficients<T>,
) {
    for f in rf.iter_mut() {
        *f = *f / d;
    }
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let (old_row, old_col) = old;
    let (next_row, next_col) = next;
    let [mut gs, mut ms, mut rfs, mut cfs, mut rs, mut cs]: [Stage<T>; 6] = [[T::zero(); STAGE]; 6];
    let groups = g
        .chunks(l * SIZE)
        .zip(m.chunks_mut(l * SIZE))
        .zip(rf.chunks(l * ROWS).zip(cf.chunks(l * COLS)))
        .zip(
            next_row
                .chunks_mut(l * ROWS)
                .zip(next_col.chunks_mut(l * COLS)),
        );
    for (((g, m_out), (rf, cf)), (next_row, next_col)) in groups {
        gather(g, SIZE, l, &mut gs);
        gather(m_out, SIZE, l, &mut ms);
        gather(rf, ROWS, l, &mut rfs);
        gather(cf, COLS, l, &mut cfs);
        let (g, rf, cf) = (
            vectors::<S, T>(&gs, SIZE),
            vectors::<S, T>(&rfs, ROWS),
            vectors::<S, T>(&cfs, COLS),
        );
        let (m, r, sums) = (
            vectors_mut::<S, T>(&mut ms, SIZE),
            vectors_mut::<S, T>(&mut rs, ROWS),
            vectors_mut::<S, T>(&mut cs, COLS),
        );
        // lines 8-11: momentum and instability, and the sums of lines 12-13
        sums.fill(zero);
        let data = g.chunks_exact(COLS).zip(m.chunks_exact_mut(COLS));
        for ((g, m), (&rf, r)) in data.zip(rf.iter().zip(r.iter_mut())) {
            let mut s = zero;
            for (((&x, mj), &f), col) in g.iter().zip(m).zip(cf).zip(sums.iter_mut()) {
                let (m_new, res) = formula::momentum(o, &c, (x, *mj), (rf, f));
                *mj = m_new;
                s = o.add(s, res);
                *col = o.add(*col, res);
            }
            *r = s;
        }
        scatter(&ms, SIZE, l, m_out);
        scatter(&rs, ROWS, l, next_row);
        scatter(&cs, COLS, l, next_col);
    }
    // lines 12-13, in passes over the lane's statistics
    small::average_into(old_row, next_row, k.beta3, k.one_minus_beta3, COLS);
    small::average_into(old_col, next_col, k.beta3, k.one_minus_beta3, ROWS);
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
    let key = (start, k.rounding_key.filter(|_| P::ROUNDS));
    if k.decay.is_some() {
        apply_3x3::<S, T, P, true>(simd, pm, factors, key, k);
    } else {
        apply_3x3::<S, T, P, false>(simd, pm, factors, key, k);
    }
}

#[inline(always)]
fn apply_3x3<S: Simd, T: Float, P: Element<Compute = T>, const DECAY: bool>(
    simd: S,
    (p, m): (&mut [P], &[T]),
    (rf, cf): (&[T], &[T]),
    (start, key): (usize, Option<u64>),
    k: &Coefficients<T>,
) {
    let (o, l) = (Ops::<S, T>::new(simd), lanes::<S, T>());
    let c = Consts::new(o, k);
    let round = P::ROUNDS && key.is_none();
    let [mut ps, mut ms, mut rfs, mut cfs]: [Stage<T>; 4] = [[T::zero(); STAGE]; 4];
    let groups = p
        .chunks_mut(l * SIZE)
        .zip(m.chunks(l * SIZE))
        .zip(rf.chunks(l * ROWS).zip(cf.chunks(l * COLS)));
    for (n, ((p_out, m), (rf, cf))) in groups.enumerate() {
        gather(p_out, SIZE, l, &mut ps);
        gather(m, SIZE, l, &mut ms);
        gather(rf, ROWS, l, &mut rfs);
        gather(cf, COLS, l, &mut cfs);
        let (m, rf, cf) = (
            vectors::<S, T>(&ms, SIZE),
            vectors::<S, T>(&rfs, ROWS),
            vectors::<S, T>(&cfs, COLS),
        );
        // lines 14-15, after the weight decay
        let p = vectors_mut::<S, T>(&mut ps, SIZE);
        let data = p.chunks_exact_mut(COLS).zip(m.chunks_exact(COLS));
        for ((p, m), &r) in data.zip(rf) {
            for ((pj, &mj), &f) in p.iter_mut().zip(m).zip(cf) {
                let decayed = formula::decayed::<S, T, P, DECAY>(o, &c, *pj, round);
                *pj = formula::apply(o, &c, (decayed, mj), (r, f));
            }
        }
        let first = start + n * l * SIZE;
        scatter_with(&ps, SIZE, l, p_out, |x, v, at| {
            *x = match key {
                Some(key) => P::round_stochastic(v, random_bits(key, first + at)),
                None => P::from_compute(v),
            }
        });
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use std::{format, vec, vec::Vec};

    use half::bf16;

    use super::*;
    use crate::CameConfig;

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
    /// best instruction set and with the loops of `small.rs`, and compares every output bit
    /// for bit. Returns the lanes of the instruction set used.
    fn compare<T: Float, P: Element<Compute = T>>(
        batch: usize,
        (rows, cols): (usize, usize),
        k: &Coefficients<T>,
    ) -> usize {
        struct Both<'a, T: Float, P> {
            batch: usize,
            shape: (usize, usize),
            k: &'a Coefficients<T>,
            p: core::marker::PhantomData<P>,
        }
        impl<T: Float, P: Element<Compute = T>> pulp::WithSimd for Both<'_, T, P> {
            type Output = usize;
            fn with_simd<S: Simd>(self, simd: S) -> usize {
                let Self {
                    batch, shape, k, ..
                } = self;
                let (rows, cols) = shape;
                let n = batch * rows * cols;
                let g: Vec<P> = values(n, 1, (-2.0, 2.0));
                let m: Vec<T> = values(n, 2, (-0.5, 0.5));
                let p: Vec<P> = values(n, 3, (-1.0, 1.0));
                let old_row: Vec<T> = values(batch * rows, 4, (0.01, 2.0));
                let old_col: Vec<T> = values(batch * cols, 5, (0.01, 2.0));
                let rf: Vec<T> = values(batch * rows, 6, (0.5, 2.0));
                let cf: Vec<T> = values(batch * cols, 7, (0.5, 2.0));
                let d = T::from_f64(1.25);
                let zeros = |n| vec![T::zero(); n];
                let (r, c) = (batch * rows, batch * cols);
                let mut outputs = Vec::new();
                for vector in [true, false] {
                    let (mut nr, mut nc, mut fr, mut fc) = (zeros(r), zeros(c), zeros(r), zeros(c));
                    let old = (&old_row[..], &old_col[..]);
                    let sum = if vector {
                        batch_sq_stats(
                            simd,
                            &g,
                            shape,
                            old,
                            (&mut nr, &mut nc),
                            (&mut fr, &mut fc),
                            k,
                        )
                    } else {
                        small::batch_sq_stats(
                            &g,
                            shape,
                            old,
                            (&mut nr, &mut nc),
                            (&mut fr, &mut fc),
                            k,
                        )
                    };
                    let (mut m, mut rf, mut nr2, mut nc2) =
                        (m.clone(), rf.clone(), zeros(r), zeros(c));
                    let next = (&mut nr2[..], &mut nc2[..]);
                    if vector {
                        batch_momentum(simd, (&g, &mut m), shape, (&mut rf, &cf), d, old, next, k);
                    } else {
                        small::batch_momentum((&g, &mut m), shape, (&mut rf, &cf), d, old, next, k);
                    }
                    let mut p = p.clone();
                    if vector {
                        batch_apply(simd, (&mut p, &m), shape, (&rf, &cf), 1000, k);
                    } else {
                        small::batch_apply((&mut p, &m), shape, (&rf, &cf), 1000, k);
                    }
                    let out = [
                        bits(&nr),
                        bits(&nc),
                        bits(&fr),
                        bits(&fc),
                        vec![sum],
                        bits(&m),
                        bits(&rf),
                    ];
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
                lanes::<S, T>()
            }
        }
        pulp::Arch::new().dispatch(Both::<T, P> {
            batch,
            shape: (rows, cols),
            k,
            p: core::marker::PhantomData,
        })
    }

    #[test]
    #[cfg_attr(miri, ignore = "no vector instructions under the interpreter")]
    fn each_lane_computes_what_the_loops_compute_bit_for_bit() {
        let vectors = crate::instruction_set() != "pulp::Scalar";
        // betas far from 1, so that every rounding of the new terms shows in the statistics
        let plain = CameConfig::new(0.01).with_betas(0.9, 0.6, 0.7);
        let config = plain.with_weight_decay(0.1);
        // 3x3 steps here; the other shapes take the loops (which must then agree with
        // themselves: this checks the dispatch)
        for shape in [(1, 1), (3, 3), (5, 5), (2, 7), (4, 3), (16, 15)] {
            // whole groups, a partial last group, fewer matrices than lanes
            for batch in [16, 29, 3] {
                for config in [&config, &plain] {
                    let k = Coefficients::<f32>::new(config, 4);
                    let lanes = compare::<f32, f32>(batch, shape, &k);
                    assert_eq!(lanes > 1, vectors, "{shape:?}");
                    compare::<f64, f64>(batch, shape, &Coefficients::new(config, 4));
                    compare::<f32, bf16>(batch, shape, &k);
                    let stochastic = Coefficients {
                        rounding_key: Some(77),
                        ..k
                    };
                    compare::<f32, bf16>(batch, shape, &stochastic);
                }
            }
        }
    }
}
