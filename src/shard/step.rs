//! One rank's sharded optimizer.

use core::ops::Range;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::collective::Collective;
use super::error::ShardError;
use super::map::ShardMap;
use crate::came::formula::Clip;
use crate::came::shard::{ColumnPart, LanePart, Part, Phase};
use crate::config::Coefficients;
use crate::optim::registry::Registry;
use crate::optim::{GroupId, OptimizerError, StepReport, TensorId};
use crate::{CameConfig, Element, Error, Float, Momentum};

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
    pub(super) registry: Registry<CameConfig>,
    pub(super) comm: C,
    pub(super) map: ShardMap,
    pub(super) parts: Vec<Part<T>>,
    /// this rank's payload of an exchange, and every rank's
    pub(super) send: Vec<u8>,
    pub(super) recv: Vec<u8>,
    /// bytes this rank sent in the collectives of the last step
    pub(super) sent: usize,
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
        self.check_count(params.len(), grads.len())?;
        let rank = self.rank();
        for (t, ((p, g), part)) in params.iter().zip(grads).zip(&self.parts).enumerate() {
            let own = part.local_len(rank);
            crate::came::check_tensor_lens(own, p.len(), g.map_or(own, <[G]>::len))
                .map_err(|e| self.registry.error(t, e))?;
        }
        self.sent = 0;
        let ks = self.coefficients(grads)?;
        // a stepped tensor without elements is a step that changes nothing, as in one process:
        // it takes no sweep and sends nothing
        let active: Vec<bool> = ks
            .iter()
            .zip(&self.parts)
            .map(|(k, p)| k.is_some() && p.numel() > 0)
            .collect();
        let mut clips: Vec<Option<Clip<T>>> = ks
            .iter()
            .zip(&active)
            .map(|(k, &a)| (k.is_some() && !a).then(Clip::none))
            .collect();
        // sweep 1, exchange, the clips
        self.send.clear();
        for (t, part) in self.parts.iter_mut().enumerate() {
            if let (true, Some(k), Some(g)) = (active[t], &ks[t], grads[t]) {
                part.sweep_norm(k, (&mut params[t], g), &mut self.send);
            }
        }
        let layout = self.exchange(Phase::Norm, &active)?;
        for t in (0..self.parts.len()).filter(|&t| active[t]) {
            let (Some(k), Some(grad)) = (&ks[t], grads[t]) else {
                continue;
            };
            let recv = &self.recv;
            let payload = |r: usize| &recv[layout[t][r].clone()];
            match self.parts[t].finish_norm(k, payload) {
                Ok(clip) => clips[t] = clip,
                Err(_) => return Err(self.agreed_error(t, grad)?),
            }
        }
        self.column_norms(&ks, grads, &active, &mut clips)?;
        for (part, &a) in self.parts.iter_mut().zip(&active) {
            if a {
                part.commit_norm();
            }
        }
        // sweep 2, exchange, the instability statistics
        self.send.clear();
        for (t, part) in self.parts.iter_mut().enumerate() {
            if let (true, Some(k), Some(g), Some(clip)) = (active[t], &ks[t], grads[t], clips[t]) {
                part.sweep_momentum(k, clip, (&mut params[t], g), &mut self.send);
            }
        }
        let layout = self.exchange(Phase::Momentum, &active)?;
        for t in (0..self.parts.len()).filter(|&t| active[t]) {
            let Some(k) = &ks[t] else { continue };
            let recv = &self.recv;
            let payload = |r: usize| &recv[layout[t][r].clone()];
            if self.parts[t].finish_momentum(k, payload).is_err() {
                return Err(self.registry.error(t, Error::NonFiniteState).into());
            }
        }
        // sweep 3
        let mut report = StepReport::default();
        for (t, part) in self.parts.iter_mut().enumerate() {
            let (Some(k), Some(g), Some(clip)) = (&ks[t], grads[t], clips[t]) else {
                continue;
            };
            if active[t] {
                let r = &self.registry.tensors()[t];
                let k = k.for_tensor(&self.registry.groups()[r.group], r.step, t);
                part.sweep_apply(&k, clip, (&mut params[t], g));
            }
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
        active: &[bool],
        clips: &mut [Option<Clip<T>>],
    ) -> Result<(), ShardError> {
        let columns = self
            .parts
            .iter()
            .zip(active)
            .any(|(p, &a)| a && matches!(p, Part::Columns(_)));
        if !columns {
            return Ok(());
        }
        self.send.clear();
        for (t, part) in self.parts.iter_mut().enumerate() {
            if let (true, Some(g)) = (active[t], grads[t]) {
                part.sweep_column_norm(g, &mut self.send);
            }
        }
        let layout = self.exchange(Phase::ColumnNorm, active)?;
        for t in (0..self.parts.len()).filter(|&t| active[t]) {
            let (Some(k), Some(grad)) = (&ks[t], grads[t]) else {
                continue;
            };
            let recv = &self.recv;
            let payload = |r: usize| &recv[layout[t][r].clone()];
            match self.parts[t].finish_column_norm(k, payload) {
                Ok(Some(clip)) => clips[t] = Some(clip),
                Ok(None) => {}
                Err(_) => return Err(self.agreed_error(t, grad)?),
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

    /// [`OptimizerError::TensorCount`] unless both slices hold one entry per tensor.
    pub(super) fn check_count(&self, a: usize, b: usize) -> Result<(), ShardError> {
        let expected = self.parts.len();
        match [a, b].into_iter().find(|&n| n != expected) {
            Some(actual) => Err(OptimizerError::TensorCount { expected, actual }.into()),
            None => Ok(()),
        }
    }

    /// [`ShardError::GroupSize`] when the collective's group is not the map's.
    pub(super) fn check_group(&self) -> Result<(), ShardError> {
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

    /// Gathers every rank's payload of `phase` for the `active` tensors (this rank's in
    /// `self.send`, each rank's padded to the longest) into `self.recv`; returns where each
    /// tensor's payload of each rank lies there (`[tensor][rank]`).
    fn exchange(
        &mut self,
        phase: Phase,
        active: &[bool],
    ) -> Result<Vec<Vec<Range<usize>>>, ShardError> {
        let ranks = self.map.ranks();
        let mut layout = vec![Vec::with_capacity(ranks); self.parts.len()];
        let mut block = 0;
        for r in 0..ranks {
            let mut at = 0;
            for ((part, ranges), _) in self
                .parts
                .iter()
                .zip(&mut layout)
                .zip(active)
                .filter(|x| *x.1)
            {
                let len = part.payload_len(phase, r);
                ranges.push(at..at + len);
                at += len;
            }
            block = block.max(at);
        }
        for ranges in &mut layout {
            for (r, range) in ranges.iter_mut().enumerate() {
                *range = r * block + range.start..r * block + range.end;
            }
        }
        debug_assert!(self.send.len() <= block);
        self.send.resize(block, 0);
        self.recv.resize(block * ranks, 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
        self.sent += block;
        Ok(layout)
    }

    /// After a failed sweep 1 of `tensor`: every rank's view of its own data, gathered, gives
    /// the error one process would report, as the step's.
    fn agreed_error<G: Element<Compute = T>>(
        &mut self,
        tensor: usize,
        grad: &[G],
    ) -> Result<ShardError, ShardError> {
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
        let error = match (gradient, state) {
            (Some(index), false) => Error::NonFiniteGradient {
                index: index as usize,
            },
            (Some(index), true) if vector => Error::NonFiniteGradient {
                index: index as usize,
            },
            (_, true) => Error::NonFiniteState,
            (None, false) => Error::NonFiniteUpdate,
        };
        Ok(self.registry.error(tensor, error).into())
    }
}
