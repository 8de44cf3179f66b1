//! One rank's sharded optimizer.

use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use super::CollectiveError;
use super::collective::Collective;
use super::map::ShardMap;
use crate::came::formula::Clip;
use crate::came::shard::{ColumnPart, Failure, LanePart, Part, Phase};
use crate::config::Coefficients;
use crate::optim::registry::Registry;
use crate::optim::{GroupId, OptimizerError, StepReport, TensorId};
use crate::{CameConfig, Element, Error, Float, Momentum};

/// A sharded step failed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ShardError {
    /// A shard map over no ranks.
    NoRanks,
    /// Tensor `tensor` stores its momentum in bf16 or 8 bits, which sharding does not take.
    PackedMomentum {
        /// The tensor's position.
        tensor: usize,
    },
    /// The collective's group is not the map's: `map` ranks in the map, `group` in the group.
    GroupSize {
        /// Ranks of the shard map.
        map: usize,
        /// Ranks of the collective's group.
        group: usize,
    },
    /// A registration, a group, a learning rate, or a step's count or lengths of slices is
    /// wrong (as for [`crate::Came`]); for a step, found before anything is exchanged, with
    /// nothing changed. A step's failure names the tensor with
    /// [`OptimizerError::Tensor`]: its error is the same on every rank (the index of a
    /// [`Error::NonFiniteGradient`] is in the whole tensor), and nothing changed on any rank,
    /// except as [`Error::NonFiniteState`] says.
    Optimizer(OptimizerError),
    /// A collective failed; the ranks' states may now differ (start again from a checkpoint).
    Collective(CollectiveError),
    /// Only a matrix (two dims) can be split by columns.
    NotAMatrix {
        /// The tensor's name.
        name: String,
        /// Its dims.
        dims: Vec<usize>,
    },
}

impl core::fmt::Display for ShardError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRanks => f.write_str("a shard map needs at least one rank"),
            Self::PackedMomentum { tensor } => write!(
                f,
                "tensor {tensor} stores its momentum in bf16 or 8 bits; a sharded step takes full-precision momentum"
            ),
            Self::GroupSize { map, group } => write!(
                f,
                "the shard map has {map} ranks but the collective's group has {group}"
            ),
            Self::Optimizer(e) => write!(f, "{e}"),
            Self::Collective(e) => write!(f, "collective: {e}"),
            Self::NotAMatrix { name, dims } => write!(
                f,
                "tensor {name} has dims {dims:?}: only a matrix (two dims) can be split by columns"
            ),
        }
    }
}

impl core::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Optimizer(e) => Some(e),
            Self::Collective(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CollectiveError> for ShardError {
    fn from(e: CollectiveError) -> Self {
        Self::Collective(e)
    }
}

impl From<OptimizerError> for ShardError {
    fn from(e: OptimizerError) -> Self {
        Self::Optimizer(e)
    }
}

/// One rank's CAME over its shards of the registered tensors: the same update as
/// [`crate::Came`] on the whole tensors, bit for bit, with this rank's share of the state
/// (ZeRO stage 1 and 2; the rule: [`crate::shard`]).
///
/// Two ways to step:
/// - [`crate::Optimizer::step`] (the trait) takes the whole parameters and gradients, as a
///   data-parallel trainer has them after its gradient all-reduce; it steps this rank's
///   elements and all-gathers the parameters, so every rank ends with the whole updated
///   tensors (a drop-in for [`crate::Came`]);
/// - [`ShardedCame::step_shards`] takes only this rank's elements of each tensor
///   ([`ShardMap::elements`]) and leaves the parameter all-gather
///   ([`ShardedCame::all_gather_params`]) to the trainer (ZeRO stage 2 with its own
///   gradient reduce-scatter, or parameters kept sharded).
///
/// Parameters are `f32` or `f64` (`T`), momentum is kept in `T`. The non-finite guard is
/// always on and global: a NaN or an infinity in any rank's gradient fails the step on every
/// rank with the same error, and no rank changes anything. Every rank must make the same calls
/// in the same order (registrations, steps, the tensors a step leaves out).
pub struct ShardedCame<T: Float, C: Collective> {
    registry: Registry<CameConfig>,
    comm: C,
    map: ShardMap,
    parts: Vec<Part<T>>,
    send: Vec<u8>,
    recv: Vec<u8>,
    /// bytes this rank sent in the collectives of the last step
    sent: usize,
}

impl<T: Float, C: Collective> ShardedCame<T, C> {
    /// This rank's optimizer with one group of `config` and no tensors, sharded over `comm`'s
    /// group.
    ///
    /// # Errors
    /// [`OptimizerError::Config`] inside [`ShardError::Optimizer`] for an invalid config.
    pub fn new(config: CameConfig, comm: C) -> Result<Self, ShardError> {
        let registry = Registry::new(config)?;
        let map = ShardMap::new(&[], comm.size())?;
        Ok(Self {
            registry,
            comm,
            map,
            parts: Vec::new(),
            send: Vec::new(),
            recv: Vec::new(),
            sent: 0,
        })
    }

    /// [`ShardedCame::new`] with tensors of `dims` registered in group 0 under the names `"0"`,
    /// `"1"`, ...
    ///
    /// # Errors
    /// As [`ShardedCame::new`] and [`crate::Optimizer::register`].
    pub fn with_dims(config: CameConfig, dims: &[&[usize]], comm: C) -> Result<Self, ShardError> {
        let mut opt = Self::new(config, comm)?;
        for (i, d) in dims.iter().enumerate() {
            crate::Optimizer::register(&mut opt, &i.to_string(), d)?;
        }
        Ok(opt)
    }

    /// The registry, for the trait's implementation.
    pub(crate) fn registry(&self) -> &Registry<CameConfig> {
        &self.registry
    }

    /// The registry, to register into and to load a checkpoint into.
    pub(crate) fn registry_mut(&mut self) -> &mut Registry<CameConfig> {
        &mut self.registry
    }

    /// Registers a tensor in `group`, with a fresh state of this rank's part of it.
    pub(crate) fn register_tensor(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, ShardError> {
        let id = self.registry.register(group, name, dims)?;
        let shape = self.registry.tensors()[id.0].shape;
        debug_assert_eq!(shape.state_layout().momentum(), Momentum::Full);
        let t = self.map.push(shape);
        let part = LanePart::new(&shape, self.map.owners(t), self.comm.rank());
        self.parts.push(Part::Lanes(part));
        Ok(id)
    }

    /// Registers the weight of a tensor-parallel layer, a `rows x cols` matrix split by columns
    /// ([`crate::shard::Split::Columns`]): this rank holds every row of its columns
    /// ([`ShardMap::columns`]), as `rows x width` row-major slices in [`Self::step_shards`];
    /// [`crate::Optimizer::step`] takes and gives back the whole matrix as for any tensor.
    ///
    /// # Errors
    /// [`ShardError::NotAMatrix`] unless `dims` has two dims; then as
    /// [`crate::Optimizer::register_in`].
    pub fn register_columns(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, ShardError> {
        let &[_, cols] = dims else {
            return Err(ShardError::NotAMatrix {
                name: name.to_string(),
                dims: dims.to_vec(),
            });
        };
        let id = self.registry.register(group, name, dims)?;
        let shape = self.registry.tensors()[id.0].shape;
        let t = self.map.push_columns(shape, cols);
        let part = ColumnPart::new(&shape, self.map.owners(t), self.comm.rank());
        self.parts.push(Part::Columns(part));
        Ok(id)
    }

    /// This rank's parts of the tensors.
    pub(crate) fn parts(&self) -> &[Part<T>] {
        &self.parts
    }

    /// This rank's parts of the tensors, to load a checkpoint into.
    pub(crate) fn parts_mut(&mut self) -> &mut [Part<T>] {
        &mut self.parts
    }

    /// The shard map: which elements of each tensor this rank steps.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The collective.
    pub fn collective(&self) -> &C {
        &self.comm
    }

    /// Bytes this rank sent to the collectives in its last step or
    /// [`ShardedCame::all_gather_params`] (each all-gather counted once, with the padding of
    /// every rank's block to the longest), the parameter all-gather of
    /// [`crate::Optimizer::step`] included.
    pub fn sent_bytes(&self) -> usize {
        self.sent
    }

    /// Bytes of optimizer state this rank keeps (its momentum rows, its row statistics and a
    /// copy of the column statistics), without the workspace: what its checkpoint holds.
    pub fn local_state_bytes(&self) -> usize {
        self.parts.iter().map(Part::state_len).sum::<usize>() * size_of::<T>()
    }

    /// [`ShardedCame::local_state_bytes`] plus the workspace and the exchange buffers.
    pub(crate) fn held_bytes(&self) -> usize {
        let work = self.parts.iter().map(Part::work_bytes).sum::<usize>();
        self.local_state_bytes() + work + self.send.capacity() + self.recv.capacity()
    }

    /// One step of this rank's elements: `params[t]` and `grads[t]` hold this rank's elements
    /// of tensor `t` ([`ShardMap::elements`]), updated in place; a tensor with `None` for a
    /// gradient is left out (as [`crate::Optimizer::step_some`] leaves it out). Every rank of
    /// the group must call it, leaving out the same tensors.
    ///
    /// # Errors
    /// [`OptimizerError::TensorCount`] or a length error in [`OptimizerError::Tensor`] before
    /// anything is exchanged; [`OptimizerError::Tensor`] with the error of the first failing
    /// tensor, the same on every rank: nothing changed on any rank; [`ShardError::GroupSize`];
    /// [`ShardError::Collective`]. All inside [`ShardError::Optimizer`] but the last two.
    pub fn step_shards<G: Element<Compute = T>>(
        &mut self,
        params: &mut [&mut [T]],
        grads: &[Option<&[G]>],
    ) -> Result<StepReport, ShardError> {
        self.check_group()?;
        let rank = self.rank();
        if params.len() != self.parts.len() || grads.len() != self.parts.len() {
            let actual = if params.len() == self.parts.len() {
                grads.len()
            } else {
                params.len()
            };
            return Err(OptimizerError::TensorCount {
                expected: self.parts.len(),
                actual,
            }
            .into());
        }
        for (t, ((p, g), part)) in params.iter().zip(grads).zip(&self.parts).enumerate() {
            let own = part.local_len(rank);
            crate::came::check_tensor_lens(own, p.len(), g.map_or(own, <[G]>::len))
                .map_err(|e| self.registry.error(t, e))?;
        }
        self.sent = 0;
        let ks = self.coefficients(grads)?;
        // sweep 1, exchange, the clips
        self.send.clear();
        for ((part, p), (g, k)) in self
            .parts
            .iter_mut()
            .zip(params.iter_mut())
            .zip(grads.iter().zip(&ks))
        {
            if let (Some(g), Some(k)) = (g, k) {
                part.sweep_norm(k, (p, g), &mut self.send);
            }
        }
        self.exchange(Phase::Norm, grads)?;
        let mut clips = vec![None; self.parts.len()];
        for (t, k) in ks.iter().enumerate() {
            let (Some(k), Some(grad)) = (k, grads[t]) else {
                continue;
            };
            let offsets = self.offsets(Phase::Norm, t, grads);
            let recv = &self.recv;
            let payload = |r: usize| &recv[offsets[r].clone()];
            match self.parts[t].finish_norm(k, payload) {
                Ok(clip) => clips[t] = clip,
                Err(Failure::Norm | Failure::State) => {
                    let error = self.agree_on_error(t, grad)?;
                    return Err(self.registry.error(t, error).into());
                }
            }
        }
        self.column_norms(&ks, grads, &mut clips)?;
        for (part, clip) in self.parts.iter_mut().zip(&clips) {
            if clip.is_some() {
                part.commit_norm();
            }
        }
        // sweep 2, exchange, the instability statistics
        self.send.clear();
        for (((part, p), (g, k)), clip) in self
            .parts
            .iter_mut()
            .zip(params.iter_mut())
            .zip(grads.iter().zip(&ks))
            .zip(&clips)
        {
            if let (Some(g), Some(k), Some(clip)) = (g, k, clip) {
                part.sweep_momentum(k, *clip, (p, g), &mut self.send);
            }
        }
        self.exchange(Phase::Momentum, grads)?;
        for (t, k) in ks.iter().enumerate() {
            let Some(k) = k else { continue };
            let offsets = self.offsets(Phase::Momentum, t, grads);
            let recv = &self.recv;
            let payload = |r: usize| &recv[offsets[r].clone()];
            if self.parts[t].finish_momentum(k, payload).is_err() {
                return Err(self.registry.error(t, Error::NonFiniteState).into());
            }
        }
        // sweep 3
        let apply: Vec<Option<Coefficients<T>>> = {
            let (groups, tensors) = (self.registry.groups(), self.registry.tensors());
            ks.iter()
                .zip(tensors)
                .enumerate()
                .map(|(t, (k, r))| k.map(|k| k.for_tensor(&groups[r.group], r.step, t)))
                .collect()
        };
        let mut report = StepReport::default();
        let stepped = self.parts.iter_mut().zip(params.iter_mut()).zip(grads);
        for (((part, p), g), (k, clip)) in stepped.zip(apply.iter().zip(&clips)) {
            let (Some(g), Some(k), Some(clip)) = (g, k, clip) else {
                continue;
            };
            part.sweep_apply(k, *clip, (p, g));
            report.add(Some((clip.rms, clip.d > T::one())));
        }
        for (t, g) in grads.iter().enumerate() {
            if g.is_some() {
                self.registry.tensors_mut()[t].step += 1;
            }
        }
        Ok(report)
    }

    /// The clips of the stepped matrices split by columns: their norm's parts, exchanged.
    fn column_norms<G: Element<Compute = T>>(
        &mut self,
        ks: &[Option<Coefficients<T>>],
        grads: &[Option<&[G]>],
        clips: &mut [Option<Clip<T>>],
    ) -> Result<(), ShardError> {
        let columns = self
            .parts
            .iter()
            .zip(grads)
            .any(|(p, g)| g.is_some() && matches!(p, Part::Columns(_)));
        if !columns {
            return Ok(());
        }
        self.send.clear();
        for (part, g) in self.parts.iter_mut().zip(grads) {
            if let Some(g) = g {
                part.sweep_column_norm(g, &mut self.send);
            }
        }
        self.exchange(Phase::ColumnNorm, grads)?;
        for (t, k) in ks.iter().enumerate() {
            let (Some(k), Some(grad)) = (k, grads[t]) else {
                continue;
            };
            let offsets = self.offsets(Phase::ColumnNorm, t, grads);
            let recv = &self.recv;
            let payload = |r: usize| &recv[offsets[r].clone()];
            match self.parts[t].finish_column_norm(k, payload) {
                Ok(Some(clip)) => clips[t] = Some(clip),
                Ok(None) => {}
                Err(_) => {
                    let error = self.agree_on_error(t, grad)?;
                    return Err(self.registry.error(t, error).into());
                }
            }
        }
        Ok(())
    }

    /// Each stepped tensor's coefficients, checked.
    fn coefficients<G>(
        &self,
        grads: &[Option<&[G]>],
    ) -> Result<Vec<Option<Coefficients<T>>>, ShardError> {
        let groups = self.registry.groups();
        self.registry
            .tensors()
            .iter()
            .zip(grads)
            .enumerate()
            .map(|(t, (r, g))| {
                if g.is_none() {
                    return Ok(None);
                }
                let config = &groups[r.group];
                let k = Coefficients::new(config, r.step);
                k.check(config).map_err(|e| self.registry.error(t, e))?;
                Ok(Some(k))
            })
            .collect()
    }

    /// Gathers the whole tensors from every rank's elements (`local[t]`: this rank's elements of
    /// tensor `t`) into `full[t]` (`shape.numel()` elements), on every rank: the parameter
    /// all-gather after [`ShardedCame::step_shards`].
    ///
    /// # Errors
    /// [`OptimizerError::TensorCount`] or [`OptimizerError::Tensor`] with a length error
    /// (inside [`ShardError::Optimizer`]); [`ShardError::GroupSize`];
    /// [`ShardError::Collective`].
    pub fn all_gather_params(
        &mut self,
        local: &[&[T]],
        full: &mut [&mut [T]],
    ) -> Result<(), ShardError> {
        self.check_group()?;
        let rank = self.rank();
        if local.len() != self.parts.len() || full.len() != self.parts.len() {
            return Err(OptimizerError::TensorCount {
                expected: self.parts.len(),
                actual: if local.len() == self.parts.len() {
                    full.len()
                } else {
                    local.len()
                },
            }
            .into());
        }
        for (t, (l, f)) in local.iter().zip(full.iter()).enumerate() {
            let (own, whole) = (self.parts[t].local_len(rank), self.parts[t].numel());
            crate::came::check_tensor_lens(own, l.len(), own)
                .and_then(|()| crate::came::check_tensor_lens(whole, f.len(), whole))
                .map_err(|e| self.registry.error(t, e))?;
        }
        let all = vec![true; self.parts.len()];
        self.sent = 0;
        self.gather_params(&all, |t| local[t], full, true)
    }

    /// All-gathers the tensors marked in `which`: this rank's elements come from `own(t)`,
    /// everyone's go to `full[t]` (this rank's too with `copy_own`; else they are there).
    fn gather_params<'a>(
        &mut self,
        which: &[bool],
        own: impl Fn(usize) -> &'a [T],
        full: &mut [&mut [T]],
        copy_own: bool,
    ) -> Result<(), ShardError> {
        let ranks = self.map.ranks();
        let block = (0..ranks)
            .map(|r| {
                (0..self.parts.len())
                    .filter(|&t| which[t])
                    .map(|t| self.parts[t].local_len(r))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
            * size_of::<T>();
        self.send.clear();
        for t in (0..self.parts.len()).filter(|&t| which[t]) {
            self.send.extend_from_slice(bytemuck::cast_slice(own(t)));
        }
        self.send.resize(block, 0);
        self.recv.resize(block * ranks, 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
        self.sent += block;
        let me = self.rank();
        let mut values: Vec<T> = Vec::new();
        for r in 0..ranks {
            let mut data = &self.recv[r * block..(r + 1) * block];
            for (t, f) in full.iter_mut().enumerate().filter(|(t, _)| which[*t]) {
                let len = self.parts[t].local_len(r);
                let (head, tail) = data.split_at(len * size_of::<T>());
                data = tail;
                if r == me && !copy_own {
                    continue;
                }
                values.clear();
                values.extend(
                    head.chunks_exact(size_of::<T>())
                        .map(bytemuck::pod_read_unaligned::<T>),
                );
                self.parts[t].scatter(r, &values, f);
            }
        }
        Ok(())
    }

    /// The trait's step: this rank's elements of the whole `params`, then the all-gather.
    pub(crate) fn step_whole(
        &mut self,
        tensors: &mut [(&mut [T], Option<&[T]>)],
    ) -> Result<StepReport, ShardError> {
        self.check_group()?;
        self.registry
            .check_step(tensors.iter().map(|(p, g)| (p.len(), g.map(<[T]>::len))))?;
        let rank = self.rank();
        // a rank's elements are a run of the whole tensor, or (split by columns) copied out
        let runs: Vec<Option<core::ops::Range<usize>>> =
            self.parts.iter().map(|p| p.run_of(rank)).collect();
        let grad_copies: Vec<Option<Vec<T>>> = tensors
            .iter()
            .zip(&self.parts)
            .zip(&runs)
            .map(|(((_, g), part), run)| match (g, run) {
                (Some(g), None) => Some(part.local_of(rank, g)),
                _ => None,
            })
            .collect();
        let grads: Vec<Option<&[T]>> = tensors
            .iter()
            .zip(&runs)
            .zip(&grad_copies)
            .map(|(((_, g), run), copy)| match (g, run) {
                (Some(g), Some(r)) => Some(&g[r.clone()]),
                (Some(_), None) => copy.as_deref(),
                (None, _) => None,
            })
            .collect();
        let which: Vec<bool> = grads.iter().map(Option::is_some).collect();
        let mut copies: Vec<Vec<T>> = tensors
            .iter()
            .zip(&self.parts)
            .zip(&runs)
            .map(|(((p, _), part), run)| {
                if run.is_none() {
                    part.local_of(rank, p)
                } else {
                    Vec::new()
                }
            })
            .collect();
        let report = {
            let mut local: Vec<&mut [T]> = tensors
                .iter_mut()
                .zip(&runs)
                .zip(&mut copies)
                .map(|(((p, _), run), copy)| match run {
                    Some(r) => &mut p[r.clone()],
                    None => copy.as_mut_slice(),
                })
                .collect();
            self.step_shards(&mut local, &grads)?
        };
        let sent = self.sent;
        // this rank's updated elements: in place in the whole tensors, or copied back there
        let own: Vec<Vec<T>> = tensors
            .iter_mut()
            .zip(&self.parts)
            .zip(&runs)
            .zip(copies)
            .map(|((((p, _), part), run), copy)| {
                if let Some(r) = run {
                    p[r.clone()].to_vec()
                } else {
                    part.scatter(rank, &copy, p);
                    copy
                }
            })
            .collect();
        let mut full: Vec<&mut [T]> = tensors.iter_mut().map(|(p, _)| &mut **p).collect();
        self.gather_params(&which, |t| &own[t], &mut full, false)?;
        self.sent += sent;
        Ok(report)
    }

    /// [`ShardError::GroupSize`] when the collective's group is not the map's.
    fn check_group(&self) -> Result<(), ShardError> {
        let group = self.comm.size();
        if group == self.map.ranks() {
            Ok(())
        } else {
            Err(ShardError::GroupSize {
                map: self.map.ranks(),
                group,
            })
        }
    }

    /// The largest payload a rank sends after `phase`: every rank's block is padded to it.
    fn block_len<G>(&self, phase: Phase, grads: &[Option<&[G]>]) -> usize {
        (0..self.map.ranks())
            .map(|r| {
                self.parts
                    .iter()
                    .zip(grads)
                    .filter(|(_, g)| g.is_some())
                    .map(|(p, _)| p.payload_len(phase, r))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Where each rank's payload for tensor `tensor` lies in the gathered buffer.
    fn offsets<G>(
        &self,
        phase: Phase,
        tensor: usize,
        grads: &[Option<&[G]>],
    ) -> Vec<core::ops::Range<usize>> {
        let block = self.block_len(phase, grads);
        (0..self.map.ranks())
            .map(|r| {
                let before: usize = self.parts[..tensor]
                    .iter()
                    .zip(grads)
                    .filter(|(_, g)| g.is_some())
                    .map(|(p, _)| p.payload_len(phase, r))
                    .sum();
                let start = r * block + before;
                start..start + self.parts[tensor].payload_len(phase, r)
            })
            .collect()
    }

    /// Gathers every rank's payload of `phase` (in `self.send`) into `self.recv`.
    fn exchange<G>(&mut self, phase: Phase, grads: &[Option<&[G]>]) -> Result<(), ShardError> {
        let block = self.block_len(phase, grads);
        debug_assert!(self.send.len() <= block);
        self.send.resize(block, 0);
        self.recv.resize(block * self.map.ranks(), 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
        self.sent += block;
        Ok(())
    }

    /// After a failed sweep 1 of `tensor`: every rank's view of its own data, gathered, gives
    /// the error one process would report.
    fn agree_on_error<G: Element<Compute = T>>(
        &mut self,
        tensor: usize,
        grad: &[G],
    ) -> Result<Error, ShardError> {
        let local = self.parts[tensor].local_error(grad);
        let (code, index) = match local {
            Error::NonFiniteState => (1u64, 0u64),
            Error::NonFiniteGradient { index } => (2, index as u64),
            _ => (0, 0),
        };
        let mut send = code.to_le_bytes().to_vec();
        send.extend_from_slice(&index.to_le_bytes());
        let mut recv = vec![0u8; 16 * self.map.ranks()];
        self.comm.all_gather(&send, &mut recv)?;
        self.sent += send.len();
        let seen: Vec<(u64, u64)> = recv
            .chunks_exact(16)
            .map(|c| {
                let (a, b) = c.split_at(8);
                (
                    u64::from_le_bytes(a.try_into().expect("eight bytes")),
                    u64::from_le_bytes(b.try_into().expect("eight bytes")),
                )
            })
            .collect();
        let state = seen.iter().any(|s| s.0 == 1);
        let gradient = seen.iter().filter(|s| s.0 == 2).map(|s| s.1).min();
        let vector = matches!(
            self.map.shapes()[tensor].layout(),
            crate::Layout::Vector { .. }
        );
        Ok(match (gradient, state) {
            (Some(index), false) => Error::NonFiniteGradient {
                index: index as usize,
            },
            (Some(index), true) if vector => Error::NonFiniteGradient {
                index: index as usize,
            },
            (_, true) => Error::NonFiniteState,
            (None, false) => Error::NonFiniteUpdate,
        })
    }
}
