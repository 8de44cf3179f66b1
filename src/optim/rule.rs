//! What the owned optimizer needs of an update rule: CAME's and AdamW's configs implement it.

use serde_json::{Value, json};

use crate::adamw::{self, AdamWConfig};
use crate::came::formula::Clip;
use crate::came::{finish, prepare};
use crate::exec::Executor;
use crate::{CameConfig, Error, Float, Instability, Layout, Shape, StateLayout};

/// An update rule the owned optimizers can run: [`CameConfig`] for CAME, [`AdamWConfig`] for
/// AdamW. The config of a parameter group is the rule's hyperparameters.
///
/// Sealed: the optimizer relies on each rule's state layout and checkpoint keys.
pub trait Rule:
    sealed::RuleImpl + Copy + core::fmt::Debug + PartialEq + Send + Sync + 'static
{
}

impl Rule for CameConfig {}
impl Rule for AdamWConfig {}

pub mod sealed {
    use super::{Executor, Float, Shape, StateLayout, Value};
    use crate::Error;

    pub trait RuleImpl: Sized {
        /// The `optimizer` value of a checkpoint.
        const NAME: &'static str;

        /// What the first half of a step leaves for the second.
        type Pending<T: Float>: Copy + Send + Sync + core::fmt::Debug;

        fn validate(&self) -> Result<(), Error>;
        fn lr(&self) -> f64;
        fn set_lr(&mut self, lr: f64);

        /// Where each piece of a tensor's state lives, with the reference's names; `None` when
        /// its length overflows `usize`.
        fn state_layout(shape: &Shape) -> Option<StateLayout>;

        /// The update's RMS before clipping and whether it was clipped, where the rule
        /// measures them.
        fn measured<T: Float>(pending: &Self::Pending<T>) -> Option<(f64, bool)>;

        /// The first half of a step: checks and statistics that change nothing but scratch
        /// space. `step` counts the steps taken before this one.
        fn prepare<T: Float, E: Executor>(
            &self,
            exec: &E,
            shape: &Shape,
            data: (&mut [T], &[T]),
            state: &mut [T],
            step: u64,
        ) -> Result<Self::Pending<T>, Error>;

        /// The second half: the update. `step` counts the steps taken before this one.
        fn finish<T: Float, E: Executor>(
            &self,
            exec: &E,
            shape: &Shape,
            pending: Self::Pending<T>,
            data: (&mut [T], &[T]),
            state: &mut [T],
            step: u64,
        ) -> Result<(), Error>;

        fn to_json(&self) -> Value;
        fn from_json(value: &Value) -> Option<Self>;
    }
}

/// The checkpoint name of a non-reference [`Instability`].
fn instability_name(i: Instability) -> Option<&'static str> {
    match i {
        Instability::BiasCorrected => Some("bias_corrected"),
        _ => None,
    }
}

fn instability_from_name(name: &str) -> Option<Instability> {
    [Instability::BiasCorrected]
        .into_iter()
        .find(|&i| instability_name(i) == Some(name))
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

fn numbers<const N: usize>(v: &Value, key: &str) -> Option<[f64; N]> {
    let a = v.get(key)?.as_array()?;
    if a.len() != N {
        return None;
    }
    let mut out = [0.0; N];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64()?;
    }
    Some(out)
}

impl sealed::RuleImpl for CameConfig {
    const NAME: &'static str = "came";
    type Pending<T: Float> = Clip<T>;

    fn validate(&self) -> Result<(), Error> {
        CameConfig::validate(self)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state_layout(shape: &Shape) -> Option<StateLayout> {
        Some(shape.state_layout())
    }

    fn measured<T: Float>(clip: &Clip<T>) -> Option<(f64, bool)> {
        Some((clip.rms, clip.d > T::one()))
    }

    fn prepare<T: Float, E: Executor>(
        &self,
        exec: &E,
        shape: &Shape,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        step: u64,
    ) -> Result<Clip<T>, Error> {
        prepare(exec, self, shape, param, grad, state, step)
    }

    fn finish<T: Float, E: Executor>(
        &self,
        exec: &E,
        shape: &Shape,
        clip: Clip<T>,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        step: u64,
    ) -> Result<(), Error> {
        finish(exec, self, shape, clip, param, grad, state, step)
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "lr": self.lr,
            "eps": [self.eps.0, self.eps.1],
            "clip_threshold": self.clip_threshold,
            "betas": [self.betas.0, self.betas.1, self.betas.2],
            "weight_decay": self.weight_decay,
        });
        // the reference has no such switches: written only when not the reference's, so CAME
        // files stay its own
        if !self.confidence {
            v["confidence"] = Value::Bool(false);
        }
        if let Some(name) = instability_name(self.instability) {
            v["instability"] = Value::from(name);
        }
        v
    }

    fn from_json(v: &Value) -> Option<Self> {
        let [e1, e2] = numbers::<2>(v, "eps")?;
        let [b1, b2, b3] = numbers::<3>(v, "betas")?;
        Some(CameConfig {
            lr: number(v, "lr")?,
            betas: (b1, b2, b3),
            eps: (e1, e2),
            clip_threshold: number(v, "clip_threshold")?,
            weight_decay: number(v, "weight_decay")?,
            confidence: match v.get("confidence") {
                None => true,
                Some(c) => c.as_bool()?,
            },
            instability: match v.get("instability") {
                None => Instability::Reference,
                Some(name) => instability_from_name(name.as_str()?)?,
            },
        })
    }
}

impl sealed::RuleImpl for AdamWConfig {
    const NAME: &'static str = "adamw";
    type Pending<T: Float> = adamw::Coefficients<T>;

    fn validate(&self) -> Result<(), Error> {
        AdamWConfig::validate(self)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// `exp_avg` and `exp_avg_sq`, each like the parameter: a CAME vector's layout.
    fn state_layout(shape: &Shape) -> Option<StateLayout> {
        let vector = Layout::Vector { len: shape.numel() };
        StateLayout::new(vector, 1)
    }

    fn measured<T: Float>(_: &adamw::Coefficients<T>) -> Option<(f64, bool)> {
        None
    }

    fn prepare<T: Float, E: Executor>(
        &self,
        _exec: &E,
        _shape: &Shape,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        step: u64,
    ) -> Result<adamw::Coefficients<T>, Error> {
        adamw::prepare(self, step, param, grad, state)
    }

    fn finish<T: Float, E: Executor>(
        &self,
        exec: &E,
        _shape: &Shape,
        k: adamw::Coefficients<T>,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        _step: u64,
    ) -> Result<(), Error> {
        adamw::finish(exec, &k, param, grad, state);
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "lr": self.lr,
            "betas": [self.betas.0, self.betas.1],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let [b1, b2] = numbers::<2>(v, "betas")?;
        Some(AdamWConfig {
            lr: number(v, "lr")?,
            betas: (b1, b2),
            eps: number(v, "eps")?,
            weight_decay: number(v, "weight_decay")?,
        })
    }
}
