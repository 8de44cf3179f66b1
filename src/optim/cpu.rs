//! The owned optimizer with every tensor's state in host memory.

use std::path::Path;
use std::vec;
use std::vec::Vec;

use super::registry::Registry;
use super::rule::Steps;
use super::rule::sealed::StepsImpl;
use super::{
    CheckpointError, GroupId, Optimizer, OptimizerError, StepReport, TensorId, TensorInfo,
};
use crate::Element;
use crate::adamw::AdamWConfig;
use crate::exec::all_or_nothing_pairs;
use crate::exec::pool::on_pool;
use crate::{CameConfig, Momentum, Pool};

/// The CAME optimizer over owned state: `Came::<f32>::new(CameConfig::new(1e-3))`.
///
/// `P` is the parameters' type and `G` the gradients' ([`Element`]: `f32`, `f64`,
/// `half::bf16`, `half::f16`); the state is kept in their compute type (`f32` for the 16-bit
/// types), as the reference keeps it: `Came::<half::bf16>` steps bf16 weights with bf16
/// gradients, `Came::<f32, half::bf16>` f32 master weights with bf16 gradients.
pub type Came<P, G = P> = CpuOptimizer<P, CameConfig, G>;

/// The AdamW optimizer over owned state, with the same interface as [`Came`].
pub type AdamW<T> = CpuOptimizer<T, AdamWConfig>;

/// One registered tensor's state, and the half-step waiting between a step's two halves.
#[derive(Debug)]
pub(crate) struct Slot<P: Element, C: Steps<P, G>, G: Element> {
    pub state: Vec<P::Compute>,
    pending: Option<<C as StepsImpl<P, G>>::Pending>,
    /// Whether the step in progress has finished this tensor.
    stepped: bool,
}

/// An optimizer that owns the state of many tensors in host memory: CAME ([`Came`]) or AdamW
/// ([`AdamW`]). Its calls are those of the [`Optimizer`] trait, plus threads, the non-finite
/// guard and checkpoints that carry the parameters too.
///
/// Steps run on as many threads as the optimizer was given ([`CpuOptimizer::set_threads`]),
/// with bit-identical results for any thread count.
///
/// ```
/// use came::{Came, CameConfig, Optimizer};
///
/// let mut opt = Came::<f32>::new(CameConfig::new(1e-3))?;
/// let no_decay = opt.add_group(CameConfig::new(1e-3).with_weight_decay(0.0))?;
/// opt.register("w", &[4, 3])?;
/// opt.register_in(no_decay, "b", &[3])?;
///
/// let (mut w, mut b) = (vec![0.5f32; 12], vec![0.0f32; 3]);
/// for step in 0..10 {
///     opt.set_learning_rate(1e-3 * (1.0 - step as f64 / 10.0).max(0.1))?; // a schedule
///     let (gw, gb) = (w.clone(), vec![0.1f32; 3]);
///     let report = opt.step(&mut [(&mut w, &gw), (&mut b, &gb)])?;
///     assert!(report.max_update_rms.is_some());
/// }
/// assert!(opt.state_bytes() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CpuOptimizer<P: Element, C: Steps<P, G>, G: Element = P> {
    pub(super) registry: Registry<C>,
    pub(super) slots: Vec<Slot<P, C, G>>,
    pool: Pool,
    guard: bool,
}

impl<P: Element, C: Steps<P, G>, G: Element> CpuOptimizer<P, C, G> {
    /// An optimizer with one parameter group of `config` (group 0, where
    /// [`Optimizer::register`] puts tensors), stepping on the calling thread, with the
    /// non-finite guard on.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] if `config` is invalid.
    pub fn new(config: C) -> Result<Self, OptimizerError> {
        Ok(Self {
            registry: Registry::new(config)?,
            slots: Vec::new(),
            pool: Pool::serial(),
            guard: true,
        })
    }

    /// Steps on `threads` threads (0: one per CPU). Results do not depend on it.
    ///
    /// # Errors
    /// As [`Pool::new`]: more than 8 threads per CPU (and more than 64) are refused before any
    /// starts; the operating system's error if it refuses to start them. The optimizer then
    /// keeps the threads it had.
    pub fn set_threads(&mut self, threads: usize) -> std::io::Result<()> {
        self.pool = Pool::new(threads)?;
        Ok(())
    }

    /// Number of threads steps run on.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Turns the non-finite guard on (the default) or off.
    ///
    /// On, a step first checks every tensor's gradient (CAME: within the sweeps a step makes
    /// anyway, so at no extra cost; AdamW: one read of each gradient) and, if any holds a NaN
    /// or an infinity, or would overflow, returns [`OptimizerError::Tensor`] for the first such
    /// tensor and changes nothing at all, like the loss-scale guard of a mixed-precision
    /// trainer. Off, each tensor is stepped on its own: a bad tensor is left unchanged and
    /// reported, the others take their step.
    pub fn set_nonfinite_guard(&mut self, on: bool) {
        self.guard = on;
    }

    /// Replaces a group's config (all of its hyperparameters).
    ///
    /// # Errors
    /// [`OptimizerError::UnknownGroup`], [`OptimizerError::Config`].
    pub fn set_group_config(&mut self, group: GroupId, config: C) -> Result<(), OptimizerError> {
        self.registry.set_group_config(group, config)
    }

    /// The named pieces of a tensor's state under the reference's names (`exp_avg`, ...),
    /// with their shapes.
    #[must_use]
    pub fn state(&self, id: TensorId) -> Option<Vec<StatePiece<'_, P::Compute>>> {
        let t = self.registry.tensors().get(id.0)?;
        let state = &self.slots[id.0].state;
        Some(
            t.state
                .pieces()
                .into_iter()
                .map(|p| StatePiece {
                    name: p.key,
                    dims: p.dims.of(&t.dims).collect(),
                    values: &state[p.range],
                })
                .collect(),
        )
    }

    /// An optimizer over `registry`'s groups and tensors, each tensor's named state (the part
    /// before the workspace) taken from `named` where given, else fresh.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn from_registry<'a>(
        registry: Registry<C>,
        named: impl Iterator<Item = Option<&'a [P::Compute]>>,
    ) -> Self {
        let mut named = named;
        let slots = registry
            .tensors()
            .iter()
            .map(|t| {
                let mut state = vec![zero::<P>(); t.state.len()];
                if let Some(values) = named.next().flatten() {
                    state[..values.len()].copy_from_slice(values);
                }
                Slot {
                    state,
                    pending: None,
                    stepped: false,
                }
            })
            .collect();
        Self {
            registry,
            slots,
            pool: Pool::serial(),
            guard: true,
        }
    }

    /// The groups and registered tensors.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn registry(&self) -> &Registry<C> {
        &self.registry
    }

    /// Tensor `i`'s whole state buffer, laid out as its [`crate::StateLayout`] says.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn state_buffer(&self, i: usize) -> &[P::Compute] {
        &self.slots[i].state
    }

    /// Zeroes every tensor's state and step count: a fresh optimizer with the same tensors.
    pub fn reset(&mut self) {
        for (t, slot) in self.registry.tensors_mut().iter_mut().zip(&mut self.slots) {
            slot.state.fill(zero::<P>());
            slot.pending = None;
            t.step = 0;
        }
    }
}

impl<P: Element, C: Steps<P, G>, G: Element> Optimizer for CpuOptimizer<P, C, G> {
    type Config = C;
    type Param = [P];
    type Grad = [G];
    type Error = OptimizerError;
    type CheckpointError = CheckpointError;

    fn add_group(&mut self, config: C) -> Result<GroupId, OptimizerError> {
        self.registry.add_group(config)
    }

    fn groups(&self) -> &[C] {
        self.registry.groups()
    }

    fn register_in(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, OptimizerError> {
        let id = self.registry.register(group, name, dims)?;
        let len = self.registry.tensors()[id.0].state.len();
        self.slots.push(Slot {
            state: vec![zero::<P>(); len],
            pending: None,
            stepped: false,
        });
        Ok(id)
    }

    fn len(&self) -> usize {
        self.registry.tensors().len()
    }

    fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>> {
        self.registry.tensor(id)
    }

    fn learning_rate(&self) -> f64 {
        self.registry.lr()
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<(), OptimizerError> {
        self.registry.set_lr(lr)
    }

    fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), OptimizerError> {
        self.registry.set_group_lr(group, lr)
    }

    fn scale_learning_rate(&mut self, factor: f64) -> Result<(), OptimizerError> {
        self.registry.scale_lr(factor)
    }

    /// Steps every tensor, given `(param, grad)` for each in registration order.
    ///
    /// # Errors
    /// - [`OptimizerError::TensorCount`] if the number of pairs is wrong (nothing changed);
    /// - [`OptimizerError::Tensor`] for the first tensor that fails: a slice of the wrong
    ///   length (nothing changed), a non-finite gradient, an overflow or a corrupt state.
    ///   With the guard on (the default) nothing is changed by those either, except after a
    ///   corrupt momentum ([`crate::Error::NonFiniteState`]); with it off, the other tensors
    ///   take their step.
    fn step(&mut self, tensors: &mut [(&mut [P], &[G])]) -> Result<StepReport, OptimizerError> {
        self.step_pairs(tensors)
    }

    fn step_some(
        &mut self,
        tensors: &mut [(&mut [P], Option<&[G]>)],
    ) -> Result<StepReport, OptimizerError> {
        self.step_pairs(tensors)
    }

    fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.state.len() * size_of::<P::Compute>())
            .sum()
    }

    fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        self.save_to(path, None)
    }

    fn load(&mut self, path: &Path) -> Result<(), CheckpointError> {
        self.load_from(path, None)
    }
}

impl<P: Element, C: Steps<P, G>, G: Element> CpuOptimizer<P, C, G> {
    /// A step of the tensors that have a gradient in `tensors` (one pair per registered
    /// tensor); the others keep their state and step count.
    fn step_pairs<X: GradPair<P, G>>(
        &mut self,
        tensors: &mut [X],
    ) -> Result<StepReport, OptimizerError> {
        self.registry
            .check_step(tensors.iter().map(GradPair::lens))?;
        let groups = self.registry.groups();
        let registered = self.registry.tensors();
        let failed = on_pool!(self.pool, |exec| all_or_nothing_pairs(
            exec,
            (&mut self.slots, tensors),
            self.guard,
            |i, slot, pair| {
                slot.pending = None;
                slot.stepped = false;
                let Some(data) = pair.parts() else {
                    return Ok(()); // no gradient: left out of this step
                };
                let t = &registered[i];
                let config = &groups[t.group];
                slot.pending =
                    Some(config.prepare(exec, &t.shape, data, &mut slot.state, t.step)?);
                Ok(())
            },
            |i, slot, pair| {
                if let (Some(pending), Some(data)) = (slot.pending, pair.parts()) {
                    let t = &registered[i];
                    let state = &mut slot.state;
                    let at = (&t.shape, i);
                    groups[t.group].finish(exec, at, pending, data, state, t.step)?;
                    slot.stepped = true;
                }
                Ok(())
            },
            |slot| slot.pending = None,
        ));
        let mut report = StepReport::default();
        let tensors = self.registry.tensors_mut().iter_mut();
        for (t, slot) in tensors.zip(&mut self.slots) {
            let pending = slot.pending.take();
            if core::mem::take(&mut slot.stepped) {
                t.step = t.step.saturating_add(1);
                report.add(pending.and_then(|p| C::measured(&p)));
            }
        }
        match failed {
            Some((i, error)) => Err(self.registry.error(i, error)),
            None => Ok(report),
        }
    }
}

impl<P: Element, G: Element<Compute = P::Compute>> CpuOptimizer<P, CameConfig, G> {
    /// Stores the momentum `exp_avg` of the tensors registered from now on as `momentum`
    /// (bf16 or block-wise 8-bit, for the large matrices the rule of [`crate::momentum`]
    /// picks; the default [`Momentum::Full`] keeps the reference's `f32`/`f64`). Packed
    /// momentum needs `f32` compute: with `f64` parameters a step of such a tensor is refused.
    ///
    /// ```
    /// use came::{Came, CameConfig, Momentum, Optimizer};
    /// let mut opt = Came::<half::bf16>::new(CameConfig::new(1e-3))?;
    /// opt.set_momentum(Momentum::INT8)?;
    /// opt.register("w", &[1024, 1024])?;
    /// // a byte per element, a scale per 256, the statistics and a step's workspace: under
    /// // 1.5 MiB, where the f32 momentum alone takes 4 MiB
    /// assert!(opt.state_bytes() < 1024 * 1024 * 3 / 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`OptimizerError::Config`] with [`crate::Error::InvalidMomentum`] for a block size the
    /// format does not allow.
    pub fn set_momentum(&mut self, momentum: Momentum) -> Result<(), OptimizerError> {
        self.registry.set_momentum(momentum)
    }
}

/// A `(param, grad)` pair of a step; a pair without a gradient leaves its tensor out.
trait GradPair<P, G>: Send {
    /// The parameter's length and the gradient's, if there is one.
    fn lens(&self) -> (usize, Option<usize>);
    /// The parameter and the gradient, if there is one.
    fn parts(&mut self) -> Option<(&mut [P], &[G])>;
}

impl<P: Send + Sync, G: Send + Sync> GradPair<P, G> for (&mut [P], &[G]) {
    fn lens(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.1.len()))
    }

    fn parts(&mut self) -> Option<(&mut [P], &[G])> {
        Some((&mut *self.0, self.1))
    }
}

impl<P: Send + Sync, G: Send + Sync> GradPair<P, G> for (&mut [P], Option<&[G]>) {
    fn lens(&self) -> (usize, Option<usize>) {
        (self.0.len(), self.1.map(<[G]>::len))
    }

    fn parts(&mut self) -> Option<(&mut [P], &[G])> {
        Some((&mut *self.0, self.1?))
    }
}

/// The zero of `P`'s compute type: a fresh state's value.
fn zero<P: Element>() -> P::Compute {
    num_traits::Zero::zero()
}

/// One named piece of a tensor's state, as [`CpuOptimizer::state`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatePiece<'a, T> {
    /// The reference's name: `exp_avg`, `exp_avg_sq_row`, ...
    pub name: &'static str,
    /// Its shape, as the reference's state tensor has it.
    pub dims: Vec<usize>,
    /// Its values, row-major.
    pub values: &'a [T],
}
