//! The sweeps' inner loops: the element formulas of [`super::formula`] over groups of `R` rows of
//! a matrix side by side (or over a block of a vector), in explicit SIMD vectors (see
//! [`crate::exec::simd`]); each row's tail goes through the same formulas one element at a time.
//!
//! Rows of a group are walked together, vector by vector, so the per-column data (column
//! factors, column sums) is loaded once per group rather than once per row, and the group's
//! rows are independent streams that keep more memory requests in flight. In a group each
//! row's sum has one accumulator vector, reduced in a fixed order at the end of the row, then
//! the row's tail (`cols % lanes` elements) is added one element at a time; column terms of a
//! group are added up row by row before they reach the column sum. A row summed on its own
//! ([`row_sq_sum`]) has four accumulator vectors. The order of every sum is fixed by the shape
//! and the instruction set.

use core::array;

use pulp::Simd;

use super::formula::{self, Consts};
use super::sum::{self, Kahan, ROW_BLOCK};
use crate::Float;
use crate::config::Coefficients;
use crate::exec::simd::{Ops, Scalar, V};

/// Rows walked side by side.
pub(crate) const GROUP: usize = 4;

/// Splits `R * cols` elements into `R` rows.
#[inline(always)]
pub(crate) fn rows<T, const R: usize>(data: &[T], cols: usize) -> [&[T]; R] {
    let mut rest = data;
    array::from_fn(|_| {
        let (row, tail) = rest.split_at(cols);
        rest = tail;
        row
    })
}

/// Splits `R * cols` elements into `R` writable rows.
#[inline(always)]
pub(crate) fn rows_mut<T, const R: usize>(data: &mut [T], cols: usize) -> [&mut [T]; R] {
    let mut rest = data;
    array::from_fn(|_| {
        let (row, tail) = core::mem::take(&mut rest).split_at_mut(cols);
        rest = tail;
        row
    })
}

/// Each row's whole vectors, cut to the same count `n`, and its tail.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn vectors<S: Simd, T: Float, const R: usize>(
    rows: [&[T]; R],
    n: usize,
) -> ([&[V<S, T>]; R], [&[T]; R]) {
    let split = rows.map(|r| T::as_simd::<S>(r));
    (split.map(|(v, _)| &v[..n]), split.map(|(_, t)| t))
}

/// Each writable row's whole vectors, cut to the same count `n`, and its tail.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn vectors_mut<S: Simd, T: Float, const R: usize>(
    rows: [&mut [T]; R],
    n: usize,
) -> ([&mut [V<S, T>]; R], [&mut [T]; R]) {
    let mut split = rows.map(|r| T::as_mut_simd::<S>(r));
    (
        array::from_fn(|r| &mut core::mem::take(&mut split[r].0)[..n]),
        array::from_fn(|r| core::mem::take(&mut split[r].1)),
    )
}

/// `sum_j (g_j^2 + eps)` of one row, read as a single stream with four accumulator vectors
/// (vector `i` goes to accumulator `i % 4`), each summed in blocks of [`ROW_BLOCK`] vectors
/// added into a compensated total ([`super::sum`]), combined as `(a0 + a1) + (a2 + a3)`, then
/// the row's tail element by element.
#[inline(always)]
pub(crate) fn row_sq_sum<S: Simd, T: Float>(o: Ops<S, T>, g: &[T], eps: T) -> T {
    let (gv, gt) = T::as_simd::<S>(g);
    let e = o.splat(eps);
    let term = |x| formula::sq_term(o, formula::square(o, x), e);
    let zero = o.splat(T::zero());
    let (quads, rest) = gv.as_chunks::<4>();
    let mut total = [Kahan::new(zero); 4];
    for block in quads.chunks(ROW_BLOCK) {
        let mut acc = [zero; 4];
        for q in block {
            for a in 0..4 {
                acc[a] = o.add(acc[a], term(q[a]));
            }
        }
        for a in 0..4 {
            sum::add(o, &mut total[a], acc[a]);
        }
    }
    let mut acc = total.map(|k| k.sum);
    for (a, &x) in rest.iter().enumerate() {
        acc[a] = o.add(acc[a], term(x));
    }
    let mut sum = o.sum(o.add(o.add(acc[0], acc[1]), o.add(acc[2], acc[3])));
    let s = Ops::<Scalar, T>::new(Scalar);
    for &x in gt {
        sum = sum + formula::sq_term(s, formula::square(s, x), eps);
    }
    sum
}

/// For `R` rows already summed by [`row_sq_sums`] (so in cache): adds the column terms
/// `sum_r (g_rj^2 + eps)` to `col_sums` and `sum_r g_rj^2 w_r` to `weighted`.
///
/// With `w_r` the inverse of row `r`'s new statistic, `weighted` sums up to `sum_i g_ij^2 / r_i`,
/// from which the squared norm of the whole update follows without another sweep (see
/// `came::factored`).
#[inline(always)]
pub(crate) fn col_sq_terms<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    g: [&[T]; R],
    eps: T,
    w: [T; R],
    (col_sums, weighted): (&mut [T], &mut [T]),
) {
    let (cv, ct) = T::as_mut_simd::<S>(col_sums);
    let (wv, wt) = T::as_mut_simd::<S>(weighted);
    let n = cv.len();
    let (gv, gt) = vectors::<S, T, R>(g, n);
    let e = o.splat(eps);
    let wr = w.map(|x| o.splat(x));
    for (i, (c, v)) in cv.iter_mut().zip(&mut wv[..n]).enumerate() {
        let (col, acc) = col_group(o, array::from_fn(|r| gv[r][i]), e, wr);
        *c = o.add(*c, col);
        *v = o.add(*v, acc);
    }
    let s = Ops::<Scalar, T>::new(Scalar);
    for (j, (c, v)) in ct.iter_mut().zip(wt).enumerate() {
        let (col, acc) = col_group(s, array::from_fn(|r| gt[r][j]), eps, w);
        *c = *c + col;
        *v = *v + acc;
    }
}

/// One column position of `R` rows: `(Σ_r (g_r² + eps), Σ_r g_r² w_r)`, added row by row.
#[inline(always)]
fn col_group<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    g: [V<S, T>; R],
    eps: V<S, T>,
    w: [V<S, T>; R],
) -> (V<S, T>, V<S, T>) {
    let mut col = eps;
    let mut acc = eps;
    for r in 0..R {
        let sq = formula::square(o, g[r]);
        let u = formula::sq_term(o, sq, eps);
        col = if r == 0 { u } else { o.add(col, u) };
        let y = formula::weighted_term(o, sq, w[r]);
        acc = if r == 0 { y } else { o.add(acc, y) };
    }
    (col, acc)
}

/// For `R` rows: updates the momentum `m = beta1 m + (1 - beta1) u` with the clipped update
/// `u = (rf_d * cf_j) * g_j` (`rf_d`: the row factor divided by the clip divisor), returns each
/// row's `sum_j ((u_j - m_j)^2 + eps2)` (summed in blocks of [`ROW_BLOCK`] vectors added into a
/// compensated total) and adds the column terms to `col_sums`.
#[inline(always)]
pub(crate) fn momentum_rows<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    (g, m): ([&[T]; R], [&mut [T]; R]),
    rf_d: [T; R],
    cf: &[T],
    k: &Coefficients<T>,
    col_sums: &mut [T],
) -> [T; R] {
    let (fv, ft) = T::as_simd::<S>(cf);
    let n = fv.len();
    let (gv, gt) = vectors::<S, T, R>(g, n);
    let (mv, mt) = vectors_mut::<S, T, R>(m, n);
    let (cv, ct) = T::as_mut_simd::<S>(col_sums);
    let c = Consts::new(o, k);
    let rfv = rf_d.map(|x| o.splat(x));
    let zero = o.splat(T::zero());
    let mut total = [Kahan::new(zero); R];
    let cv = &mut cv[..n];
    for start in (0..n).step_by(ROW_BLOCK) {
        let end = n.min(start + ROW_BLOCK);
        let mut acc = [zero; R];
        for (i, (&f, col_sum)) in fv[start..end].iter().zip(&mut cv[start..end]).enumerate() {
            let i = start + i;
            // every row's loads before any store: measured 5-10% faster on 4096 x 4096 f32
            // (rows a multiple of 4 KiB apart, where a load can wait on a store to another row
            // at the same page offset)
            let (mut x, mut m_old) = ([zero; R], [zero; R]);
            for r in 0..R {
                x[r] = gv[r][i];
                m_old[r] = mv[r][i];
            }
            let mut col = c.eps2;
            for r in 0..R {
                let (m_new, res) = formula::momentum(o, &c, (x[r], m_old[r]), (rfv[r], f));
                mv[r][i] = m_new;
                acc[r] = o.add(acc[r], res);
                col = if r == 0 { res } else { o.add(col, res) };
            }
            *col_sum = o.add(*col_sum, col);
        }
        for r in 0..R {
            sum::add(o, &mut total[r], acc[r]);
        }
    }
    let acc = total.map(|k| k.sum);
    let mut sums = acc.map(|a| o.sum(a));
    let (s, sc) = formula::scalar(k);
    for (j, (&f, col_sum)) in ft.iter().zip(ct).enumerate() {
        let mut col = T::zero();
        for r in 0..R {
            let (m_new, res) = formula::momentum(s, &sc, (gt[r][j], mt[r][j]), (rf_d[r], f));
            mt[r][j] = m_new;
            sums[r] = sums[r] + res;
            col = if r == 0 { res } else { col + res };
        }
        *col_sum = *col_sum + col;
    }
    sums
}

/// For `R` rows: decoupled weight decay `p -= (lr * wd) p` when on, then
/// `p -= ((rf * cf_j) * m_j) * lr`.
#[inline(always)]
pub(crate) fn apply_rows<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    (p, m): ([&mut [T]; R], [&[T]; R]),
    rf: [T; R],
    cf: &[T],
    k: &Coefficients<T>,
) {
    if k.decay.is_some() {
        apply_rows_with::<S, T, R, true>(o, (p, m), rf, cf, k);
    } else {
        apply_rows_with::<S, T, R, false>(o, (p, m), rf, cf, k);
    }
}

#[inline(always)]
fn apply_rows_with<S: Simd, T: Float, const R: usize, const DECAY: bool>(
    o: Ops<S, T>,
    (p, m): ([&mut [T]; R], [&[T]; R]),
    rf: [T; R],
    cf: &[T],
    k: &Coefficients<T>,
) {
    let (fv, ft) = T::as_simd::<S>(cf);
    let n = fv.len();
    let (pv, pt) = vectors_mut::<S, T, R>(p, n);
    let (mv, mt) = vectors::<S, T, R>(m, n);
    let c = Consts::new(o, k);
    let rfv = rf.map(|x| o.splat(x));
    let zero = o.splat(T::zero());
    for (i, &f) in fv.iter().enumerate() {
        // loads before stores, as in `momentum_rows`
        let (mut pr, mut mr) = ([zero; R], [zero; R]);
        for r in 0..R {
            pr[r] = pv[r][i];
            mr[r] = mv[r][i];
        }
        for r in 0..R {
            pv[r][i] = formula::apply::<S, T, DECAY>(o, &c, (pr[r], mr[r]), (rfv[r], f));
        }
    }
    let (s, sc) = formula::scalar(k);
    for (j, &f) in ft.iter().enumerate() {
        for r in 0..R {
            let pm = (pt[r][j], mt[r][j]);
            pt[r][j] = formula::apply::<_, T, DECAY>(s, &sc, pm, (rf[r], f));
        }
    }
}

/// For a block of a vector: returns `(sum_j u_j^2, check)` where `u = rsqrt(v_new) g` is the
/// unclipped update, `v_new = beta2 v + (1 - beta2) (g^2 + eps1)`, and `check` is 0 when every
/// new second moment and every momentum value is finite, NaN otherwise.
#[inline(always)]
pub(crate) fn vector_sq_block<S: Simd, T: Float>(
    o: Ops<S, T>,
    (g, v, m): (&[T], &[T], &[T]),
    k: &Coefficients<T>,
) -> (T, T) {
    let (gv, gt) = T::as_simd::<S>(g);
    let (vv, vt) = T::as_simd::<S>(v);
    let (mv, mt) = T::as_simd::<S>(m);
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let (mut acc, mut check) = (zero, zero);
    for ((&g, &v), &m) in gv.iter().zip(vv).zip(mv) {
        let (vn, u) = formula::vector_second_moment(o, &c, (g, v));
        acc = o.add(acc, formula::square(o, u));
        check = o.add(check, formula::not_finite(o, vn, m));
    }
    let (mut sum, mut check) = (o.sum(acc), o.sum(check));
    let (s, sc) = formula::scalar(k);
    for ((&g, &v), &m) in gt.iter().zip(vt).zip(mt) {
        let (vn, u) = formula::vector_second_moment(s, &sc, (g, v));
        sum = sum + formula::square(s, u);
        check = check + formula::not_finite(s, vn, m);
    }
    (sum, check)
}

/// The whole update of a vector block: second moment, clipped update `(rsqrt(v) g) / d`,
/// momentum, weight decay and the parameter step `p -= m * lr` (vectors have no confidence
/// term). Without clipping (`d == 1` exactly) the division is skipped: it would change nothing.
#[inline(always)]
pub(crate) fn vector_apply<S: Simd, T: Float, const CLIP: bool, const DECAY: bool>(
    o: Ops<S, T>,
    (p, g, m, v): (&mut [T], &[T], &mut [T], &mut [T]),
    d: T,
    k: &Coefficients<T>,
) {
    let (pv, pt) = T::as_mut_simd::<S>(p);
    let (gv, gt) = T::as_simd::<S>(g);
    let (mv, mt) = T::as_mut_simd::<S>(m);
    let (vv, vt) = T::as_mut_simd::<S>(v);
    let c = Consts::new(o, k);
    let dv = o.splat(d);
    for (((p, &g), m), v) in pv.iter_mut().zip(gv).zip(mv.iter_mut()).zip(vv.iter_mut()) {
        let (vn, u) = formula::vector_second_moment(o, &c, (g, *v));
        *v = vn;
        (*m, *p) = formula::vector_update::<S, T, CLIP, DECAY>(o, &c, (u, dv), (*m, *p));
    }
    let (s, sc) = formula::scalar(k);
    for (((p, &g), m), v) in pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut()) {
        let (vn, u) = formula::vector_second_moment(s, &sc, (g, *v));
        *v = vn;
        (*m, *p) = formula::vector_update::<_, T, CLIP, DECAY>(s, &sc, (u, d), (*m, *p));
    }
}
