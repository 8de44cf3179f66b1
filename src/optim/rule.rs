//! What the owned optimizer needs of an update rule: CAME's and AdamW's configs implement it.

use serde_json::{Value, json};

use crate::Element;
use crate::adamw::{self, AdamWConfig};
use crate::came::formula::Clip;
use crate::came::{finish, prepare};
use crate::exec::Executor;
use crate::{CameConfig, Error, Float, Instability, Layout, Rounding, Shape, StateLayout};

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

/// A [`Rule`] that steps parameters stored in `P` with gradients in `G`: CAME any of the
/// [`Element`] types (`G` computed in the same type as `P`), AdamW `f32` and `f64` only.
pub trait Steps<P: Element, G: Element>: Rule + sealed::StepsImpl<P, G> {}

impl<P: Element, G: Element<Compute = P::Compute>> Steps<P, G> for CameConfig {}
impl<T: Float> Steps<T, T> for AdamWConfig {}

pub mod sealed {
    use super::{Element, Executor, Shape, StateLayout, Value};
    use crate::Error;

    pub trait StepsImpl<P: Element, G: Element> {
        /// What the first half of a step leaves for the second.
        type Pending: Copy + Send + Sync + core::fmt::Debug;

        /// The update's RMS before clipping and whether it was clipped, where the rule
        /// measures them.
        fn measured(pending: &Self::Pending) -> Option<(f64, bool)>;

        /// The first half of a step: checks and statistics that change nothing but scratch
        /// space. `step` counts the steps taken before this one.
        fn prepare<E: Executor>(
            &self,
            exec: &E,
            shape: &Shape,
            data: (&mut [P], &[G]),
            state: &mut [P::Compute],
            step: u64,
        ) -> Result<Self::Pending, Error>;

        /// The second half: the update of tensor number `tensor`. `step` counts the steps
        /// taken before this one.
        #[allow(clippy::too_many_arguments)]
        fn finish<E: Executor>(
            &self,
            exec: &E,
            at: (&Shape, usize),
            pending: Self::Pending,
            data: (&mut [P], &[G]),
            state: &mut [P::Compute],
            step: u64,
        ) -> Result<(), Error>;
    }

    pub trait RuleImpl: Sized {
        /// The `optimizer` value of a checkpoint.
        const NAME: &'static str;

        fn validate(&self) -> Result<(), Error>;
        fn lr(&self) -> f64;
        fn set_lr(&mut self, lr: f64);

        /// Where each piece of a tensor's state lives, with the reference's names; `None` when
        /// its length overflows `usize`.
        fn state_layout(shape: &Shape) -> Option<StateLayout>;

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

impl<P: Element, G: Element<Compute = P::Compute>> sealed::StepsImpl<P, G> for CameConfig {
    type Pending = Clip<P::Compute>;

    fn measured(clip: &Clip<P::Compute>) -> Option<(f64, bool)> {
        Some((clip.rms, clip.d > num_traits::One::one()))
    }

    fn prepare<E: Executor>(
        &self,
        exec: &E,
        shape: &Shape,
        (param, grad): (&mut [P], &[G]),
        state: &mut [P::Compute],
        step: u64,
    ) -> Result<Self::Pending, Error> {
        prepare(exec, self, shape, param, grad, state, step)
    }

    fn finish<E: Executor>(
        &self,
        exec: &E,
        (shape, tensor): (&Shape, usize),
        clip: Self::Pending,
        (param, grad): (&mut [P], &[G]),
        state: &mut [P::Compute],
        step: u64,
    ) -> Result<(), Error> {
        finish(exec, (self, tensor), shape, clip, param, grad, state, step)
    }
}

impl sealed::RuleImpl for CameConfig {
    const NAME: &'static str = "came";

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
        if let Rounding::Stochastic { seed } = self.rounding {
            v["rounding"] = json!({ "stochastic": seed });
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
            rounding: match v.get("rounding") {
                None => Rounding::Nearest,
                Some(r) => Rounding::Stochastic {
                    seed: r.get("stochastic")?.as_u64()?,
                },
            },
        })
    }
}

impl<T: Float> sealed::StepsImpl<T, T> for AdamWConfig {
    type Pending = adamw::Coefficients<T>;

    fn measured(_: &adamw::Coefficients<T>) -> Option<(f64, bool)> {
        None
    }

    fn prepare<E: Executor>(
        &self,
        _exec: &E,
        _shape: &Shape,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        step: u64,
    ) -> Result<adamw::Coefficients<T>, Error> {
        adamw::prepare(self, step, param, grad, state)
    }

    fn finish<E: Executor>(
        &self,
        exec: &E,
        _shape: (&Shape, usize),
        k: adamw::Coefficients<T>,
        (param, grad): (&mut [T], &[T]),
        state: &mut [T],
        _step: u64,
    ) -> Result<(), Error> {
        adamw::finish(exec, &k, param, grad, state);
        Ok(())
    }
}

impl sealed::RuleImpl for AdamWConfig {
    const NAME: &'static str = "adamw";

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
