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
use crate::Element;
use crate::Float;
use crate::config::Coefficients;
use crate::element::random_bits;
use crate::exec::prefetch;
use crate::exec::simd::{Ops, Scalar, V};
use crate::float::lanes;

/// The row factors, the column factors and the clip divisor of the update.
#[derive(Clone, Copy)]
pub(crate) struct Factors<'a, T> {
    pub(crate) rf: &'a [T],
    pub(crate) cf: &'a [T],
    pub(crate) d: T,
}

/// What follows each of `R` rows in its two streams: row `r` of the next group of rows, or
/// nothing ([`nothing_follows`]). The sweeps request lines there when they near a row's end
/// ([`prefetch::ahead_in_row`]).
pub(crate) type Following<'a, A, B, const R: usize> = ([&'a [A]; R], [&'a [B]; R]);

/// [`Following`] where nothing follows (or nothing is to be requested).
pub(crate) fn nothing_follows<'a, A, B, const R: usize>() -> Following<'a, A, B, R> {
    ([&[]; R], [&[]; R])
}

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

/// Each row cut into its first `n` whole vectors and the rest (its tail).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn vectors<S: Simd, E: Element, const R: usize>(
    rows: [&[E]; R],
    n: usize,
) -> ([&[E]; R], [&[E]; R]) {
    let l = lanes::<S, E::Compute>();
    let split = rows.map(|r| r.split_at(n * l));
    (split.map(|(v, _)| v), split.map(|(_, t)| t))
}

/// Each writable row cut into its first `n` whole vectors and the rest (its tail).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn vectors_mut<S: Simd, E: Element, const R: usize>(
    rows: [&mut [E]; R],
    n: usize,
) -> ([&mut [E]; R], [&mut [E]; R]) {
    let l = lanes::<S, E::Compute>();
    let mut split = rows.map(|r| r.split_at_mut(n * l));
    (
        array::from_fn(|r| core::mem::take(&mut split[r].0)),
        array::from_fn(|r| core::mem::take(&mut split[r].1)),
    )
}

/// The number of whole vectors of `S` in `len` elements of `T`.
#[inline(always)]
fn whole<S: Simd, T: Float>(len: usize) -> usize {
    len / lanes::<S, T>()
}

/// `sum_j (g_j^2 + eps)` of one row (followed in its stream by `next`, see
/// [`prefetch::ahead_in_row`]), read as a single stream with four accumulator vectors
/// (vector `i` goes to accumulator `i % 4`), each summed in blocks of [`ROW_BLOCK`] vectors
/// added into a compensated total ([`super::sum`]), combined as `(a0 + a1) + (a2 + a3)`, then
/// the row's tail element by element.
#[inline(always)]
pub(crate) fn row_sq_sum<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    (g, next): (&[G], &[G]),
    eps: T,
) -> T {
    let nv = whole::<S, T>(g.len());
    let (gv, gt) = g.split_at(nv * lanes::<S, T>());
    let e = o.splat(eps);
    let gv = G::vectors::<S>(gv);
    let term = |i| formula::sq_term(o, formula::square(o, G::at::<S>(gv, i)), e);
    let zero = o.splat(T::zero());
    let quads = nv / 4;
    let mut total = [Kahan::new(zero); 4];
    for start in (0..quads).step_by(ROW_BLOCK) {
        let mut acc = [zero; 4];
        for q in start..quads.min(start + ROW_BLOCK) {
            for a in 0..4 {
                let k = (4 * q + a) * lanes::<S, T>();
                prefetch::ahead_in_row(g, 1, (g.len(), next), k);
            }
            for (a, sum) in acc.iter_mut().enumerate() {
                *sum = o.add(*sum, term(4 * q + a));
            }
        }
        for a in 0..4 {
            sum::add(o, &mut total[a], acc[a]);
        }
    }
    let mut acc = total.map(|k| k.sum);
    for (a, i) in (4 * quads..nv).enumerate() {
        acc[a] = o.add(acc[a], term(i));
    }
    let mut sum = o.sum(o.add(o.add(acc[0], acc[1]), o.add(acc[2], acc[3])));
    let s = Ops::<Scalar, T>::new(Scalar);
    for &x in gt {
        let x = x.to_compute();
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
pub(crate) fn col_sq_terms<S: Simd, T: Float, G: Element<Compute = T>, const R: usize>(
    o: Ops<S, T>,
    g: [&[G]; R],
    eps: T,
    w: [T; R],
    (col_sums, weighted): (&mut [T], &mut [T]),
) {
    let (cv, ct) = T::as_mut_simd::<S>(col_sums);
    let (wv, wt) = T::as_mut_simd::<S>(weighted);
    let n = cv.len();
    let (gv, gt) = vectors::<S, G, R>(g, n);
    let gv = gv.map(G::vectors::<S>);
    let e = o.splat(eps);
    let wr = w.map(|x| o.splat(x));
    for (i, (c, v)) in cv.iter_mut().zip(&mut wv[..n]).enumerate() {
        let (col, acc) = col_group(o, array::from_fn(|r| G::at::<S>(gv[r], i)), e, wr);
        *c = o.add(*c, col);
        *v = o.add(*v, acc);
    }
    let s = Ops::<Scalar, T>::new(Scalar);
    for (j, (c, v)) in ct.iter_mut().zip(wt).enumerate() {
        let (col, acc) = col_group(s, array::from_fn(|r| gt[r][j].to_compute()), eps, w);
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
/// compensated total) and adds the column terms to `col_sums`. `AHEAD`: whether to request the
/// rows' lines ahead ([`prefetch`]; not for rows a caller has just brought into cache), `next`
/// what follows each row in its stream ([`Following`]).
#[inline(always)]
pub(crate) fn momentum_rows<
    S: Simd,
    T: Float,
    G: Element<Compute = T>,
    const R: usize,
    const AHEAD: bool,
>(
    o: Ops<S, T>,
    (g, m): ([&[G]; R], [&mut [T]; R]),
    next: Following<'_, G, T, R>,
    rf_d: [T; R],
    cf: &[T],
    k: &Coefficients<T>,
    col_sums: &mut [T],
) -> [T; R] {
    let (fv, ft) = T::as_simd::<S>(cf);
    let n = fv.len();
    let (g_rows, gt) = vectors::<S, G, R>(g, n);
    let gv = g_rows.map(G::vectors::<S>);
    let (mv, mt) = vectors_mut::<S, T, R>(m, n);
    let mv = mv.map(|m| T::as_mut_simd::<S>(m).0);
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
                if AHEAD {
                    let (at, cols) = (i * lanes::<S, T>(), cf.len());
                    prefetch::ahead_in_row(g_rows[r], 1, (cols, next.0[r]), at);
                    prefetch::ahead_in_row(&*mv[r], lanes::<S, T>(), (cols, next.1[r]), at);
                }
                x[r] = G::at::<S>(gv[r], i);
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
            let gm = (gt[r][j].to_compute(), mt[r][j]);
            let (m_new, res) = formula::momentum(s, &sc, gm, (rf_d[r], f));
            mt[r][j] = m_new;
            sums[r] = sums[r] + res;
            col = if r == 0 { res } else { col + res };
        }
        *col_sum = *col_sum + col;
    }
    sums
}

/// Whether parameters sweep 3 just wrote are finite: 16-bit ones can round to an infinity;
/// `f32` and `f64` ones are finite whenever the statistics are (checked before sweep 3).
#[inline(always)]
pub(super) fn written_finite<P: Element>(p: &[P]) -> bool {
    !P::ROUNDS || P::all_finite(p)
}

/// For `R` rows: decoupled weight decay `p -= (lr * wd) p` when on, then
/// `p -= ((rf * cf_j) * m_j) * lr`, written back to `P` as `k.rounding` says (`start`: the flat
/// index of the first row's first element, which stochastic rounding needs). `AHEAD` and `next`
/// as in [`momentum_rows`].
#[inline(always)]
pub(crate) fn apply_rows<
    S: Simd,
    T: Float,
    P: Element<Compute = T>,
    const R: usize,
    const AHEAD: bool,
>(
    o: Ops<S, T>,
    (p, m): ([&mut [P]; R], [&[T]; R]),
    next: Following<'_, P, T, R>,
    (rf, cf): ([T; R], &[T]),
    start: usize,
    k: &Coefficients<T>,
) {
    let (pm, f) = ((p, m), (rf, cf));
    let key = k.rounding_key.filter(|_| P::ROUNDS);
    let at = (start, key.unwrap_or(0));
    match (k.decay.is_some(), key.is_some()) {
        (false, false) => apply_rows_with::<S, T, P, R, AHEAD, false, false>(o, pm, next, f, at, k),
        (true, false) => apply_rows_with::<S, T, P, R, AHEAD, true, false>(o, pm, next, f, at, k),
        (false, true) => apply_rows_with::<S, T, P, R, AHEAD, false, true>(o, pm, next, f, at, k),
        (true, true) => apply_rows_with::<S, T, P, R, AHEAD, true, true>(o, pm, next, f, at, k),
    }
}

#[inline(always)]
fn apply_rows_with<
    S: Simd,
    T: Float,
    P: Element<Compute = T>,
    const R: usize,
    const AHEAD: bool,
    const DECAY: bool,
    const RANDOM: bool,
>(
    o: Ops<S, T>,
    (p, m): ([&mut [P]; R], [&[T]; R]),
    next: Following<'_, P, T, R>,
    (rf, cf): ([T; R], &[T]),
    (start, key): (usize, u64),
    k: &Coefficients<T>,
) {
    let (fv, ft) = T::as_simd::<S>(cf);
    let (n, cols) = (fv.len(), cf.len());
    let (pv, pt) = vectors_mut::<S, P, R>(p, n);
    let (mv, mt) = vectors::<S, T, R>(m, n);
    let mv = mv.map(|m| T::as_simd::<S>(m).0);
    let c = Consts::new(o, k);
    let rfv = rf.map(|x| o.splat(x));
    let zero = o.splat(T::zero());
    let row_start: [usize; R] = array::from_fn(|r| start + r * cols);
    let round = P::ROUNDS && !RANDOM;
    for (i, &f) in fv.iter().enumerate() {
        // loads before stores, as in `momentum_rows`
        let (mut pr, mut mr) = ([zero; R], [zero; R]);
        for r in 0..R {
            if AHEAD {
                let at = i * lanes::<S, T>();
                prefetch::ahead_in_row(&*pv[r], 1, (cols, next.0[r]), at);
                prefetch::ahead_in_row(mv[r], lanes::<S, T>(), (cols, next.1[r]), at);
            }
            pr[r] = P::load::<S>(pv[r], i);
            mr[r] = mv[r][i];
        }
        for r in 0..R {
            let p = formula::decayed::<S, T, P, DECAY>(o, &c, pr[r], round);
            let x = formula::apply(o, &c, (p, mr[r]), (rfv[r], f));
            if RANDOM {
                store_stochastic::<S, P>(pv[r], i, x, key, row_start[r]);
            } else {
                P::store::<S>(pv[r], i, x);
            }
        }
    }
    let (s, sc) = formula::scalar(k);
    let tail = n * lanes::<S, T>();
    for (j, &f) in ft.iter().enumerate() {
        for r in 0..R {
            let p = formula::decayed::<_, T, P, DECAY>(s, &sc, pt[r][j].to_compute(), round);
            let x = formula::apply(s, &sc, (p, mt[r][j]), (rf[r], f));
            pt[r][j] = if RANDOM {
                P::round_stochastic(x, random_bits(key, row_start[r] + tail + j))
            } else {
                P::from_compute(x)
            };
        }
    }
}

/// Writes vector `v` over the `i`-th whole vector of `row` (whose first element has flat index
/// `start`), each element rounded stochastically with its own random bits.
#[inline(always)]
pub(crate) fn store_stochastic<S: Simd, P: Element>(
    row: &mut [P],
    i: usize,
    v: V<S, P::Compute>,
    key: u64,
    start: usize,
) {
    let l = lanes::<S, P::Compute>();
    let mut wide = [num_traits::Zero::zero(); 16];
    <P::Compute as crate::float::sealed::Sealed>::as_mut_simd::<S>(&mut wide[..l]).0[0] = v;
    let first = i * l;
    for (lane, (x, &w)) in row[first..first + l].iter_mut().zip(&wide).enumerate() {
        *x = P::round_stochastic(w, random_bits(key, start + first + lane));
    }
}

/// For a block of a vector: returns `(sum_j u_j^2, check)` where `u = rsqrt(v_new) g` is the
/// unclipped update, `v_new = beta2 v + (1 - beta2) (g^2 + eps1)`, and `check` is 0 when every
/// new second moment and every momentum value is finite, NaN otherwise.
#[inline(always)]
pub(crate) fn vector_sq_block<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    (g, v, m): (&[G], &[T], &[T]),
    k: &Coefficients<T>,
) -> (T, T) {
    let (vv, vt) = T::as_simd::<S>(v);
    let (mv, mt) = T::as_simd::<S>(m);
    let (gv, gt) = g.split_at(vv.len() * lanes::<S, T>());
    let gv = G::vectors::<S>(gv);
    let c = Consts::new(o, k);
    let zero = o.splat(T::zero());
    let (mut acc, mut check) = (zero, zero);
    for (i, (&v, &m)) in vv.iter().zip(mv).enumerate() {
        prefetch::ahead(g, i * lanes::<S, T>());
        prefetch::ahead(vv, i);
        prefetch::ahead(mv, i);
        let (vn, u) = formula::vector_second_moment(o, &c, (G::at::<S>(gv, i), v));
        acc = o.add(acc, formula::square(o, u));
        check = o.add(check, formula::not_finite(o, vn, m));
    }
    let (mut sum, mut check) = (o.sum(acc), o.sum(check));
    let (s, sc) = formula::scalar(k);
    for ((&g, &v), &m) in gt.iter().zip(vt).zip(mt) {
        let (vn, u) = formula::vector_second_moment(s, &sc, (g.to_compute(), v));
        sum = sum + formula::square(s, u);
        check = check + formula::not_finite(s, vn, m);
    }
    (sum, check)
}

/// The whole update of a vector block: second moment, clipped update `(rsqrt(v) g) / d`,
/// momentum, weight decay and the parameter step `p -= m * lr` (vectors have no confidence
/// term), written back to `P` as `k.rounding_key` says (`start`: the flat index of `p[0]`).
/// Without clipping (`d == 1` exactly) the division is skipped: it would change nothing.
#[inline(always)]
pub(crate) fn vector_apply<
    S: Simd,
    T: Float,
    P: Element<Compute = T>,
    G: Element<Compute = T>,
    const CLIP: bool,
    const DECAY: bool,
>(
    o: Ops<S, T>,
    (p, g, m, v): (&mut [P], &[G], &mut [T], &mut [T]),
    (d, start): (T, usize),
    k: &Coefficients<T>,
) {
    let (mv, mt) = T::as_mut_simd::<S>(m);
    let (vv, vt) = T::as_mut_simd::<S>(v);
    let split = mv.len() * lanes::<S, T>();
    let (pv, pt) = p.split_at_mut(split);
    let (gv, gt) = g.split_at(split);
    let gv = G::vectors::<S>(gv);
    let key = k.rounding_key.filter(|_| P::ROUNDS);
    let round = P::ROUNDS && key.is_none();
    let c = Consts::new(o, k);
    let dv = o.splat(d);
    let vv = &mut vv[..mv.len()];
    for i in 0..mv.len() {
        prefetch::ahead(&*pv, i * lanes::<S, T>());
        prefetch::ahead(g, i * lanes::<S, T>());
        prefetch::ahead(&*mv, i);
        prefetch::ahead(&*vv, i);
        let (vn, u) = formula::vector_second_moment(o, &c, (G::at::<S>(gv, i), vv[i]));
        vv[i] = vn;
        let p = formula::decayed::<S, T, P, DECAY>(o, &c, P::load::<S>(pv, i), round);
        let (m_new, p_new) = formula::vector_update::<S, T, CLIP>(o, &c, (u, dv), (mv[i], p));
        mv[i] = m_new;
        match key {
            Some(key) => store_stochastic::<S, P>(pv, i, p_new, key, start),
            None => P::store::<S>(pv, i, p_new),
        }
    }
    let (s, sc) = formula::scalar(k);
    let rest = pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut());
    for (j, (((p, &g), m), v)) in rest.enumerate() {
        let (vn, u) = formula::vector_second_moment(s, &sc, (g.to_compute(), *v));
        *v = vn;
        let x = formula::decayed::<_, T, P, DECAY>(s, &sc, p.to_compute(), round);
        let (m_new, p_new) = formula::vector_update::<_, T, CLIP>(s, &sc, (u, d), (*m, x));
        *m = m_new;
        *p = match key {
            Some(key) => P::round_stochastic(p_new, random_bits(key, start + split + j)),
            None => P::from_compute(p_new),
        };
    }
}
