//! Row kernels: the element-wise work of a step on groups of `R` rows of a matrix side by side
//! (or on a block of a vector), in explicit SIMD vectors (see [`crate::simd`]).
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

use crate::Float;
use crate::config::Coefficients;
use crate::simd::{Ops, V};

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
/// (vector `i` goes to accumulator `i % 4`), combined as `(a0 + a1) + (a2 + a3)`, then the
/// row's tail element by element.
#[inline(always)]
pub(crate) fn row_sq_sum<S: Simd, T: Float>(o: Ops<S, T>, g: &[T], eps: T) -> T {
    let (gv, gt) = T::as_simd::<S>(g);
    let e = o.splat(eps);
    let mut acc = [o.splat(T::zero()); 4];
    let (quads, rest) = gv.as_chunks::<4>();
    for q in quads {
        for a in 0..4 {
            acc[a] = o.add(acc[a], o.add(o.mul(q[a], q[a]), e));
        }
    }
    for (a, &x) in rest.iter().enumerate() {
        acc[a] = o.add(acc[a], o.add(o.mul(x, x), e));
    }
    let mut sum = o.sum(o.add(o.add(acc[0], acc[1]), o.add(acc[2], acc[3])));
    for &x in gt {
        sum = sum + (x * x + eps);
    }
    sum
}

/// For `R` rows already summed by [`row_sq_sums`] (so in cache): adds the column terms
/// `sum_r (g_rj^2 + eps)` to `col_sums` and `sum_r g_rj^2 w_r` to `weighted`.
///
/// With `w_r` the inverse of row `r`'s new statistic, `weighted` sums up to `sum_i g_ij^2 / r_i`,
/// from which the squared norm of the whole update follows without another sweep (see
/// `step::factored`).
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
        let mut col = e;
        let mut acc = e;
        for r in 0..R {
            let x = gv[r][i];
            let sq = o.mul(x, x);
            let u = o.add(sq, e);
            col = if r == 0 { u } else { o.add(col, u) };
            let y = o.mul(sq, wr[r]);
            acc = if r == 0 { y } else { o.add(acc, y) };
        }
        *c = o.add(*c, col);
        *v = o.add(*v, acc);
    }
    for (j, (c, v)) in ct.iter_mut().zip(wt).enumerate() {
        let (mut col, mut acc) = (T::zero(), T::zero());
        for r in 0..R {
            let sq = gt[r][j] * gt[r][j];
            let u = sq + eps;
            col = if r == 0 { u } else { col + u };
            let y = sq * w[r];
            acc = if r == 0 { y } else { acc + y };
        }
        *c = *c + col;
        *v = *v + acc;
    }
}

/// For `R` rows: updates the momentum `m = beta1 m + (1 - beta1) u` with the clipped update
/// `u = (rf_d * cf_j) * g_j` (`rf_d`: the row factor divided by the clip divisor), returns each
/// row's `sum_j ((u_j - m_j)^2 + eps2)` and adds the column terms to `col_sums`.
#[inline(always)]
pub(crate) fn momentum_rows<S: Simd, T: Float, const R: usize>(
    o: Ops<S, T>,
    (g, m): ([&[T]; R], [&mut [T]; R]),
    rf_d: [T; R],
    cf: &[T],
    k: &Coefficients<T>,
    col_sums: &mut [T],
) -> [T; R] {
    let (beta1, omb1, eps2) = (k.beta1, k.one_minus_beta1, k.eps2);
    let (fv, ft) = T::as_simd::<S>(cf);
    let n = fv.len();
    let (gv, gt) = vectors::<S, T, R>(g, n);
    let (mv, mt) = vectors_mut::<S, T, R>(m, n);
    let (cv, ct) = T::as_mut_simd::<S>(col_sums);
    let (b1, omb1v, e2) = (o.splat(beta1), o.splat(omb1), o.splat(eps2));
    let rfv = rf_d.map(|x| o.splat(x));
    let mut acc = [o.splat(T::zero()); R];
    let zero = o.splat(T::zero());
    for (i, (&f, c)) in fv.iter().zip(&mut cv[..n]).enumerate() {
        // every row's loads before any store: measured 5-10% faster on 4096 x 4096 f32 (rows
        // a multiple of 4 KiB apart, where a load can wait on a store to another row at the
        // same page offset)
        let (mut x, mut m_old) = ([zero; R], [zero; R]);
        for r in 0..R {
            x[r] = gv[r][i];
            m_old[r] = mv[r][i];
        }
        let mut col = e2;
        for r in 0..R {
            let u = o.mul(o.mul(rfv[r], f), x[r]);
            let m_new = o.add(o.mul(m_old[r], b1), o.mul(omb1v, u));
            mv[r][i] = m_new;
            let d = o.sub(u, m_new);
            let res = o.add(o.mul(d, d), e2);
            acc[r] = o.add(acc[r], res);
            col = if r == 0 { res } else { o.add(col, res) };
        }
        *c = o.add(*c, col);
    }
    let mut sums = acc.map(|a| o.sum(a));
    for (j, (&f, c)) in ft.iter().zip(ct).enumerate() {
        let mut col = T::zero();
        for r in 0..R {
            let u = (rf_d[r] * f) * gt[r][j];
            let m_new = mt[r][j] * beta1 + omb1 * u;
            mt[r][j] = m_new;
            let res = (u - m_new) * (u - m_new) + eps2;
            sums[r] = sums[r] + res;
            col = if r == 0 { res } else { col + res };
        }
        *c = *c + col;
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
    match k.decay {
        Some(decay) => apply_rows_with::<S, T, R, true>(o, (p, m), rf, cf, k.lr, decay),
        None => apply_rows_with::<S, T, R, false>(o, (p, m), rf, cf, k.lr, T::zero()),
    }
}

#[inline(always)]
fn apply_rows_with<S: Simd, T: Float, const R: usize, const DECAY: bool>(
    o: Ops<S, T>,
    (p, m): ([&mut [T]; R], [&[T]; R]),
    rf: [T; R],
    cf: &[T],
    lr: T,
    decay: T,
) {
    let (fv, ft) = T::as_simd::<S>(cf);
    let n = fv.len();
    let (pv, pt) = vectors_mut::<S, T, R>(p, n);
    let (mv, mt) = vectors::<S, T, R>(m, n);
    let (lrv, decayv) = (o.splat(lr), o.splat(decay));
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
            let mut p = pr[r];
            if DECAY {
                p = o.sub(p, o.mul(decayv, p));
            }
            let upd = o.mul(o.mul(o.mul(rfv[r], f), mr[r]), lrv);
            pv[r][i] = o.sub(p, upd);
        }
    }
    for (j, &f) in ft.iter().enumerate() {
        for r in 0..R {
            let mut pr = pt[r][j];
            if DECAY {
                pr = pr - decay * pr;
            }
            pt[r][j] = pr - ((rf[r] * f) * mt[r][j]) * lr;
        }
    }
}

/// 0 for a finite `x`, NaN for NaN and infinities.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn finite_or_nan<T: Float>(x: T) -> T {
    x - x
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
    let (b2, omb2, e1, one) = (
        o.splat(k.beta2),
        o.splat(k.one_minus_beta2),
        o.splat(k.eps1),
        o.splat(T::one()),
    );
    let zero = o.splat(T::zero());
    let (mut acc, mut check) = (zero, zero);
    for ((&g, &v), &m) in gv.iter().zip(vv).zip(mv) {
        let vn = o.add(o.mul(v, b2), o.mul(omb2, o.add(o.mul(g, g), e1)));
        let u = o.mul(o.div(one, o.sqrt(vn)), g);
        acc = o.add(acc, o.mul(u, u));
        // x - x is 0 for finite x and NaN for NaN and infinities
        check = o.add(check, o.add(o.sub(vn, vn), o.sub(m, m)));
    }
    let (mut sum, mut check) = (o.sum(acc), o.sum(check));
    for ((&g, &v), &m) in gt.iter().zip(vt).zip(mt) {
        let vn = v * k.beta2 + k.one_minus_beta2 * (g * g + k.eps1);
        let u = (T::one() / vn.sqrt()) * g;
        sum = sum + u * u;
        check = check + finite_or_nan(vn) + finite_or_nan(m);
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
    let decay = k.decay.unwrap_or(T::zero());
    let (pv, pt) = T::as_mut_simd::<S>(p);
    let (gv, gt) = T::as_simd::<S>(g);
    let (mv, mt) = T::as_mut_simd::<S>(m);
    let (vv, vt) = T::as_mut_simd::<S>(v);
    let (b1, omb1, b2, omb2) = (
        o.splat(k.beta1),
        o.splat(k.one_minus_beta1),
        o.splat(k.beta2),
        o.splat(k.one_minus_beta2),
    );
    let (e1, one, dv, lr, decayv) = (
        o.splat(k.eps1),
        o.splat(T::one()),
        o.splat(d),
        o.splat(k.lr),
        o.splat(decay),
    );
    for (((p, &g), m), v) in pv.iter_mut().zip(gv).zip(mv.iter_mut()).zip(vv.iter_mut()) {
        let vn = o.add(o.mul(*v, b2), o.mul(omb2, o.add(o.mul(g, g), e1)));
        *v = vn;
        let mut u = o.mul(o.div(one, o.sqrt(vn)), g);
        if CLIP {
            u = o.div(u, dv);
        }
        let m_new = o.add(o.mul(*m, b1), o.mul(omb1, u));
        *m = m_new;
        let mut pn = *p;
        if DECAY {
            pn = o.sub(pn, o.mul(decayv, pn));
        }
        *p = o.sub(pn, o.mul(m_new, lr));
    }
    for (((p, &g), m), v) in pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut()) {
        let vn = *v * k.beta2 + k.one_minus_beta2 * (g * g + k.eps1);
        *v = vn;
        let mut u = (T::one() / vn.sqrt()) * g;
        if CLIP {
            u = u / d;
        }
        let m_new = *m * k.beta1 + k.one_minus_beta1 * u;
        *m = m_new;
        let mut pn = *p;
        if DECAY {
            pn = pn - decay * pn;
        }
        *p = pn - m_new * k.lr;
    }
}
