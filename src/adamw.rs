//! AdamW on the same borrowed-slice API, the baseline CAME is compared against.
//!
//! The update is `torch.optim.AdamW`'s (bias correction on), operation for operation:
//!
//! ```text
//! p = p * (1 - lr * weight_decay)
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 v + (1 - beta2) g g
//! p = p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```

use crate::config::{check_beta, check_eps, check_lr, check_weight_decay};
use core::marker::PhantomData;

use crate::error::Buffer;
use crate::lanes::{ElementItem, Executor, LaneKernel, Serial, element_items};
use crate::simd::Ops;
use crate::step::check_tensor_lens;
use crate::{Error, Float, Shape};

pub(crate) use coefficients::Coefficients;

mod coefficients {
    use super::AdamWConfig;
    use crate::Float;

    /// One step's coefficients in `T`, derived in `f64` like the reference's Python floats.
    #[derive(Clone, Copy, Debug)]
    pub struct Coefficients<T> {
        pub(super) decay_factor: Option<T>,
        pub(super) lerp_weight: T,
        pub(super) lerp_small: bool,
        pub(super) beta2: T,
        pub(super) one_minus_beta2: T,
        pub(super) bias_correction2_sqrt: T,
        pub(super) eps: T,
        pub(super) neg_step_size: T,
    }

    impl<T: Float> Coefficients<T> {
        pub(crate) fn new(config: &AdamWConfig, step: u64) -> Self {
            let (b1, b2) = config.betas;
            let t = step as f64;
            let bias_correction1 = 1.0 - libm::pow(b1, t);
            let bias_correction2 = 1.0 - libm::pow(b2, t);
            let weight = 1.0 - b1;
            Self {
                decay_factor: (config.weight_decay != 0.0)
                    .then(|| T::from_f64(1.0 - config.lr * config.weight_decay)),
                lerp_weight: T::from_f64(weight),
                lerp_small: T::from_f64(weight).abs() < T::from_f64(0.5),
                beta2: T::from_f64(b2),
                one_minus_beta2: T::from_f64(1.0 - b2),
                bias_correction2_sqrt: T::from_f64(num_traits::Float::sqrt(bias_correction2)),
                eps: T::from_f64(config.eps),
                neg_step_size: T::from_f64(-(config.lr / bias_correction1)),
            }
        }
    }
}

/// AdamW's hyperparameters; `Default` holds `torch.optim.AdamW`'s defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate; finite and > 0.
    pub lr: f64,
    /// (β1, β2), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the denominator; finite and >= 0.
    pub eps: f64,
    /// Decoupled weight decay; finite and >= 0.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// The defaults with the given learning rate.
    #[must_use]
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            ..Self::default()
        }
    }

    /// Sets the weight decay.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets (β1, β2).
    #[must_use]
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    /// Checks every hyperparameter.
    ///
    /// # Errors
    /// The first problem found: [`Error::InvalidLearningRate`], [`Error::InvalidBeta`],
    /// [`Error::InvalidEpsilon`] (index 0), [`Error::InvalidWeightDecay`].
    pub fn validate(&self) -> Result<(), Error> {
        check_lr(self.lr)?;
        check_beta(0, self.betas.0)?;
        check_beta(1, self.betas.1)?;
        check_eps(0, self.eps)?;
        check_weight_decay(self.weight_decay)
    }
}

/// Length of the AdamW state for a tensor of `numel` elements (`exp_avg`, then `exp_avg_sq`).
///
/// # Panics
/// If `2 * numel` overflows `usize` (at compile time in a const context).
#[must_use]
pub const fn state_len(numel: usize) -> usize {
    match numel.checked_mul(2) {
        Some(n) => n,
        None => panic!("state length overflows usize"),
    }
}

/// AdamW state for one tensor: a view over `2 * numel` caller-owned values (`exp_avg`, then
/// `exp_avg_sq`) plus the step count. A zeroed buffer is a fresh optimizer.
#[derive(Debug)]
pub struct AdamWState<'a, T> {
    data: &'a mut [T],
    step: u64,
}

impl<'a, T: Float> AdamWState<'a, T> {
    /// A fresh state: zeroes `data` and sets the step count to 0.
    pub fn new(data: &'a mut [T]) -> Self {
        data.fill(T::zero());
        Self { data, step: 0 }
    }

    /// Resumes from a buffer that already holds state, after `step` steps.
    pub fn from_parts(data: &'a mut [T], step: u64) -> Self {
        Self { data, step }
    }

    /// Gives back the buffer and the step count.
    #[must_use]
    pub fn into_parts(self) -> (&'a mut [T], u64) {
        (self.data, self.step)
    }

    pub(crate) fn advance(&mut self) {
        self.step = self.step.saturating_add(1);
    }

    /// Number of successful steps taken with this state.
    #[must_use]
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// `(exp_avg, exp_avg_sq)`, the reference's names.
    #[must_use]
    pub fn parts(&self) -> (&[T], &[T]) {
        self.data.split_at(self.data.len() / 2)
    }

    /// `(exp_avg, exp_avg_sq)`, writable.
    pub fn parts_mut(&mut self) -> (&mut [T], &mut [T]) {
        let half = self.data.len() / 2;
        self.data.split_at_mut(half)
    }
}

/// Applies one AdamW step to one tensor, in place, without allocating.
///
/// `param` and `grad` have the same length `n`; `state` views `2 n` values.
///
/// # Errors
/// - a config error from [`AdamWConfig::validate`];
/// - [`Error::LengthMismatch`] if `grad` or the state does not match `param`;
/// - [`Error::NonFiniteGradient`] if `grad` holds a NaN or an infinity (found by a read-only
///   pass before anything is written);
/// - [`Error::NonFiniteUpdate`] if the square of a gradient element overflows `T`
///   (`|g| > 1.8e19` in `f32`): the reference would store an infinite second moment that
///   freezes the element for good.
///
/// On every error nothing is changed. The state itself is not scanned (that would be a full
/// extra read of `2 n` values per step): a NaN written into it by hand reaches the parameters,
/// as in the reference. [`crate::optim`] checkpoints refuse such a state on load.
pub fn step<T: Float>(
    config: &AdamWConfig,
    param: &mut [T],
    grad: &[T],
    state: &mut AdamWState<'_, T>,
) -> Result<u64, Error> {
    step_on(&Serial, config, param, grad, state)
}

/// [`step`] with the lanes run by `exec`.
pub(crate) fn step_on<T: Float, E: Executor>(
    exec: &E,
    config: &AdamWConfig,
    param: &mut [T],
    grad: &[T],
    state: &mut AdamWState<'_, T>,
) -> Result<u64, Error> {
    let k = prepare(config, state.step, param, grad, state.data)?;
    finish(exec, &k, param, grad, state.data);
    state.advance();
    Ok(state.step)
}

/// Validates a step, checks the gradient and returns the step's coefficients; nothing is
/// changed. `step` is the number of steps taken before this one.
pub(crate) fn prepare<T: Float>(
    config: &AdamWConfig,
    step: u64,
    param: &[T],
    grad: &[T],
    state: &[T],
) -> Result<Coefficients<T>, Error> {
    config.validate()?;
    let n = param.len();
    check_tensor_lens(n, n, grad.len())?;
    if state.len() != 2 * n {
        return Err(Error::LengthMismatch {
            buffer: Buffer::State,
            expected: 2 * n,
            actual: state.len(),
        });
    }
    if crate::multi::scan_gradient(grad)?.0 {
        return Err(Error::NonFiniteUpdate);
    }
    Ok(Coefficients::new(config, step.saturating_add(1)))
}

/// The update, on lanes of elements run by `exec`.
pub(crate) fn finish<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) {
    let n = param.len();
    let lanes = Shape::vector(n).map_or(1, |s| s.lanes());
    let mut items = element_items((param, grad), state.split_at_mut(n), lanes);
    exec.run(&Kernel(*k, PhantomData), &mut items);
}

/// The fused element-wise update as a lane kernel: one chunk of the tensor per item.
pub(crate) struct Kernel<'a, T>(pub Coefficients<T>, pub PhantomData<&'a ()>);

impl<'a, T: Float> LaneKernel for Kernel<'a, T> {
    /// parameters, gradient, momentum, second moment
    type Item = ElementItem<'a, T>;

    #[inline(always)]
    fn run<S: pulp::Simd>(&self, simd: S, (p, g, m, v): &mut Self::Item) {
        let o = Ops::new(simd);
        let k = &self.0;
        let data = (&mut **p, &**g, &mut **m, &mut **v);
        match (k.lerp_small, k.decay_factor.is_some()) {
            (true, false) => apply::<S, T, true, false>(o, k, data),
            (true, true) => apply::<S, T, true, true>(o, k, data),
            (false, false) => apply::<S, T, false, false>(o, k, data),
            (false, true) => apply::<S, T, false, true>(o, k, data),
        }
    }
}

/// The fused element-wise update; `SMALL`: torch's lerp form for a weight under 0.5.
#[inline(always)]
fn apply<S: pulp::Simd, T: Float, const SMALL: bool, const DECAY: bool>(
    o: Ops<S, T>,
    k: &Coefficients<T>,
    (p, g, m, v): (&mut [T], &[T], &mut [T], &mut [T]),
) {
    let one = T::one();
    let decay = k.decay_factor.unwrap_or(one);
    let w = k.lerp_weight;
    let one_minus_w = one - w;
    // torch's lerp: the form that is exact at the end closer to the weight
    let lerp = |m: T, g: T| {
        if SMALL {
            m + w * (g - m)
        } else {
            g - (g - m) * one_minus_w
        }
    };
    let (pv, pt) = T::as_mut_simd::<S>(p);
    let (gv, gt) = T::as_simd::<S>(g);
    let (mv, mt) = T::as_mut_simd::<S>(m);
    let (vv, vt) = T::as_mut_simd::<S>(v);
    let (wv, omwv, b2, omb2) = (
        o.splat(w),
        o.splat(one_minus_w),
        o.splat(k.beta2),
        o.splat(k.one_minus_beta2),
    );
    let (bc2, eps, neg_step, decayv) = (
        o.splat(k.bias_correction2_sqrt),
        o.splat(k.eps),
        o.splat(k.neg_step_size),
        o.splat(decay),
    );
    for (((p, &g), m), v) in pv.iter_mut().zip(gv).zip(mv.iter_mut()).zip(vv.iter_mut()) {
        let diff = o.sub(g, *m);
        let mn = if SMALL {
            o.add(*m, o.mul(wv, diff))
        } else {
            o.sub(g, o.mul(diff, omwv))
        };
        *m = mn;
        let vn = o.add(o.mul(*v, b2), o.mul(o.mul(omb2, g), g));
        *v = vn;
        let denom = o.add(o.div(o.sqrt(vn), bc2), eps);
        let pn = if DECAY { o.mul(*p, decayv) } else { *p };
        *p = o.add(pn, o.div(o.mul(neg_step, mn), denom));
    }
    for (((p, &g), m), v) in pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut()) {
        let mn = lerp(*m, g);
        *m = mn;
        let vn = *v * k.beta2 + k.one_minus_beta2 * g * g;
        *v = vn;
        let denom = vn.sqrt() / k.bias_correction2_sqrt + k.eps;
        let pn = if DECAY { *p * decay } else { *p };
        *p = pn + k.neg_step_size * mn / denom;
    }
}
