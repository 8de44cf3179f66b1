//! [`Came`]: the core crate's owned optimizer over candle's `Var`s.

use std::collections::{HashMap, HashSet};

use came::optim::Optimizer as _;
use came::{CameConfig, GroupId, Momentum, OptimizerError, StepReport, TensorId};
use candle::backprop::GradStore;
use candle::{DeviceLocation, Tensor, TensorId as TensorIdOf, Var};
use candle_nn::VarMap;
use half::{bf16, f16};

use crate::error::Error;
use crate::params::{ParamGroup, ParamsCame, named_vars};
use crate::storage::{Held, Kind, Target, Typed, buffer_key, elements, locked_key};

/// The core optimizer of one element type.
#[derive(Debug)]
enum Core {
    F32(came::Came<f32>),
    F64(came::Came<f64>),
    Bf16(came::Came<bf16>),
    F16(came::Came<f16>),
}

/// Runs `$body` with `$opt` bound to the core optimizer, whatever its element type.
macro_rules! on_core {
    ($core:expr, $opt:ident => $body:expr) => {
        match $core {
            Core::F32($opt) => $body,
            Core::F64($opt) => $body,
            Core::Bf16($opt) => $body,
            Core::F16($opt) => $body,
        }
    };
}

/// Runs `$body` on every part's core optimizer, stopping at the first error. Every core has
/// the same groups, so a call that fails fails on the first, before anything changed.
macro_rules! on_every_core {
    ($parts:expr, $opt:ident => $body:expr) => {{
        let mut result = Ok(());
        for part in $parts.iter_mut() {
            result = on_core!(&mut part.core, $opt => $body);
            if result.is_err() {
                break;
            }
        }
        result.map_err(Error::from)
    }};
}

mod checkpoint;

/// The four element types, in the order of [`Came::parts`].
const KINDS: [Kind; 4] = [Kind::F32, Kind::F64, Kind::Bf16, Kind::F16];

impl Core {
    fn new(kind: Kind, config: CameConfig) -> Result<Self, OptimizerError> {
        Ok(match kind {
            Kind::F32 => Core::F32(came::Came::new(config)?),
            Kind::F64 => Core::F64(came::Came::new(config)?),
            Kind::Bf16 => Core::Bf16(came::Came::new(config)?),
            Kind::F16 => Core::F16(came::Came::new(config)?),
        })
    }
}

/// The vars of one element type and the core optimizer that steps them.
#[derive(Debug)]
struct Part {
    core: Core,
    /// Each of its tensors' position in [`Came::entries`], in its registration order.
    members: Vec<usize>,
}

/// One registered var.
#[derive(Debug)]
struct Entry {
    var: Var,
    name: String,
    kind: Kind,
    /// Its position in its part's registration order.
    local: usize,
}

/// CAME for candle: a [`candle_nn::Optimizer`] that steps `Var`s in place, on their own buffers,
/// with the `came` crate's kernels. Swap it for `candle_nn::AdamW` in one line:
///
/// ```
/// use candle::{DType, Device, Tensor};
/// use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
/// use came_candle::{Came, ParamsCame};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let model = candle_nn::linear(4, 2, vb.pp("fc"))?;
/// // was: candle_nn::AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-2, ..Default::default() })?
/// let mut opt = Came::new(varmap.all_vars(), ParamsCame { lr: 1e-2, ..Default::default() })?;
///
/// let x = Tensor::ones((3, 4), DType::F32, &Device::Cpu)?;
/// for _ in 0..5 {
///     let loss = model.forward(&x)?.sqr()?.mean_all()?;
///     opt.backward_step(&loss)?;
/// }
/// assert!(opt.state_bytes() > 0);
/// # Ok::<(), candle::Error>(())
/// ```
///
/// **Vars.** F32, F64, BF16 and F16 vars on the CPU, each a contiguous block of its buffer
/// (every var a `VarMap` or `Var::zeros`/`randn` makes is). Integer vars are left out, as
/// candle's optimizers leave them out; other dtypes, other devices and strided vars are refused
/// when registered ([`Error`]). Vars of rank 2 and more are factored over their last two dims
/// (the leading dims are a batch), vectors and scalars keep an element-wise second moment, as
/// the reference does. BF16 and F16 vars are computed in `f32` and rounded back
/// ([`ParamsCame::rounding`]); their state is `f32`.
///
/// **In place.** A step borrows every var's buffer and every gradient's buffer from candle (the
/// var through an in-place op, the gradient through its read lock) and runs the core step on
/// them: no var, gradient or state is copied, and nothing of the size of a var is allocated.
/// A gradient that is not contiguous (candle's backward pass makes contiguous ones) is made
/// contiguous first.
///
/// **Frozen vars.** A var without a gradient in the `GradStore` is left out of the step, as
/// PyTorch leaves out a parameter whose `grad` is `None`: its value, state and step count stay
/// as they are.
///
/// **Non-finite guard.** On by default: a NaN or infinite gradient anywhere (or an overflow, or
/// a corrupt state) fails the step with [`Error::Tensor`], naming the var, and changes nothing
/// at all, like the loss-scale guard of a mixed-precision trainer. The check costs nothing: it
/// is made within the sweeps the step makes anyway.
///
/// **Groups.** [`Came::from_groups`] takes [`ParamGroup`]s, each with its own [`ParamsCame`]
/// (no weight decay for biases and norms, say); `learning_rate` is group 0's and
/// `set_learning_rate` sets every group's.
///
/// **Checkpoints.** [`Came::save`] and [`Came::load`] write and read the core crate's
/// safetensors files (the reference's state names): a file saved here loads into a
/// `came::Came` with the same tensors, and the other way round. Register the vars with their
/// names ([`Came::from_varmap`], [`ParamGroup::named`]) so that a checkpoint matches them by
/// name in a new process.
///
/// **Types.** The state is kept per element type by the core optimizer of that type
/// (`came::Came<f32>`, `<f64>`, `<half::bf16>`, `<half::f16>`). A model whose vars share one
/// dtype (the usual case) is one core optimizer: a step is exactly the core's. With vars of
/// several dtypes, the non-finite guard checks every gradient of every dtype for NaN and
/// infinity before any var changes; the rarer failures it catches within a step (a gradient
/// whose square overflows, a corrupt state) are all or nothing within each dtype. Checkpoints
/// need one dtype ([`Error::MixedDtypes`]).
#[derive(Debug)]
pub struct Came {
    /// One per element type, in the order of [`KINDS`], each with every group.
    parts: [Part; 4],
    entries: Vec<Entry>,
    /// Each var's buffer key, to its position in `entries`.
    buffers: HashMap<usize, usize>,
    guard: bool,
    /// The thread count given to [`Came::set_threads`], for the parts that get their first var
    /// later.
    threads: Option<usize>,
    /// A learning rate `candle_nn::Optimizer::set_learning_rate` could not set (it cannot
    /// return an error): the next step returns it.
    bad_lr: Option<f64>,
}

impl Came {
    /// An optimizer over the vars of `groups`, registered in order (group by group, each
    /// group's vars in the order given). The first group is group 0, whose learning rate
    /// [`candle_nn::Optimizer::learning_rate`] reports. No group: one group of
    /// `ParamsCame::default()`, with no vars.
    ///
    /// # Errors
    /// As [`Came::add_param_group`].
    pub fn from_groups(groups: impl IntoIterator<Item = ParamGroup>) -> Result<Self, Error> {
        let mut groups = groups.into_iter();
        let first = groups
            .next()
            .unwrap_or_else(|| ParamGroup::new([], ParamsCame::default()));
        let mut opt = Self::empty_with(&first.params)?;
        opt.register_group(GroupId(0), first)?;
        for group in groups {
            opt.add_param_group(group)?;
        }
        Ok(opt)
    }

    /// An optimizer over every var of `varmap`, registered under their names in name order (the
    /// same in every process, so that a checkpoint finds its vars again).
    ///
    /// # Errors
    /// As [`Came::add_param_group`].
    pub fn from_varmap(varmap: &VarMap, params: ParamsCame) -> Result<Self, Error> {
        Self::from_groups([ParamGroup::named(named_vars(varmap), params)])
    }

    /// No vars, one group of `params`.
    fn empty_with(params: &ParamsCame) -> Result<Self, Error> {
        let config = params.config();
        let part = |kind| -> Result<Part, Error> {
            let mut core = Core::new(kind, config)?;
            on_core!(&mut core, o => o.set_momentum(params.momentum))?;
            Ok(Part {
                core,
                members: Vec::new(),
            })
        };
        Ok(Self {
            parts: [
                part(KINDS[0])?,
                part(KINDS[1])?,
                part(KINDS[2])?,
                part(KINDS[3])?,
            ],
            entries: Vec::new(),
            buffers: HashMap::new(),
            guard: true,
            threads: None,
            bad_lr: None,
        })
    }

    /// Adds a parameter group and registers its vars in it, after the vars registered before.
    ///
    /// ```
    /// use candle::{DType, Device, Var};
    /// use came_candle::{Came, ParamGroup, ParamsCame};
    ///
    /// let w = Var::zeros((8, 4), DType::F32, &Device::Cpu)?;
    /// let b = Var::zeros(4, DType::F32, &Device::Cpu)?;
    /// let params = ParamsCame { lr: 1e-3, weight_decay: 0.1, ..Default::default() };
    /// let mut opt = Came::from_groups([ParamGroup::named([("w", w)], params)])?;
    /// let no_decay = opt.add_param_group(ParamGroup::named(
    ///     [("b", b)],
    ///     ParamsCame { weight_decay: 0.0, ..params },
    /// ))?;
    /// assert_eq!(no_decay.0, 1);
    /// assert_eq!(opt.len(), 2);
    /// # Ok::<(), came_candle::Error>(())
    /// ```
    ///
    /// # Errors
    /// Nothing is registered (and no group added) if any var is refused:
    /// - [`Error::Optimizer`] with [`OptimizerError::Config`] for invalid hyperparameters, or
    ///   with [`OptimizerError::DuplicateName`] for a name registered already;
    /// - [`Error::DuplicateVar`], [`Error::SharedStorage`] for a var given twice, or two vars
    ///   over one buffer;
    /// - [`Error::UnsupportedDtype`], [`Error::UnsupportedDevice`], [`Error::NonContiguous`];
    /// - [`Error::Threads`] if the threads set with [`Came::set_threads`] cannot be started for
    ///   the first var of a dtype.
    pub fn add_param_group(&mut self, group: ParamGroup) -> Result<GroupId, Error> {
        let config = group.params.config();
        check_params(&config, group.params.momentum)?;
        self.check_vars(&group)?;
        let mut id = GroupId(0);
        for part in &mut self.parts {
            id = on_core!(&mut part.core, o => o.add_group(config))?;
        }
        self.register_group(id, group)?;
        Ok(id)
    }

    /// Registers `group`'s vars in the existing group `id`.
    fn register_group(&mut self, id: GroupId, group: ParamGroup) -> Result<(), Error> {
        check_params(&group.params.config(), group.params.momentum)?;
        self.check_vars(&group)?;
        for (name, var) in group.vars {
            let Some(kind) = Kind::of(var.dtype()) else {
                continue; // an integer var (check_vars refused every other dtype)
            };
            let index = self.entries.len();
            let name = name.unwrap_or_else(|| unnamed(index));
            let part = &mut self.parts[kind as usize];
            if part.members.is_empty()
                && let Some(threads) = self.threads
            {
                set_threads(&mut part.core, threads).map_err(Error::Threads)?;
            }
            let core = &mut part.core;
            on_core!(core, o => o.set_momentum(group.params.momentum))?;
            let local = on_core!(core, o => o.register_in(id, &name, var.dims()))?;
            part.members.push(index);
            self.buffers.insert(buffer_key(&var), index);
            self.entries.push(Entry {
                var,
                name,
                kind,
                local: local.0,
            });
        }
        Ok(())
    }

    /// Checks every var of `group` before any is registered.
    fn check_vars(&self, group: &ParamGroup) -> Result<(), Error> {
        let mut names: HashSet<String> = self.entries.iter().map(|e| e.name.clone()).collect();
        // the buffers of the group's vars checked so far, with their names and ids
        let mut buffers: HashMap<usize, (String, TensorIdOf)> = HashMap::new();
        let mut index = self.entries.len();
        for (name, var) in &group.vars {
            let name = name.clone().unwrap_or_else(|| unnamed(index));
            let dtype = var.dtype();
            if Kind::of(dtype).is_none() {
                if dtype.is_int() {
                    continue;
                }
                return Err(Error::UnsupportedDtype { name, dtype });
            }
            check_place(&name, var)?;
            let key = buffer_key(var);
            let registered = self
                .buffers
                .get(&key)
                .map(|&i| (self.entries[i].name.clone(), self.entries[i].var.id()));
            if let Some((other, id)) = registered.or_else(|| buffers.get(&key).cloned()) {
                return Err(if id == var.id() {
                    Error::DuplicateVar { name, first: other }
                } else {
                    Error::SharedStorage { name, other }
                });
            }
            if !names.insert(name.clone()) {
                return Err(OptimizerError::DuplicateName(name).into());
            }
            buffers.insert(key, (name, var.id()));
            index += 1;
        }
        Ok(())
    }

    /// Steps every var that has a gradient in `grads`; what [`candle_nn::Optimizer::step`]
    /// does, with what the step measured and a typed error.
    ///
    /// ```
    /// use candle::{DType, Device, Var};
    /// use came_candle::{Came, ParamsCame};
    ///
    /// let w = Var::ones((4, 3), DType::F32, &Device::Cpu)?;
    /// let frozen = Var::ones(3, DType::F32, &Device::Cpu)?;
    /// let mut opt = Came::new(vec![w.clone(), frozen.clone()], ParamsCame::default())?;
    /// let loss = w.sqr()?.sum_all()?; // `frozen` takes no part: it has no gradient
    /// let report = opt.step_report(&loss.backward()?)?;
    /// assert_eq!(report.stepped, 1);
    /// assert!(report.max_update_rms.is_some());
    /// # use candle_nn::Optimizer as _;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Nothing is changed by any of these:
    /// - [`Error::Optimizer`] with an invalid learning rate set through
    ///   [`candle_nn::Optimizer::set_learning_rate`] since the last valid one;
    /// - [`Error::GradDtype`], [`Error::GradShape`], [`Error::GradDevice`],
    ///   [`Error::GradAliasesVar`] for a gradient that does not fit its var;
    /// - [`Error::Tensor`] for a var whose step failed: a NaN or infinite gradient element
    ///   (with its position), a gradient whose square overflows, a corrupt state. With the
    ///   guard off ([`Came::set_nonfinite_guard`]) the other vars take their step.
    pub fn step_report(&mut self, grads: &GradStore) -> Result<StepReport, Error> {
        if let Some(lr) = self.bad_lr {
            let error = came::Error::InvalidLearningRate(lr);
            return Err(OptimizerError::Config(error).into());
        }
        let mut stepping = [false; 4];
        let mut found: Vec<Option<Tensor>> = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let grad = match grads.get(&e.var) {
                Some(g) => Some(fitting_grad(e, g)?),
                None => None,
            };
            stepping[e.kind as usize] |= grad.is_some();
            found.push(grad);
        }
        if stepping.iter().all(|s| !s) {
            return Ok(StepReport::default());
        }
        let locked: Vec<_> = found
            .iter()
            .map(|g| g.as_ref().map(Tensor::storage_and_layout))
            .collect();
        let mut targets = Vec::with_capacity(self.entries.len());
        for (i, (e, grad)) in self.entries.iter().zip(&locked).enumerate() {
            if !stepping[e.kind as usize] {
                continue;
            }
            let grad = match grad {
                Some((storage, layout)) => {
                    if let Some(&var) = self.buffers.get(&locked_key(storage)) {
                        return Err(Error::GradAliasesVar {
                            name: self.entries[i].name.clone(),
                            var: self.entries[var].name.clone(),
                        });
                    }
                    Some(elements(storage, layout)?)
                }
                None => None,
            };
            targets.push(Target { var: &e.var, grad });
        }
        let mut outcome = None;
        let (parts, entries, guard) = (&mut self.parts, &self.entries, self.guard);
        crate::storage::with_vars_mut(&targets, &mut |held| {
            outcome = Some(step_held(parts, entries, guard, stepping, held));
        })?;
        outcome.unwrap_or_else(|| Ok(StepReport::default()))
    }

    /// Sets every group's learning rate (and base learning rate), returning an invalid one as
    /// an error where [`candle_nn::Optimizer::set_learning_rate`] keeps it for the next step.
    ///
    /// # Errors
    /// [`Error::Optimizer`] with [`came::Error::InvalidLearningRate`] unless `lr` is finite and
    /// > 0; nothing is changed.
    pub fn try_set_learning_rate(&mut self, lr: f64) -> Result<(), Error> {
        on_every_core!(self.parts, o => o.set_learning_rate(lr))?;
        self.bad_lr = None;
        Ok(())
    }

    /// Sets one group's learning rate (and base learning rate).
    ///
    /// # Errors
    /// [`Error::Optimizer`]: an unknown group, an lr that is not finite and > 0.
    pub fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), Error> {
        on_every_core!(self.parts, o => o.set_group_lr(group, lr))
    }

    /// Sets every group's learning rate to its base learning rate times `factor`: a schedule
    /// over groups of different learning rates in one call (see
    /// `came::Optimizer::scale_learning_rate`).
    ///
    /// # Errors
    /// [`Error::Optimizer`]: a factor that is not finite and > 0, a product that is not a
    /// valid lr; nothing is changed.
    pub fn scale_learning_rate(&mut self, factor: f64) -> Result<(), Error> {
        on_every_core!(self.parts, o => o.scale_learning_rate(factor))
    }

    /// Replaces a group's hyperparameters: every field of the core's config (the format of the
    /// momentum stays the one its vars were registered with).
    ///
    /// # Errors
    /// [`Error::Optimizer`]: an unknown group, an invalid config.
    pub fn set_group_config(&mut self, group: GroupId, config: CameConfig) -> Result<(), Error> {
        on_every_core!(self.parts, o => o.set_group_config(group, config))
    }

    /// The groups' configs, by [`GroupId`].
    #[must_use]
    pub fn groups(&self) -> &[CameConfig] {
        on_core!(&self.parts[0].core, o => o.groups())
    }

    /// Turns the non-finite guard on (the default) or off. Off, each var is stepped on its own:
    /// a var with a NaN or infinite gradient is left unchanged and reported, the others take
    /// their step.
    pub fn set_nonfinite_guard(&mut self, on: bool) {
        self.guard = on;
        for part in &mut self.parts {
            on_core!(&mut part.core, o => o.set_nonfinite_guard(on));
        }
    }

    /// Steps on `threads` threads (0: one per CPU); results do not depend on it. The default
    /// is the calling thread alone.
    ///
    /// # Errors
    /// Too many threads (more than 8 per CPU, and more than 64; see `came::Pool::new`): nothing
    /// is changed. The operating system's error if it refuses to start them; the vars of some
    /// dtypes may then step on the new threads, the others on the old (the results are the
    /// same).
    pub fn set_threads(&mut self, threads: usize) -> std::io::Result<()> {
        for part in &mut self.parts {
            if !part.members.is_empty() {
                set_threads(&mut part.core, threads)?;
            }
        }
        self.threads = Some(threads);
        Ok(())
    }

    /// Bytes of optimizer state held for all vars (the state of every var and a step's
    /// workspace).
    #[must_use]
    pub fn state_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| on_core!(&p.core, o => o.state_bytes()))
            .sum()
    }

    /// Number of registered vars.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no var is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registered vars with their names, in registration order.
    #[must_use]
    pub fn vars(&self) -> impl ExactSizeIterator<Item = (&str, &Var)> {
        self.entries.iter().map(|e| (e.name.as_str(), &e.var))
    }

    /// Steps var `index` (in registration order) has taken.
    #[must_use]
    pub fn step_count(&self, index: usize) -> Option<u64> {
        let e = self.entries.get(index)?;
        let id = TensorId(e.local);
        on_core!(&self.parts[e.kind as usize].core, o => o.step_count(id))
    }
}

/// The name of an unnamed var at position `index`.
fn unnamed(index: usize) -> String {
    format!("var.{index}")
}

/// Refuses a var that is not a contiguous block of a CPU buffer.
fn check_place(name: &str, var: &Tensor) -> Result<(), Error> {
    let device = var.device().location();
    if device != DeviceLocation::Cpu {
        let name = name.to_string();
        return Err(Error::UnsupportedDevice { name, device });
    }
    if !var.is_contiguous() {
        return Err(Error::NonContiguous {
            name: name.to_string(),
            dims: var.dims().to_vec(),
            stride: var.stride().to_vec(),
        });
    }
    Ok(())
}

/// Checks a group's hyperparameters before anything is registered.
fn check_params(config: &CameConfig, momentum: Momentum) -> Result<(), Error> {
    config.validate().map_err(OptimizerError::Config)?;
    if !momentum.is_valid() {
        let error = came::Error::InvalidMomentum(momentum);
        return Err(OptimizerError::Config(error).into());
    }
    Ok(())
}

fn set_threads(core: &mut Core, threads: usize) -> std::io::Result<()> {
    on_core!(core, o => o.set_threads(threads))
}

/// `grad`, checked against its var, contiguous.
fn fitting_grad(e: &Entry, grad: &Tensor) -> Result<Tensor, Error> {
    let name = || e.name.clone();
    if grad.dtype() != e.var.dtype() {
        return Err(Error::GradDtype {
            name: name(),
            var: e.var.dtype(),
            grad: grad.dtype(),
        });
    }
    if grad.dims() != e.var.dims() {
        return Err(Error::GradShape {
            name: name(),
            var: e.var.dims().to_vec(),
            grad: grad.dims().to_vec(),
        });
    }
    let (var, at) = (e.var.device().location(), grad.device().location());
    if var != at {
        return Err(Error::GradDevice {
            name: name(),
            var,
            grad: at,
        });
    }
    Ok(if grad.is_contiguous() {
        grad.clone()
    } else {
        grad.contiguous()?
    })
}

/// The step, with every stepping var and its gradient held.
fn step_held(
    parts: &mut [Part; 4],
    entries: &[Entry],
    guard: bool,
    stepping: [bool; 4],
    held: &mut Held<'_>,
) -> Result<StepReport, Error> {
    if guard && stepping.iter().filter(|&&s| s).count() > 1 {
        // vars of several types: no var changes unless every gradient is finite
        for (index, e) in entries.iter().enumerate() {
            let checked = match e.kind {
                Kind::F32 => check(&held.f32, e.local),
                Kind::F64 => check(&held.f64, e.local),
                Kind::Bf16 => check(&held.bf16, e.local),
                Kind::F16 => check(&held.f16, e.local),
            };
            if let Err(error) = checked {
                let name = e.name.clone();
                return Err(Error::Tensor { index, name, error });
            }
        }
    }
    let mut report = StepReport::default();
    let mut failed: Option<Error> = None;
    for (kind, part) in KINDS.into_iter().zip(parts.iter_mut()) {
        if !stepping[kind as usize] {
            continue;
        }
        let stepped = on_core!(&mut part.core, o => step_part(o, held));
        match stepped {
            Ok(r) => merge(&mut report, r),
            Err(e) => {
                let e = global_error(e, &part.members);
                let first = match (&failed, &e) {
                    (None, _) => true,
                    (Some(Error::Tensor { index: a, .. }), Error::Tensor { index: b, .. }) => b < a,
                    _ => false,
                };
                if first {
                    failed = Some(e);
                }
                if guard {
                    break;
                }
            }
        }
    }
    failed.map_or(Ok(report), Err)
}

/// The step of one part's vars.
fn step_part<P: Typed>(
    opt: &mut came::Came<P>,
    held: &mut Held<'_>,
) -> Result<StepReport, OptimizerError> {
    opt.step_some(P::held(held))
}

/// Whether the gradient of a part's var `local`, if it has one, is finite.
fn check<P: came::Element>(
    pairs: &[(&mut [P], Option<&[P]>)],
    local: usize,
) -> Result<(), came::Error> {
    match pairs.get(local) {
        Some((_, Some(grad))) => came::check_gradient(grad),
        _ => Ok(()),
    }
}

/// A part's error, with its tensor's position among all vars.
fn global_error(e: OptimizerError, members: &[usize]) -> Error {
    match e {
        OptimizerError::Tensor { index, name, error } => Error::Tensor {
            index: members.get(index).copied().unwrap_or(index),
            name,
            error,
        },
        e => Error::Optimizer(e),
    }
}

/// Adds a part's report to the step's.
fn merge(report: &mut StepReport, part: StepReport) {
    report.stepped += part.stepped;
    report.clipped += part.clipped;
    report.max_update_rms = match (report.max_update_rms, part.max_update_rms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

impl candle_nn::Optimizer for Came {
    type Config = ParamsCame;

    /// An optimizer over `vars`, in one group of `config`; the vars are named `var.<i>` by
    /// their position (see [`Came::from_varmap`] for named vars).
    fn new(vars: Vec<Var>, config: ParamsCame) -> candle::Result<Self> {
        Ok(Self::from_groups([ParamGroup::new(vars, config)])?)
    }

    /// Steps every var that has a gradient in `grads` ([`Came::step_report`]).
    fn step(&mut self, grads: &GradStore) -> candle::Result<()> {
        self.step_report(grads)?;
        Ok(())
    }

    /// Group 0's learning rate.
    fn learning_rate(&self) -> f64 {
        self.groups()[0].lr
    }

    /// Sets every group's learning rate. This method cannot fail: an lr that is not finite
    /// and > 0 changes nothing and fails the next step (until a valid one is set);
    /// [`Came::try_set_learning_rate`] returns the error at once.
    fn set_learning_rate(&mut self, lr: f64) {
        if self.try_set_learning_rate(lr).is_err() {
            self.bad_lr = Some(lr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device};

    /// candle 0.11 makes every var contiguous; a strided tensor (what a var would be if a
    /// later candle let a view become one) is refused with its dims and strides.
    #[test]
    fn a_strided_tensor_is_refused() {
        let t = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(check_place("w", &t).is_ok());
        let strided = t.t().unwrap();
        match check_place("w", &strided) {
            Err(Error::NonContiguous { name, dims, stride }) => {
                assert_eq!(name, "w");
                assert_eq!(dims, [5, 3]);
                assert_eq!(stride, [1, 5]);
            }
            other => panic!("{other:?}"),
        }
        let narrow = t.narrow(1, 1, 3).unwrap();
        assert!(matches!(
            check_place("n", &narrow),
            Err(Error::NonContiguous { .. })
        ));
        // a contiguous block at an offset is fine: its elements are one run of the buffer
        assert!(check_place("rows", &t.narrow(0, 1, 2).unwrap()).is_ok());
    }
}
