//! The owned optimizer for trainers: many named tensors in parameter groups, their state,
//! threads, schedules, checkpoints and a non-finite gradient guard.

mod checkpoint;
mod rule;

use std::fmt;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use rayon::prelude::*;

pub use checkpoint::CheckpointError;
pub use rule::Rule;

use crate::adamw::AdamWConfig;
use crate::lanes::{Executor, Serial};
use crate::parallel::Rayon;
use crate::{CameConfig, Error, Float, Pool, Shape};

/// The CAME optimizer over owned state: `Came::<f32>::new(CameConfig::new(1e-3))`.
pub type Came<T> = Optimizer<T, CameConfig>;

/// The AdamW optimizer over owned state, with the same interface as [`Came`].
pub type AdamW<T> = Optimizer<T, AdamWConfig>;

/// A parameter group: its position in [`Optimizer::groups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

/// A registered tensor: its position in registration order, which is the order
/// [`Optimizer::step`] takes parameters and gradients in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub usize);

/// What went wrong in the owned optimizer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptimizerError {
    /// A group's hyperparameters are invalid (see [`Error`] for each case).
    Config(Error),
    /// No group with this id.
    UnknownGroup(usize),
    /// A tensor with this name is registered already.
    DuplicateName(String),
    /// The tensor's shape is too large (see [`Error::ShapeOverflow`]).
    Shape {
        /// The tensor's name.
        name: String,
        /// The shape error.
        error: Error,
    },
    /// [`Optimizer::step`] got this many `(param, grad)` pairs for `expected` registered
    /// tensors. Nothing was changed.
    TensorCount {
        /// Registered tensors.
        expected: usize,
        /// Pairs passed.
        actual: usize,
    },
    /// One tensor's step failed. With the non-finite guard on (the default), nothing at all
    /// was changed (see [`Optimizer::set_nonfinite_guard`]).
    Tensor {
        /// Position of the tensor in registration order.
        index: usize,
        /// The tensor's name.
        name: String,
        /// What went wrong, e.g. [`Error::NonFiniteGradient`] with the element's position.
        error: Error,
    },
}

/// The shape of a tensor about to be registered, once its group is known to exist (one of
/// `groups`) and its name to be new (not among `names`).
pub(crate) fn new_tensor_shape<'a>(
    groups: usize,
    mut names: impl Iterator<Item = &'a str>,
    group: GroupId,
    name: &str,
    dims: &[usize],
) -> Result<Shape, OptimizerError> {
    if group.0 >= groups {
        return Err(OptimizerError::UnknownGroup(group.0));
    }
    if names.any(|n| n == name) {
        return Err(OptimizerError::DuplicateName(name.to_string()));
    }
    Shape::new(dims).map_err(|error| OptimizerError::Shape {
        name: name.to_string(),
        error,
    })
}

impl fmt::Display for OptimizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerError::Config(e) => write!(f, "invalid config: {e}"),
            OptimizerError::UnknownGroup(g) => write!(f, "no parameter group {g}"),
            OptimizerError::DuplicateName(n) => write!(f, "tensor {n:?} is registered already"),
            OptimizerError::Shape { name, error } => write!(f, "tensor {name:?}: {error}"),
            OptimizerError::TensorCount { expected, actual } => write!(
                f,
                "step got {actual} (param, grad) pairs for {expected} registered tensors"
            ),
            OptimizerError::Tensor { index, name, error } => {
                write!(f, "tensor {index} ({name:?}): {error}")
            }
        }
    }
}

impl std::error::Error for OptimizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptimizerError::Config(e)
            | OptimizerError::Shape { error: e, .. }
            | OptimizerError::Tensor { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// One registered tensor and its state.
#[derive(Debug)]
struct Entry<T: Float, C: Rule> {
    name: String,
    dims: Vec<usize>,
    shape: Shape,
    group: usize,
    state: Vec<T>,
    step: u64,
    pending: Option<C::Pending<T>>,
}

/// An optimizer that owns the state of many tensors: CAME ([`Came`]) or AdamW ([`AdamW`]).
///
/// Tensors are registered by name and shape, each in a parameter group whose config
/// (learning rate, weight decay, betas, ...) applies to it. [`Optimizer::step`] then takes the
/// trainer's parameters and gradients as borrowed slices, in registration order, and steps
/// every tensor, on as many threads as the optimizer was given, with bit-identical results for
/// any thread count.
///
/// ```
/// use came::{Came, CameConfig};
///
/// let mut opt = Came::<f32>::new(CameConfig::new(1e-3))?;
/// let no_decay = opt.add_group(CameConfig::new(1e-3).with_weight_decay(0.0))?;
/// opt.register("w", &[4, 3])?;
/// opt.register_in(no_decay, "b", &[3])?;
///
/// let (mut w, mut b) = (vec![0.5f32; 12], vec![0.0f32; 3]);
/// for step in 0..10 {
///     opt.set_lr(1e-3 * (1.0 - step as f64 / 10.0).max(0.1))?; // a schedule
///     let (gw, gb) = (w.clone(), vec![0.1f32; 3]);
///     opt.step(&mut [(&mut w, &gw), (&mut b, &gb)])?;
/// }
/// assert!(opt.state_bytes() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Optimizer<T: Float, C: Rule> {
    groups: Vec<C>,
    tensors: Vec<Entry<T, C>>,
    pool: Pool,
    guard: bool,
}

impl<T: Float, C: Rule> Optimizer<T, C> {
    /// An optimizer with one parameter group of `config` (group 0, where
    /// [`Optimizer::register`] puts tensors), stepping on the calling thread, with the
    /// non-finite guard on.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] if `config` is invalid.
    pub fn new(config: C) -> Result<Self, OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        Ok(Self {
            groups: vec![config],
            tensors: Vec::new(),
            pool: Pool::serial(),
            guard: true,
        })
    }

    /// Steps on `threads` threads (0: one per CPU). Results do not depend on it.
    ///
    /// # Errors
    /// If the operating system refuses to start the threads.
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

    /// Adds a parameter group.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] if `config` is invalid.
    pub fn add_group(&mut self, config: C) -> Result<GroupId, OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        self.groups.push(config);
        Ok(GroupId(self.groups.len() - 1))
    }

    /// The groups' configs, by [`GroupId`].
    #[must_use]
    pub fn groups(&self) -> &[C] {
        &self.groups
    }

    /// Replaces a group's config (all of its hyperparameters).
    ///
    /// # Errors
    /// [`OptimizerError::UnknownGroup`], [`OptimizerError::Config`].
    pub fn set_group_config(&mut self, group: GroupId, config: C) -> Result<(), OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        let slot = self
            .groups
            .get_mut(group.0)
            .ok_or(OptimizerError::UnknownGroup(group.0))?;
        *slot = config;
        Ok(())
    }

    /// Sets the learning rate of every group, e.g. from a schedule before each step.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] if `lr` is not finite and positive; nothing is changed.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), OptimizerError> {
        crate::config::check_lr(lr).map_err(OptimizerError::Config)?;
        for g in &mut self.groups {
            g.set_lr(lr);
        }
        Ok(())
    }

    /// Sets one group's learning rate.
    ///
    /// # Errors
    /// [`OptimizerError::UnknownGroup`], [`OptimizerError::Config`].
    pub fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), OptimizerError> {
        crate::config::check_lr(lr).map_err(OptimizerError::Config)?;
        self.groups
            .get_mut(group.0)
            .ok_or(OptimizerError::UnknownGroup(group.0))?
            .set_lr(lr);
        Ok(())
    }

    /// Registers a tensor in group 0; its state starts fresh (zero).
    ///
    /// # Errors
    /// [`OptimizerError::DuplicateName`], [`OptimizerError::Shape`].
    pub fn register(&mut self, name: &str, dims: &[usize]) -> Result<TensorId, OptimizerError> {
        self.register_in(GroupId(0), name, dims)
    }

    /// Registers a tensor in a group; its state starts fresh (zero).
    ///
    /// # Errors
    /// [`OptimizerError::UnknownGroup`], [`OptimizerError::DuplicateName`],
    /// [`OptimizerError::Shape`].
    pub fn register_in(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, OptimizerError> {
        let names = self.tensors.iter().map(|t| t.name.as_str());
        let shape = new_tensor_shape(self.groups.len(), names, group, name, dims)?;
        self.tensors.push(Entry {
            name: name.to_string(),
            dims: dims.to_vec(),
            shape,
            group: group.0,
            state: vec![T::zero(); C::state_len(&shape)],
            step: 0,
            pending: None,
        });
        Ok(TensorId(self.tensors.len() - 1))
    }

    /// Number of registered tensors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// A registered tensor's name, dims, group and step count.
    #[must_use]
    pub fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>> {
        self.tensors.get(id.0).map(|t| TensorInfo {
            name: &t.name,
            dims: &t.dims,
            group: GroupId(t.group),
            step: t.step,
        })
    }

    /// The named pieces of a tensor's state under the reference's names (`exp_avg`, ...),
    /// with their shapes.
    #[must_use]
    pub fn state(&self, id: TensorId) -> Option<Vec<StatePiece<'_, T>>> {
        let t = self.tensors.get(id.0)?;
        Some(
            C::pieces(&t.dims, &t.shape)
                .into_iter()
                .map(|p| StatePiece {
                    name: p.key,
                    dims: p.dims,
                    values: &t.state[p.range],
                })
                .collect(),
        )
    }

    /// Bytes of optimizer state held for all tensors (including CAME's scratch space).
    #[must_use]
    pub fn state_bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.state.len() * size_of::<T>())
            .sum()
    }

    /// A tensor's whole state buffer (the layout of [`crate::CameState`] for CAME).
    #[cfg(feature = "cuda")]
    pub(crate) fn state_buffer(&self, id: TensorId) -> &[T] {
        &self.tensors[id.0].state
    }

    /// A tensor's whole state buffer, writable.
    #[cfg(feature = "cuda")]
    pub(crate) fn state_buffer_mut(&mut self, id: TensorId) -> &mut [T] {
        &mut self.tensors[id.0].state
    }

    /// Sets a tensor's step count.
    #[cfg(feature = "cuda")]
    pub(crate) fn set_step(&mut self, id: TensorId, step: u64) {
        self.tensors[id.0].step = step;
    }

    /// Zeroes every tensor's state and step count: a fresh optimizer with the same tensors.
    pub fn reset(&mut self) {
        for t in &mut self.tensors {
            t.state.fill(T::zero());
            t.step = 0;
            t.pending = None;
        }
    }

    /// Steps every tensor, given `(param, grad)` for each in registration order.
    ///
    /// # Errors
    /// - [`OptimizerError::TensorCount`] if the number of pairs is wrong (nothing changed);
    /// - [`OptimizerError::Tensor`] for the first tensor that fails: a slice of the wrong
    ///   length (nothing changed), a non-finite gradient, an overflow or a corrupt state.
    ///   With the guard on (the default) nothing is changed by those either, except after a
    ///   corrupt momentum ([`Error::NonFiniteState`]); with it off, the other tensors take
    ///   their step.
    pub fn step(&mut self, tensors: &mut [(&mut [T], &[T])]) -> Result<(), OptimizerError> {
        if tensors.len() != self.tensors.len() {
            return Err(OptimizerError::TensorCount {
                expected: self.tensors.len(),
                actual: tensors.len(),
            });
        }
        let groups = &self.groups;
        for (i, (entry, (p, g))) in self.tensors.iter().zip(tensors.iter()).enumerate() {
            let n = entry.shape.numel();
            crate::step::check_tensor_lens(n, p.len(), g.len())
                .map_err(|error| tensor_error(i, entry, error))?;
        }
        let guard = self.guard;
        let entries = &mut self.tensors;
        let first = match self.pool.rayon() {
            None => run(&Serial, groups, guard, entries, tensors),
            Some(pool) => pool.install(|| run(&Rayon, groups, guard, entries, tensors)),
        };
        match first {
            Some((i, error)) => Err(tensor_error(i, &self.tensors[i], error)),
            None => Ok(()),
        }
    }
}

fn tensor_error<T: Float, C: Rule>(i: usize, entry: &Entry<T, C>, error: Error) -> OptimizerError {
    OptimizerError::Tensor {
        index: i,
        name: entry.name.clone(),
        error,
    }
}

/// The error of the lower-numbered tensor.
fn first(a: Option<(usize, Error)>, b: Option<(usize, Error)>) -> Option<(usize, Error)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Steps all tensors on `exec` (serially, or inside a rayon pool with tensors in parallel).
fn run<T: Float, C: Rule, E: Executor>(
    exec: &E,
    groups: &[C],
    guard: bool,
    entries: &mut [Entry<T, C>],
    tensors: &mut [(&mut [T], &[T])],
) -> Option<(usize, Error)> {
    let prepare = |i: usize, e: &mut Entry<T, C>, (p, g): &mut (&mut [T], &[T])| {
        let config = &groups[e.group];
        match config.prepare(exec, &e.shape, (&mut **p, *g), &mut e.state, e.step) {
            Ok(pending) => {
                e.pending = Some(pending);
                None
            }
            Err(error) => {
                e.pending = None;
                Some((i, error))
            }
        }
    };
    let finish = |i: usize, e: &mut Entry<T, C>, (p, g): &mut (&mut [T], &[T])| {
        let pending = e.pending.take()?;
        match groups[e.group].finish(exec, &e.shape, pending, (&mut **p, *g), &mut e.state) {
            Ok(()) => {
                e.step = e.step.saturating_add(1);
                None
            }
            Err(error) => Some((i, error)),
        }
    };
    let parallel = exec.parallel();
    if guard {
        if let Some(e) = each(parallel, &prepare, entries, tensors) {
            for e in entries.iter_mut() {
                e.pending = None;
            }
            return Some(e);
        }
        each(parallel, &finish, entries, tensors)
    } else {
        let both = |i: usize, e: &mut Entry<T, C>, t: &mut (&mut [T], &[T])| {
            prepare(i, e, t).or_else(|| finish(i, e, t))
        };
        each(parallel, &both, entries, tensors)
    }
}

/// One named piece of a tensor's state, as [`Optimizer::state`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatePiece<'a, T> {
    /// The reference's name: `exp_avg`, `exp_avg_sq_row`, ...
    pub name: &'static str,
    /// Its shape, as the reference's state tensor has it.
    pub dims: Vec<usize>,
    /// Its values, row-major.
    pub values: &'a [T],
}

/// Runs `f` on every tensor, in parallel on the current rayon pool when `parallel`; returns
/// the error of the lowest-numbered tensor that failed.
fn each<T, C, F>(
    parallel: bool,
    f: &F,
    entries: &mut [Entry<T, C>],
    tensors: &mut [(&mut [T], &[T])],
) -> Option<(usize, Error)>
where
    T: Float,
    C: Rule,
    F: Fn(usize, &mut Entry<T, C>, &mut (&mut [T], &[T])) -> Option<(usize, Error)> + Sync,
{
    if parallel {
        entries
            .par_iter_mut()
            .zip(tensors.par_iter_mut())
            .enumerate()
            .with_max_len(1)
            .map(|(i, (e, t))| f(i, e, t))
            .reduce(|| None, first)
    } else {
        entries
            .iter_mut()
            .zip(tensors.iter_mut())
            .enumerate()
            .fold(None, |acc, (i, (e, t))| first(acc, f(i, e, t)))
    }
}

/// What [`Optimizer::tensor`] reports of a registered tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The name it was registered under.
    pub name: &'a str,
    /// Its dims.
    pub dims: &'a [usize],
    /// Its parameter group.
    pub group: GroupId,
    /// Steps it has taken.
    pub step: u64,
}
