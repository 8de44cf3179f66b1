//! CAME's hyperparameters.

use crate::{Error, Float};

/// CAME's hyperparameters, held as `f64` like the reference's Python floats.
///
/// `Default` holds the reference defaults of came-pytorch 0.1.3 (ε = (1e-30, 1e-16), clip
/// threshold 1.0, betas (0.9, 0.999, 0.9999), no weight decay) and lr = 2e-4, a common choice: the
/// authors suggest 0.5-0.9x the AdamW learning rate of the same model.
///
/// ```
/// let config = came::CameConfig::default().with_lr(1e-3).with_weight_decay(0.01);
/// assert!(config.validate().is_ok());
/// // the paper's Adafactor baseline: the same step without the confidence term
/// let adafactor = config.with_confidence(false);
/// assert!(adafactor.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CameConfig {
    /// Learning rate; finite and > 0.
    pub lr: f64,
    /// (β1, β2, β3): decay of the momentum, of the squared-gradient statistics and of the
    /// instability statistics. Each in `[0, 1)`, and β1 > 0.
    pub betas: (f64, f64, f64),
    /// (ε1, ε2): added to the squared gradient and to the squared instability; finite and >= 0.
    pub eps: (f64, f64),
    /// Threshold on the root mean square of the update; a larger update is scaled down to it.
    /// Finite and > 0.
    pub clip_threshold: f64,
    /// Decoupled weight decay: `p -= lr * weight_decay * p` before the update. Finite and >= 0.
    pub weight_decay: f64,
    /// CAME's confidence term (default `true`). `false` gives the paper's Adafactor baseline:
    /// the momentum of the clipped factored update is applied as it is (`p -= lr * m`), the
    /// instability statistics stay zero and β3, ε2 are unused; β1 = 0 is then allowed (no
    /// momentum, Adafactor as first published). Vectors have no confidence term either way.
    pub confidence: bool,
    /// How the instability statistics start (default [`Instability::Reference`], the
    /// reference's zeros without correction). Only with the confidence term.
    pub instability: Instability,
    /// How a 16-bit parameter (`half::bf16`, `half::f16`) is rounded when the update is written
    /// back (default [`Rounding::Nearest`], the reference's). No effect on `f32` and `f64`
    /// parameters, which are never rounded.
    pub rounding: Rounding,
}

/// How updated 16-bit parameters are rounded to their storage type.
///
/// Near convergence an update is often smaller than half a unit in the last place of a bf16
/// weight (2^-9 relative), and rounding to nearest then drops it every time: training stalls.
/// Stochastic rounding keeps every update on average (Gupta et al., *Deep Learning with Limited
/// Numerical Precision*, ICML 2015; Zamirai et al., arXiv:2010.06192, for bf16 training).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rounding {
    /// To nearest, ties to even, after the weight decay and again after the update: exactly
    /// what came-pytorch 0.1.3 does with 16-bit parameters.
    #[default]
    Nearest,
    /// Once, after decay and update together, to one of the two neighbouring 16-bit values,
    /// the upper with probability equal to the value's distance from the lower one (in units of
    /// their gap): unbiased. The random bits of element `i` are a counter-based function of
    /// `(seed, tensor, step, i)` (`SplitMix64`'s finalizer), where `tensor` is the tensor's
    /// position in the step (registration order in the owned optimizer, the slice position in
    /// [`crate::step_all`], 0 in [`crate::step`]) and `step` the state's step count before the
    /// step: results are identical for any thread count and on resume from a checkpoint.
    Stochastic {
        /// The run's seed.
        seed: u64,
    },
}

/// How CAME's instability statistics `R`, `C` (lines 12-13 of Algorithm 1) start.
///
/// The reference starts them at zero and never corrects that bias, so for the first steps they
/// are a fraction `1 - β3^t` of their value and every step is inflated by `1 / sqrt(1 - β3^t)`:
/// 100x at the first step, 5.8x at step 300 and still 1.5x at step 6,000 with the default
/// β3 = 0.9999. The correction is opt-in so that the default reproduces the reference exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Instability {
    /// Zeros, uncorrected, as came-pytorch 0.1.3 (and the paper's code) does.
    #[default]
    Reference,
    /// Zeros with Adam's bias correction: the confidence uses `R / (1 - β3^t)` and
    /// `C / (1 - β3^t)`, so the statistics are unbiased from the first step; the state keeps
    /// the uncorrected averages (checkpoints stay the reference's). Measured on the main job
    /// with the reference β3 = 0.9999 against the other candidate, starting the statistics at
    /// one (a change proposed upstream): 1.8621 against 1.8665 validation loss at their best
    /// learning rates, AdamW 1.8443 (README, "Shakespeare").
    BiasCorrected,
}

impl Default for CameConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            betas: (0.9, 0.999, 0.9999),
            eps: (1e-30, 1e-16),
            clip_threshold: 1.0,
            weight_decay: 0.0,
            confidence: true,
            instability: Instability::Reference,
            rounding: Rounding::Nearest,
        }
    }
}

impl CameConfig {
    /// The defaults with the given learning rate.
    #[must_use]
    pub fn new(lr: f64) -> Self {
        Self::default().with_lr(lr)
    }

    /// Sets the learning rate.
    #[must_use]
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets (β1, β2, β3).
    #[must_use]
    pub fn with_betas(mut self, beta1: f64, beta2: f64, beta3: f64) -> Self {
        self.betas = (beta1, beta2, beta3);
        self
    }

    /// Sets (ε1, ε2).
    #[must_use]
    pub fn with_eps(mut self, eps1: f64, eps2: f64) -> Self {
        self.eps = (eps1, eps2);
        self
    }

    /// Sets the clip threshold.
    #[must_use]
    pub fn with_clip_threshold(mut self, clip_threshold: f64) -> Self {
        self.clip_threshold = clip_threshold;
        self
    }

    /// Sets the decoupled weight decay.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Turns CAME's confidence term on (the default) or off (the Adafactor baseline).
    #[must_use]
    pub fn with_confidence(mut self, confidence: bool) -> Self {
        self.confidence = confidence;
        self
    }

    /// Sets how 16-bit parameters are rounded ([`Rounding`]).
    #[must_use]
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Sets how the instability statistics start (see [`Instability`]).
    #[must_use]
    pub fn with_instability(mut self, instability: Instability) -> Self {
        self.instability = instability;
        self
    }

    /// Checks every hyperparameter.
    ///
    /// # Errors
    /// The first problem found, in field order: [`Error::InvalidLearningRate`],
    /// [`Error::InvalidBeta`], [`Error::ZeroBeta1`] (only with the confidence term on),
    /// [`Error::InvalidEpsilon`],
    /// [`Error::InvalidClipThreshold`], [`Error::InvalidWeightDecay`].
    pub fn validate(&self) -> Result<(), Error> {
        check_lr(self.lr)?;
        let (b1, b2, b3) = self.betas;
        for (index, value) in [b1, b2, b3].into_iter().enumerate() {
            check_beta(index, value)?;
        }
        if b1 == 0.0 && self.confidence {
            return Err(Error::ZeroBeta1);
        }
        check_eps(0, self.eps.0)?;
        check_eps(1, self.eps.1)?;
        if self.confidence && self.eps.1 == 0.0 {
            // a zero gradient would make the confidence factors 0 / 0
            return Err(Error::InvalidEpsilon {
                index: 1,
                value: self.eps.1,
            });
        }
        if !(self.clip_threshold.is_finite() && self.clip_threshold > 0.0) {
            return Err(Error::InvalidClipThreshold(self.clip_threshold));
        }
        check_weight_decay(self.weight_decay)
    }
}

pub(crate) fn check_lr(lr: f64) -> Result<(), Error> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidLearningRate(lr))
    }
}

pub(crate) fn check_beta(index: usize, value: f64) -> Result<(), Error> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidBeta { index, value })
    }
}

pub(crate) fn check_eps(index: usize, value: f64) -> Result<(), Error> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidEpsilon { index, value })
    }
}

pub(crate) fn check_weight_decay(value: f64) -> Result<(), Error> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidWeightDecay(value))
    }
}

/// The coefficients of one step, rounded to the element type once.
///
/// The reference takes hyperparameters as Python floats, so `1 - β` and `lr * weight_decay` are
/// computed in `f64` and only then rounded to the tensor's dtype; doing that subtraction in `f32`
/// moves `1 - β3` by 1.7e-4 relative, far outside the reference tolerances.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coefficients<T> {
    pub beta1: T,
    pub beta2: T,
    pub beta3: T,
    pub one_minus_beta1: T,
    pub one_minus_beta2: T,
    pub one_minus_beta3: T,
    pub eps1: T,
    pub eps2: T,
    pub clip_threshold: T,
    pub lr: T,
    /// `lr * weight_decay`, or `None` when weight decay is off (the reference skips it then).
    pub decay: Option<T>,
    /// the confidence term is on
    pub confidence: bool,
    /// `1 - β3^t` for this step `t` when the instability statistics are bias-corrected
    pub bias_correction3: Option<T>,
    /// The stochastic-rounding key of this tensor and step; `None`: round to nearest.
    pub rounding_key: Option<u64>,
}

impl<T: Float> Coefficients<T> {
    /// The coefficients of a step after `steps` steps of the tensor.
    pub(crate) fn new(config: &CameConfig, steps: u64) -> Self {
        let (b1, b2, b3) = config.betas;
        let t = steps.saturating_add(1);
        Self {
            beta1: T::from_f64(b1),
            beta2: T::from_f64(b2),
            beta3: T::from_f64(b3),
            one_minus_beta1: T::from_f64(1.0 - b1),
            one_minus_beta2: T::from_f64(1.0 - b2),
            one_minus_beta3: T::from_f64(1.0 - b3),
            eps1: T::from_f64(config.eps.0),
            eps2: T::from_f64(config.eps.1),
            clip_threshold: T::from_f64(config.clip_threshold),
            lr: T::from_f64(config.lr),
            decay: (config.weight_decay != 0.0)
                .then(|| T::from_f64(config.weight_decay * config.lr)),
            confidence: config.confidence,
            bias_correction3: (config.instability == Instability::BiasCorrected).then(|| {
                // in f64, like the reference's Python floats (AdamW's bias corrections)
                T::from_f64(1.0 - libm::pow(b3, t as f64))
            }),
            rounding_key: None,
        }
    }

    /// Refuses hyperparameters that are valid numbers but not in `T`: a learning rate or a
    /// weight decay whose product overflows to infinity, a clip threshold that underflows to
    /// zero, and (with the confidence term) an ε2 for which `(1 - β3) ε2` underflows to zero,
    /// where a zero gradient would make the confidence factors `0 / 0` (NaN parameters).
    pub(crate) fn check(&self, config: &CameConfig) -> Result<(), Error> {
        let zero = T::zero();
        if !self.lr.is_finite() || !self.decay.is_none_or(num_traits::Float::is_finite) {
            return Err(Error::InvalidLearningRate(config.lr));
        }
        if self.clip_threshold <= zero || !self.clip_threshold.is_finite() {
            return Err(Error::InvalidClipThreshold(config.clip_threshold));
        }
        if self.confidence && self.one_minus_beta3 * self.eps2 <= zero {
            return Err(Error::InvalidEpsilon {
                index: 1,
                value: config.eps.1,
            });
        }
        Ok(())
    }

    /// These coefficients for tensor number `tensor` of a step: with its stochastic-rounding
    /// key when `config` asks for stochastic rounding.
    pub(crate) fn for_tensor(mut self, config: &CameConfig, steps: u64, tensor: usize) -> Self {
        if let Rounding::Stochastic { seed } = config.rounding {
            self.rounding_key = Some(crate::element::rounding_key(seed, tensor, steps));
        }
        self
    }
}
