//! Row kernels: the element-wise work of a step, one row (or one block of a vector) at a time.
//!
//! Every loop walks fixed-width chunks (`as_chunks::<W>`) with `W` independent accumulators, so
//! there are no bounds checks inside and float reductions vectorise without reassociation:
//! each accumulator sums every `W`-th element in order, and the accumulators are combined by a
//! fixed pairwise tree. The order of every sum is a function of the row length alone.

use crate::Float;
use crate::config::Coefficients;

/// Width of the chunks and number of independent accumulators.
pub(crate) const W: usize = 16;

#[inline(always)]
fn hsum<T: Float>(mut acc: [T; W]) -> T {
    let mut width = W;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] = acc[i] + acc[i + width];
        }
    }
    acc[0]
}

/// Returns `sum_j (g_j^2 + eps)` and adds each term to `col_sums[j]`.
#[inline(always)]
pub(crate) fn sq_row<T: Float>(g: &[T], eps: T, col_sums: &mut [T]) -> T {
    let (g_chunks, g_tail) = g.as_chunks::<W>();
    let (c_chunks, c_tail) = col_sums.as_chunks_mut::<W>();
    let mut acc = [T::zero(); W];
    for (gx, cx) in g_chunks.iter().zip(c_chunks) {
        for k in 0..W {
            let u = gx[k] * gx[k] + eps;
            acc[k] = acc[k] + u;
            cx[k] = cx[k] + u;
        }
    }
    let mut tail = T::zero();
    for (&gj, cj) in g_tail.iter().zip(c_tail) {
        let u = gj * gj + eps;
        tail = tail + u;
        *cj = *cj + u;
    }
    hsum(acc) + tail
}

/// Returns `sum_j ((rf * cf_j) * g_j)^2`: the squared norm of one row of the unclipped update.
#[inline(always)]
pub(crate) fn update_sq_row<T: Float>(g: &[T], rf: T, cf: &[T]) -> T {
    let (g_chunks, g_tail) = g.as_chunks::<W>();
    let (f_chunks, f_tail) = cf.as_chunks::<W>();
    let mut acc = [T::zero(); W];
    for (gx, fx) in g_chunks.iter().zip(f_chunks) {
        for k in 0..W {
            let u = (rf * fx[k]) * gx[k];
            acc[k] = acc[k] + u * u;
        }
    }
    let mut tail = T::zero();
    for (&gj, &fj) in g_tail.iter().zip(f_tail) {
        let u = (rf * fj) * gj;
        tail = tail + u * u;
    }
    hsum(acc) + tail
}

/// The clipped update of one element: `((rf * cf) * g) / d`, or without the division when the
/// update was not clipped (`d == 1` exactly, so dividing would change nothing).
#[inline(always)]
fn clipped<T: Float, const CLIP: bool>(rf: T, cf: T, g: T, d: T) -> T {
    let u = (rf * cf) * g;
    if CLIP { u / d } else { u }
}

/// Updates the momentum of one row, `m = beta1 m + (1 - beta1) u`, and returns
/// `sum_j ((u_j - m_j)^2 + eps2)`, adding each term to `col_sums[j]`.
#[inline(always)]
pub(crate) fn momentum_row<T: Float, const CLIP: bool>(
    g: &[T],
    m: &mut [T],
    rf: T,
    cf: &[T],
    d: T,
    k: &Coefficients<T>,
    col_sums: &mut [T],
) -> T {
    let (beta1, omb1, eps2) = (k.beta1, k.one_minus_beta1, k.eps2);
    let (g_chunks, g_tail) = g.as_chunks::<W>();
    let (m_chunks, m_tail) = m.as_chunks_mut::<W>();
    let (f_chunks, f_tail) = cf.as_chunks::<W>();
    let (c_chunks, c_tail) = col_sums.as_chunks_mut::<W>();
    let mut acc = [T::zero(); W];
    for (((gx, mx), fx), cx) in g_chunks.iter().zip(m_chunks).zip(f_chunks).zip(c_chunks) {
        for j in 0..W {
            let u = clipped::<T, CLIP>(rf, fx[j], gx[j], d);
            let mj = mx[j] * beta1 + omb1 * u;
            mx[j] = mj;
            let res = (u - mj) * (u - mj) + eps2;
            acc[j] = acc[j] + res;
            cx[j] = cx[j] + res;
        }
    }
    let mut tail = T::zero();
    for (((&gj, mj), &fj), cj) in g_tail.iter().zip(m_tail).zip(f_tail).zip(c_tail) {
        let u = clipped::<T, CLIP>(rf, fj, gj, d);
        let m_new = *mj * beta1 + omb1 * u;
        *mj = m_new;
        let res = (u - m_new) * (u - m_new) + eps2;
        tail = tail + res;
        *cj = *cj + res;
    }
    hsum(acc) + tail
}

/// Applies one row of the final update: decoupled weight decay `p -= (lr * wd) p` when on, then
/// `p -= ((rf * cf_j) * m_j) * lr`.
#[inline(always)]
pub(crate) fn apply_row<T: Float>(p: &mut [T], m: &[T], rf: T, cf: &[T], k: &Coefficients<T>) {
    let lr = k.lr;
    match k.decay {
        Some(decay) => {
            for ((pj, &mj), &fj) in p.iter_mut().zip(m).zip(cf) {
                let decayed = *pj - decay * *pj;
                *pj = decayed - ((rf * fj) * mj) * lr;
            }
        }
        None => {
            for ((pj, &mj), &fj) in p.iter_mut().zip(m).zip(cf) {
                *pj = *pj - ((rf * fj) * mj) * lr;
            }
        }
    }
}

/// 0 for a finite `x`, NaN for NaN and infinities: summed over a block it checks every value
/// without a branch.
#[inline(always)]
#[allow(clippy::eq_op)]
fn finite_or_nan<T: Float>(x: T) -> T {
    x - x
}

/// The new second moment of one vector element: `beta2 v + (1 - beta2) (g^2 + eps1)`.
#[inline(always)]
fn next_sq<T: Float>(v: T, g: T, k: &Coefficients<T>) -> T {
    v * k.beta2 + k.one_minus_beta2 * (g * g + k.eps1)
}

/// For a block of a vector: returns `(sum_j u_j^2, check)` where `u = rsqrt(v_new) g` is the
/// unclipped update and `check` is 0 when every new second moment and every momentum value is
/// finite, NaN otherwise.
#[inline(always)]
pub(crate) fn vector_sq_block<T: Float>(g: &[T], v: &[T], m: &[T], k: &Coefficients<T>) -> (T, T) {
    let (g_chunks, g_tail) = g.as_chunks::<W>();
    let (v_chunks, v_tail) = v.as_chunks::<W>();
    let (m_chunks, m_tail) = m.as_chunks::<W>();
    let mut acc = [T::zero(); W];
    let mut check = [T::zero(); W];
    for ((gx, vx), mx) in g_chunks.iter().zip(v_chunks).zip(m_chunks) {
        for j in 0..W {
            let vn = next_sq(vx[j], gx[j], k);
            let u = (T::one() / vn.sqrt()) * gx[j];
            acc[j] = acc[j] + u * u;
            check[j] = check[j] + finite_or_nan(vn) + finite_or_nan(mx[j]);
        }
    }
    let (mut tail, mut tail_check) = (T::zero(), T::zero());
    for ((&gj, &vj), &mj) in g_tail.iter().zip(v_tail).zip(m_tail) {
        let vn = next_sq(vj, gj, k);
        let u = (T::one() / vn.sqrt()) * gj;
        tail = tail + u * u;
        tail_check = tail_check + finite_or_nan(vn) + finite_or_nan(mj);
    }
    (hsum(acc) + tail, hsum(check) + tail_check)
}

/// The whole update of a vector block: second moment, clipped update, momentum, weight decay
/// and the parameter step `p -= m * lr` (vectors have no confidence term).
#[inline(always)]
pub(crate) fn vector_apply<T: Float, const CLIP: bool>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    d: T,
    k: &Coefficients<T>,
) {
    let (beta1, omb1, lr) = (k.beta1, k.one_minus_beta1, k.lr);
    let decay = k.decay.unwrap_or(T::zero());
    let decays = k.decay.is_some();
    for (((pj, &gj), mj), vj) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let vn = next_sq(*vj, gj, k);
        *vj = vn;
        let u = clipped::<T, CLIP>(T::one() / vn.sqrt(), T::one(), gj, d);
        let m_new = *mj * beta1 + omb1 * u;
        *mj = m_new;
        let mut pn = *pj;
        if decays {
            pn = pn - decay * pn;
        }
        *pj = pn - m_new * lr;
    }
}
