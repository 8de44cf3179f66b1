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

use core::marker::PhantomData;

use pulp::Simd;

use crate::came::check_tensor_lens;
use crate::check::scan_gradient;
use crate::config::{check_beta, check_eps, check_lr, check_weight_decay};
use crate::error::Buffer;
use crate::exec::lanes::{ElementItem, element_items};
use crate::exec::prefetch;
use crate::exec::simd::{Ops, Scalar, V};
use crate::exec::{Executor, LaneKernel, Serial, all_or_nothing};
use crate::{Error, Float, Shape, StepInfo, TensorError};

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

    /// Sets the learning rate.
    #[must_use]
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets ε.
    #[must_use]
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
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

/// Length of the AdamW state for a tensor of `dims` (`exp_avg`, then `exp_avg_sq`, each like the
/// parameter), usable in const context to size static arrays.
///
/// ```
/// assert_eq!(came::adamw::state_len(&[4, 3]), 24);
/// static mut STATE: [f32; came::adamw::state_len(&[16, 8])] = [0.0; 256];
/// ```
///
/// # Panics
/// If the size overflows `usize` (at compile time in a const context).
#[must_use]
pub const fn state_len(dims: &[usize]) -> usize {
    let mut numel = 1usize;
    let mut i = 0;
    while i < dims.len() {
        numel = match numel.checked_mul(dims[i]) {
            Some(n) => n,
            None => panic!("state length overflows usize"),
        };
        i += 1;
    }
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
/// as in the reference. The checkpoints of `optim` (feature `std`) refuse such a state on load.
pub fn step<T: Float>(
    config: &AdamWConfig,
    param: &mut [T],
    grad: &[T],
    state: &mut AdamWState<'_, T>,
) -> Result<StepInfo, Error> {
    step_on(&Serial, config, param, grad, state)
}

/// [`step`] with the lanes run by `exec`.
pub(crate) fn step_on<T: Float, E: Executor>(
    exec: &E,
    config: &AdamWConfig,
    param: &mut [T],
    grad: &[T],
    state: &mut AdamWState<'_, T>,
) -> Result<StepInfo, Error> {
    let k = prepare(config, state.step, param, grad, state.data)?;
    finish(exec, &k, param, grad, state.data);
    state.advance();
    Ok(StepInfo {
        step: state.step,
        update_rms: None,
    })
}

/// One tensor of a borrowed AdamW multi-tensor step: its parameter, gradient and state.
#[derive(Debug)]
pub struct TensorStep<'a, 's, T> {
    /// The parameters.
    pub param: &'a mut [T],
    /// The gradient, as long as the parameters.
    pub grad: &'a [T],
    /// The tensor's state, twice as long.
    pub state: &'a mut AdamWState<'s, T>,
}

/// Steps every tensor with one config, without allocating, all or nothing: the same rule as
/// [`crate::step_all`]. Every length and every gradient is checked first (a NaN, an infinity,
/// a square that overflows); if any tensor fails, nothing at all is changed.
///
/// ```
/// use came::adamw::{self, AdamWConfig, AdamWState, TensorStep};
/// let (mut w, mut b) = ([0.5f32; 12], [0.1f32; 3]);
/// let (mut sw, mut sb) = ([0.0f32; adamw::state_len(&[4, 3])], [0.0f32; adamw::state_len(&[3])]);
/// let (mut state_w, mut state_b) = (AdamWState::new(&mut sw), AdamWState::new(&mut sb));
/// let (gw, gb) = ([0.1f32; 12], [0.2f32; 3]);
/// let mut tensors = [
///     TensorStep { param: &mut w, grad: &gw, state: &mut state_w },
///     TensorStep { param: &mut b, grad: &gb, state: &mut state_b },
/// ];
/// adamw::step_all(&AdamWConfig::new(1e-2), &mut tensors)?;
/// assert_eq!(state_b.step_count(), 1);
/// # Ok::<(), came::TensorError>(())
/// ```
///
/// # Errors
/// The error of the first failing tensor, with its position; nothing was changed.
pub fn step_all<T: Float>(
    config: &AdamWConfig,
    tensors: &mut [TensorStep<'_, '_, T>],
) -> Result<(), TensorError> {
    step_all_on(&Serial, config, tensors)
}

/// [`step_all`] with tensors and lanes run by `exec`.
pub(crate) fn step_all_on<T: Float, E: Executor>(
    exec: &E,
    config: &AdamWConfig,
    tensors: &mut [TensorStep<'_, '_, T>],
) -> Result<(), TensorError> {
    let failed = all_or_nothing(
        exec,
        tensors,
        true,
        |_, t| prepare(config, t.state.step, t.param, t.grad, t.state.data).map(|_| ()),
        |_, t| {
            let k = Coefficients::new(config, t.state.step.saturating_add(1));
            finish(exec, &k, t.param, t.grad, t.state.data);
            t.state.advance();
            Ok(())
        },
        |_| {},
    );
    failed.map_or(Ok(()), |(tensor, error)| Err(TensorError { tensor, error }))
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
    if scan_gradient(grad)?.0 {
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

/// The update's coefficients as vectors of `S`.
#[derive(Clone, Copy)]
struct Consts<S: Simd, T: Float> {
    weight: V<S, T>,
    one_minus_weight: V<S, T>,
    beta2: V<S, T>,
    one_minus_beta2: V<S, T>,
    bias_correction2_sqrt: V<S, T>,
    eps: V<S, T>,
    neg_step_size: V<S, T>,
    decay_factor: V<S, T>,
}

impl<S: Simd, T: Float> Consts<S, T> {
    #[inline(always)]
    fn new(o: Ops<S, T>, k: &Coefficients<T>) -> Self {
        let one = T::one();
        Self {
            weight: o.splat(k.lerp_weight),
            one_minus_weight: o.splat(one - k.lerp_weight),
            beta2: o.splat(k.beta2),
            one_minus_beta2: o.splat(k.one_minus_beta2),
            bias_correction2_sqrt: o.splat(k.bias_correction2_sqrt),
            eps: o.splat(k.eps),
            neg_step_size: o.splat(k.neg_step_size),
            decay_factor: o.splat(k.decay_factor.unwrap_or(one)),
        }
    }
}

/// AdamW for one element (or one vector of elements): `(p, g, m, v)` in, `(p, m, v)` out. `SMALL`: torch's
/// lerp form for a weight under 0.5 (the form that is exact at the end closer to the weight).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn element<S: Simd, T: Float, const SMALL: bool, const DECAY: bool>(
    o: Ops<S, T>,
    c: &Consts<S, T>,
    (p, g, m, v): (V<S, T>, V<S, T>, V<S, T>, V<S, T>),
) -> (V<S, T>, V<S, T>, V<S, T>) {
    let diff = o.sub(g, m);
    let m_new = if SMALL {
        o.add(m, o.mul(c.weight, diff))
    } else {
        o.sub(g, o.mul(diff, c.one_minus_weight))
    };
    let v_new = o.add(o.mul(v, c.beta2), o.mul(o.mul(c.one_minus_beta2, g), g));
    let denom = o.add(o.div(o.sqrt(v_new), c.bias_correction2_sqrt), c.eps);
    let p = if DECAY { o.mul(p, c.decay_factor) } else { p };
    let p_new = o.add(p, o.div(o.mul(c.neg_step_size, m_new), denom));
    (p_new, m_new, v_new)
}

/// The fused element-wise update over a lane: vectors, then the tail one element at a time.
#[inline(always)]
fn apply<S: Simd, T: Float, const SMALL: bool, const DECAY: bool>(
    o: Ops<S, T>,
    k: &Coefficients<T>,
    (p, g, m, v): (&mut [T], &[T], &mut [T], &mut [T]),
) {
    let (pv, pt) = T::as_mut_simd::<S>(p);
    let (gv, gt) = T::as_simd::<S>(g);
    let (mv, mt) = T::as_mut_simd::<S>(m);
    let (vv, vt) = T::as_mut_simd::<S>(v);
    let c = Consts::new(o, k);
    let n = pv.len().min(gv.len()).min(mv.len()).min(vv.len());
    let (pv, gv, mv, vv) = (&mut pv[..n], &gv[..n], &mut mv[..n], &mut vv[..n]);
    for i in 0..n {
        prefetch::ahead(&*pv, i);
        prefetch::ahead(gv, i);
        prefetch::ahead(&*mv, i);
        prefetch::ahead(&*vv, i);
        (pv[i], mv[i], vv[i]) = element::<S, T, SMALL, DECAY>(o, &c, (pv[i], gv[i], mv[i], vv[i]));
    }
    let s = Ops::<Scalar, T>::new(Scalar);
    let c = Consts::new(s, k);
    for (((p, &g), m), v) in pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut()) {
        (*p, *m, *v) = element::<Scalar, T, SMALL, DECAY>(s, &c, (*p, g, *m, *v));
    }
}
