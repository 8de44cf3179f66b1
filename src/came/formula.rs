//! The CAME update, element by element: Algorithm 1 of Luo et al., *CAME: Confidence-guided
//! Adaptive Memory Efficient Optimization* (ACL 2023, arXiv:2307.02047), as came-pytorch 0.1.3
//! computes it. For a weight matrix `W` (`n x m`) with gradient `G`, at step `t`:
//!
//! ```text
//!  5  r_t = β2 r_{t-1} + (1 - β2) mean_cols(G² + ε1)      row statistics    (exp_avg_sq_row)
//!  6  c_t = β2 c_{t-1} + (1 - β2) mean_rows(G² + ε1)      column statistics (exp_avg_sq_col)
//!  7  v_t = r_t c_t / mean(r_t)                           rebuilt second moment (never stored)
//!  8  u_t = G / sqrt(v_t)                                 the Adafactor update
//!  9  û_t = u_t / max(1, RMS(u_t) / d)                    clipped to threshold d
//! 10  m_t = β1 m_{t-1} + (1 - β1) û_t                     momentum          (exp_avg)
//! 11  U_t = (û_t - m_t)² + ε2                             instability
//! 12  R_t = β3 R_{t-1} + (1 - β3) mean_cols(U_t)          row statistics    (exp_avg_res_row)
//! 13  C_t = β3 C_{t-1} + (1 - β3) mean_rows(U_t)          column statistics (exp_avg_res_col)
//! 14  S_t = R_t C_t / mean(R_t)                           confidence (never stored)
//! 15  W_t = W_{t-1} - η m_t / sqrt(S_t)                   after decoupled weight decay
//! ```
//!
//! `1 / sqrt(v_t)` factors into a row factor `rf_i = 1 / sqrt(r_i / mean(r))` and a column factor
//! `cf_j = 1 / sqrt(c_j)` ([`rsqrt`], lines 7-8), and so does `1 / sqrt(S_t)` (lines 14-15): the
//! element formulas below take the factors, never a full-size matrix. Vectors and scalars (rank
//! 0 and 1) keep an element-wise `v_t` ([`vector_second_moment`]) and take no confidence term.
//!
//! Each formula is written once, generic over the vector instruction set `S`: the wide sweeps
//! (`sweeps.rs`, `batch.rs`) call it on whole vectors, their tails and the small-matrix loops
//! (`small.rs`) on single elements through pulp's [`Scalar`](crate::exec::simd::Scalar), where
//! every operation is the same IEEE operation in the same order. The CUDA kernels (`came.cu`)
//! mirror these functions under the same names, in the same order of operations.

use pulp::Simd;

use crate::Element;
use crate::Float;
use crate::config::Coefficients;
use crate::exec::simd::{Ops, Scalar, V};

/// The step's coefficients as vectors of `S`, splatted once per sweep.
#[derive(Clone, Copy)]
pub(crate) struct Consts<S: Simd, T: Float> {
    pub beta1: V<S, T>,
    pub one_minus_beta1: V<S, T>,
    pub beta2: V<S, T>,
    pub one_minus_beta2: V<S, T>,
    pub eps1: V<S, T>,
    pub eps2: V<S, T>,
    pub lr: V<S, T>,
    /// `lr * weight_decay` (zero when weight decay is off; then it is not applied at all)
    pub decay: V<S, T>,
    pub one: V<S, T>,
}

impl<S: Simd, T: Float> Consts<S, T> {
    #[inline(always)]
    pub(crate) fn new(o: Ops<S, T>, k: &Coefficients<T>) -> Self {
        Self {
            beta1: o.splat(k.beta1),
            one_minus_beta1: o.splat(k.one_minus_beta1),
            beta2: o.splat(k.beta2),
            one_minus_beta2: o.splat(k.one_minus_beta2),
            eps1: o.splat(k.eps1),
            eps2: o.splat(k.eps2),
            lr: o.splat(k.lr),
            decay: o.splat(k.decay.unwrap_or(T::zero())),
            one: o.splat(T::one()),
        }
    }
}

/// One element at a time: the operations and coefficients of the tails and small matrices.
#[inline(always)]
pub(crate) fn scalar<T: Float>(k: &Coefficients<T>) -> (Ops<Scalar, T>, Consts<Scalar, T>) {
    let o = Ops::<Scalar, T>::new(Scalar);
    (o, Consts::new(o, k))
}

/// The running average of lines 5, 6, 10, 12 and 13: `β old + (1 - β) x`.
#[inline(always)]
pub(crate) fn ema<S: Simd, T: Float>(
    o: Ops<S, T>,
    old: V<S, T>,
    x: V<S, T>,
    beta: V<S, T>,
    one_minus_beta: V<S, T>,
) -> V<S, T> {
    o.add(o.mul(old, beta), o.mul(one_minus_beta, x))
}

/// A statistic of lines 5, 6, 12, 13 from the sum of its `n` terms: `β old + (1 - β) (sum / n)`.
#[inline(always)]
pub(crate) fn average<T: Float>(old: T, sum: T, n: T, beta: T, one_minus_beta: T) -> T {
    let o = Ops::<Scalar, T>::new(Scalar);
    ema(o, old, sum / n, beta, one_minus_beta)
}

/// `g²`, shared by the statistics' term and the clip norm's weighted term.
#[inline(always)]
pub(crate) fn square<S: Simd, T: Float>(o: Ops<S, T>, g: V<S, T>) -> V<S, T> {
    o.mul(g, g)
}

/// Lines 5-6: the term `g² + ε1` of the squared-gradient statistics, given `g²`.
#[inline(always)]
pub(crate) fn sq_term<S: Simd, T: Float>(o: Ops<S, T>, g_sq: V<S, T>, eps1: V<S, T>) -> V<S, T> {
    o.add(g_sq, eps1)
}

/// Line 9's norm, one element: `g² w_i` with `w_i = 1 / r_i`. Summed over a column `j` it gives
/// `v_j`, and `‖u‖² = mean(r) Σ_j v_j / c_j` ([`norm_from_quotients`]).
#[inline(always)]
pub(crate) fn weighted_term<S: Simd, T: Float>(o: Ops<S, T>, g_sq: V<S, T>, w: V<S, T>) -> V<S, T> {
    o.mul(g_sq, w)
}

/// Lines 8-11 for one element of a factored tensor: the clipped update
/// `û = (rf_d cf) g` (`rf_d`: the row factor divided by the clip divisor), the momentum
/// `m = β1 m + (1 - β1) û`, and the instability term `(û - m)² + ε2`. Returns `(m, term)`.
#[inline(always)]
pub(crate) fn momentum<S: Simd, T: Float>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    (g, m): (V<S, T>, V<S, T>),
    (rf_d, cf): (V<S, T>, V<S, T>),
) -> (V<S, T>, V<S, T>) {
    let u = o.mul(o.mul(rf_d, cf), g);
    let m_new = ema(o, m, u, c.beta1, c.one_minus_beta1);
    let diff = o.sub(u, m_new);
    (m_new, o.add(o.mul(diff, diff), c.eps2))
}

/// Decoupled weight decay, `p - (lr wd) p`; the caller skips it when weight decay is off.
#[inline(always)]
pub(crate) fn decay<S: Simd, T: Float>(o: Ops<S, T>, c: &Consts<S, T>, p: V<S, T>) -> V<S, T> {
    o.sub(p, o.mul(c.decay, p))
}

/// Decoupled weight decay of a parameter stored in `P`, when `DECAY`: `p - (lr wd) p`, rounded
/// to `P` when `round` (a 16-bit parameter rounded to nearest: the reference decays the
/// parameter in place, in its own dtype, before the update). With stochastic rounding the
/// decayed value stays in `T`: rounding it to nearest would undo a decay smaller than half a
/// unit in the last place.
#[inline(always)]
pub(crate) fn decayed<S: Simd, T: Float, P: Element<Compute = T>, const DECAY: bool>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    p: V<S, T>,
    round: bool,
) -> V<S, T> {
    if !DECAY {
        return p;
    }
    let p = decay(o, c, p);
    if round { P::round_vec::<S>(p) } else { p }
}

/// Lines 14-15 for one element of a factored tensor: `p - ((Rf Cf) m) lr` (after weight decay,
/// [`decayed`]); `rf`, `cf` are the confidence factors of the element's row and column.
#[inline(always)]
pub(crate) fn apply<S: Simd, T: Float>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    (p, m): (V<S, T>, V<S, T>),
    (rf, cf): (V<S, T>, V<S, T>),
) -> V<S, T> {
    o.sub(p, o.mul(o.mul(o.mul(rf, cf), m), c.lr))
}

/// Adam's bias correction of a running average that started at zero: `x / (1 - β^t)`
/// ([`crate::Instability::BiasCorrected`] applies it to the instability statistics of lines
/// 12-13).
#[inline(always)]
pub(crate) fn debias<S: Simd, T: Float>(o: Ops<S, T>, x: V<S, T>, bc: V<S, T>) -> V<S, T> {
    o.div(x, bc)
}

/// `1 / sqrt(x)`, rounded as the reference rounds it: a square root, then a division. Gives
/// the factors of lines 7-8 and 14-15 (`rf = rsqrt(r / mean(r))`, `cf = rsqrt(c)`).
#[inline(always)]
pub(crate) fn rsqrt<S: Simd, T: Float>(o: Ops<S, T>, one: V<S, T>, x: V<S, T>) -> V<S, T> {
    o.div(one, o.sqrt(x))
}

/// Lines 5 and 8 for a vector (no factoring): `v = β2 v + (1 - β2)(g² + ε1)` and the unclipped
/// update `u = rsqrt(v) g`. Returns `(v, u)`.
#[inline(always)]
pub(crate) fn vector_second_moment<S: Simd, T: Float>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    (g, v): (V<S, T>, V<S, T>),
) -> (V<S, T>, V<S, T>) {
    let v_new = ema(
        o,
        v,
        sq_term(o, square(o, g), c.eps1),
        c.beta2,
        c.one_minus_beta2,
    );
    (v_new, o.mul(rsqrt(o, c.one, v_new), g))
}

/// Lines 9, 10 and 15 for a vector: the clipped update `u / d` (when `CLIP`), the momentum and
/// `p - m lr` (`p` after weight decay, [`decayed`]). Returns `(m, p)`.
#[inline(always)]
pub(crate) fn vector_update<S: Simd, T: Float, const CLIP: bool>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    (u, d): (V<S, T>, V<S, T>),
    (m, p): (V<S, T>, V<S, T>),
) -> (V<S, T>, V<S, T>) {
    let u = if CLIP { o.div(u, d) } else { u };
    let m_new = ema(o, m, u, c.beta1, c.one_minus_beta1);
    (m_new, o.sub(p, o.mul(m_new, c.lr)))
}

/// 0 for a finite `x`, NaN for NaN and infinities (`x - x`).
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn finite_or_nan<S: Simd, T: Float>(o: Ops<S, T>, x: V<S, T>) -> V<S, T> {
    o.sub(x, x)
}

/// 0 for finite `x` and `y`, NaN when either is NaN or infinite.
#[inline(always)]
pub(crate) fn not_finite<S: Simd, T: Float>(o: Ops<S, T>, x: V<S, T>, y: V<S, T>) -> V<S, T> {
    o.add(finite_or_nan(o, x), finite_or_nan(o, y))
}

/// The mean of row statistics, summed in `f64` and rounded once (lines 7 and 14).
#[inline(always)]
pub(crate) fn row_mean<T: Float>(row: &[T]) -> T {
    let mut sum = 0.0;
    for r in row {
        sum += r.as_f64();
    }
    T::from_f64(sum / row.len() as f64)
}

/// The squared norm of one matrix's unclipped update (line 9), `mean(r) Σ_j q_j`, from its new
/// row statistics `r` and the quotients `q_j = v_j / c_j` of the weighted column sums.
#[inline(always)]
pub(crate) fn norm_from_quotients<T: Float>(row: &[T], q: &[T]) -> f64 {
    norm_from_mean(row_mean(row), q)
}

/// [`norm_from_quotients`] with the mean of the row statistics, `mean(r)`, given.
#[inline(always)]
pub(crate) fn norm_from_mean<T: Float>(mean: T, q: &[T]) -> f64 {
    let mut sum = 0.0;
    for &x in q {
        sum += x.as_f64();
    }
    mean.as_f64() * sum
}

/// `weighted_j = weighted_j / col_j`: the quotients of [`norm_from_quotients`].
#[inline(always)]
pub(crate) fn quotients<T: Float>(weighted: &mut [T], col: &[T]) {
    for (w, &c) in weighted.iter_mut().zip(col) {
        *w = *w / c;
    }
}

/// The clip of one step (line 9): the divisor `d = max(1, rms / clip_threshold)` and the
/// update's RMS before clipping.
#[derive(Clone, Copy, Debug)]
pub struct Clip<T> {
    pub(crate) d: T,
    pub(crate) rms: f64,
}

impl<T: Float> Clip<T> {
    /// No clipping: an empty tensor.
    pub(crate) fn none() -> Self {
        Self {
            d: T::one(),
            rms: 0.0,
        }
    }

    /// The divisor from the squared norm of the update over `numel` elements, as the reference
    /// computes it (`norm / sqrt(numel)`, each rounded to the tensor's dtype).
    pub(crate) fn from_sum_sq(sum_sq: f64, numel: usize, clip_threshold: T) -> Self {
        let norm = num_traits::Float::sqrt(sum_sq);
        let sqrt_n = num_traits::Float::sqrt(numel as f64);
        let rms = T::from_f64(norm) / T::from_f64(sqrt_n);
        let ratio = rms / clip_threshold;
        let d = if ratio > T::one() { ratio } else { T::one() };
        Self {
            d,
            rms: norm / sqrt_n,
        }
    }
}
