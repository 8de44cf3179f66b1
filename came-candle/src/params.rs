//! Hyperparameters and parameter groups, as candle users write them.

use came::{CameConfig, Instability, Momentum, Rounding};
use candle::Var;
use candle_nn::VarMap;

/// CAME's hyperparameters for a group of vars, written like candle's `ParamsAdamW`:
/// `ParamsCame { lr: 1e-3, ..Default::default() }`.
///
/// `Default` holds the reference defaults of came-pytorch 0.1.3 (betas (0.9, 0.999, 0.9999),
/// eps (1e-30, 1e-16), clip threshold 1.0, no weight decay) and lr = 2e-4 (the reference has no
/// default lr; the authors suggest 0.5-0.9x the AdamW learning rate of the same model), with
/// the reference's rounding of 16-bit vars (to nearest) and full-precision momentum.
///
/// ```
/// use came_candle::ParamsCame;
/// let params = ParamsCame { lr: 1e-3, weight_decay: 0.01, ..Default::default() };
/// let config = params.config();
/// assert_eq!(config.betas, (0.9, 0.999, 0.9999));
/// assert_eq!(config.weight_decay, 0.01);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamsCame {
    /// Learning rate; finite and > 0.
    pub lr: f64,
    /// Decay of the momentum, in `(0, 1)`.
    pub beta1: f64,
    /// Decay of the squared-gradient statistics, in `[0, 1)`.
    pub beta2: f64,
    /// Decay of the instability statistics (the confidence term), in `[0, 1)`.
    pub beta3: f64,
    /// Added to the squared gradient; finite and >= 0.
    pub eps1: f64,
    /// Added to the squared instability; finite and > 0.
    pub eps2: f64,
    /// Threshold on the root mean square of a var's update; a larger update is scaled down to
    /// it. Finite and > 0.
    pub clip_threshold: f64,
    /// Decoupled weight decay, `w -= lr * weight_decay * w`; finite and >= 0.
    pub weight_decay: f64,
    /// CAME's confidence term (`true`, the reference); `false` gives the paper's Adafactor
    /// baseline (then `beta1 = 0` is allowed, and `beta3`, `eps2` are unused).
    pub confidence: bool,
    /// How the instability statistics start: [`Instability::Reference`] (zeros, uncorrected,
    /// as came-pytorch: the first steps are inflated by `1 / sqrt(1 - beta3^t)`, 100x at the
    /// first) or [`Instability::BiasCorrected`] (Adam's bias correction; see
    /// [`came::Instability`]).
    pub instability: Instability,
    /// How updated BF16 and F16 vars are rounded ([`Rounding::Nearest`], the reference's, or
    /// [`Rounding::Stochastic`]); no effect on F32 and F64 vars.
    pub rounding: Rounding,
    /// How the momentum of the group's large matrices is stored ([`Momentum::Full`], the
    /// reference's, or packed in bf16 or 8 bits; see [`came::momentum`]). Packed momentum
    /// needs F32, BF16 or F16 vars.
    pub momentum: Momentum,
}

impl Default for ParamsCame {
    fn default() -> Self {
        Self::from(CameConfig::default())
    }
}

impl ParamsCame {
    /// The core crate's config of these hyperparameters (all but the momentum's format, which
    /// the core sets per tensor).
    #[must_use]
    pub fn config(&self) -> CameConfig {
        CameConfig::default()
            .with_lr(self.lr)
            .with_betas(self.beta1, self.beta2, self.beta3)
            .with_eps(self.eps1, self.eps2)
            .with_clip_threshold(self.clip_threshold)
            .with_weight_decay(self.weight_decay)
            .with_confidence(self.confidence)
            .with_instability(self.instability)
            .with_rounding(self.rounding)
    }
}

impl From<CameConfig> for ParamsCame {
    /// The hyperparameters of a core config, with full-precision momentum.
    fn from(c: CameConfig) -> Self {
        Self {
            lr: c.lr,
            beta1: c.betas.0,
            beta2: c.betas.1,
            beta3: c.betas.2,
            eps1: c.eps.0,
            eps2: c.eps.1,
            clip_threshold: c.clip_threshold,
            weight_decay: c.weight_decay,
            confidence: c.confidence,
            instability: c.instability,
            rounding: c.rounding,
            momentum: Momentum::Full,
        }
    }
}

/// Vars that share hyperparameters, like a PyTorch parameter group: for example the weight
/// matrices with weight decay, and the biases and norms without.
///
/// Vars are best given with their names ([`ParamGroup::named`], [`named_vars`]): the names go
/// into checkpoints, which are matched by name on loading. A var given without one
/// ([`ParamGroup::new`]) is named `var.<i>`, `i` its position in registration order.
///
/// ```
/// use came_candle::{named_vars, ParamGroup, ParamsCame};
/// # let varmap = candle_nn::VarMap::new();
/// let lr = 1e-3;
/// let (matrices, others): (Vec<_>, Vec<_>) =
///     named_vars(&varmap).into_iter().partition(|(_, var)| var.rank() >= 2);
/// let groups = [
///     ParamGroup::named(matrices, ParamsCame { lr, weight_decay: 0.1, ..Default::default() }),
///     ParamGroup::named(others, ParamsCame { lr, ..Default::default() }),
/// ];
/// # let _ = groups;
/// ```
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub(crate) vars: Vec<(Option<String>, Var)>,
    pub(crate) params: ParamsCame,
}

impl ParamGroup {
    /// A group of unnamed vars (each named `var.<i>` when registered).
    #[must_use]
    pub fn new(vars: impl IntoIterator<Item = Var>, params: ParamsCame) -> Self {
        Self {
            vars: vars.into_iter().map(|v| (None, v)).collect(),
            params,
        }
    }

    /// A group of named vars.
    #[must_use]
    pub fn named<S: Into<String>>(
        vars: impl IntoIterator<Item = (S, Var)>,
        params: ParamsCame,
    ) -> Self {
        Self {
            vars: vars.into_iter().map(|(n, v)| (Some(n.into()), v)).collect(),
            params,
        }
    }

    /// The group's hyperparameters.
    #[must_use]
    pub fn params(&self) -> &ParamsCame {
        &self.params
    }

    /// Number of vars in the group.
    #[must_use]
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether the group has no var.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

/// A `VarMap`'s vars with their names, sorted by name: the same order in every process (the
/// order of `VarMap::all_vars` is that of a `HashMap` and changes from run to run).
///
/// # Panics
/// If the `VarMap`'s lock is poisoned (a thread panicked while changing it).
#[must_use]
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("the VarMap's lock is poisoned");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
