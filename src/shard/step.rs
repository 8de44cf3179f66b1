//! One rank's sharded optimizer.

use std::vec;
use std::vec::Vec;

use super::CollectiveError;
use super::collective::Collective;
use super::map::ShardMap;
use crate::came::shard::{Failure, Part, Phase};
use crate::config::Coefficients;
use crate::{CameConfig, Element, Error, Float, Shape};

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
    /// `step` got `found` parameter or gradient slices for `expected` tensors.
    TensorCount {
        /// Tensors of the optimizer.
        expected: usize,
        /// Slices passed.
        found: usize,
    },
    /// The step of tensor `tensor` failed with `error`, the same on every rank (the index of a
    /// [`Error::NonFiniteGradient`] is in the whole tensor). A length error names this rank's
    /// slice, which must hold [`ShardMap::elements`] of the tensor. Nothing changed, except as
    /// [`Error::NonFiniteState`] says.
    Tensor {
        /// The tensor's position.
        tensor: usize,
        /// What failed.
        error: Error,
    },
    /// A collective failed; the ranks' states may now differ (start again from a checkpoint).
    Collective(CollectiveError),
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
            Self::TensorCount { expected, found } => {
                write!(f, "got {found} slices for {expected} tensors")
            }
            Self::Tensor { tensor, error } => write!(f, "tensor {tensor}: {error}"),
            Self::Collective(e) => write!(f, "collective: {e}"),
        }
    }
}

impl core::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Tensor { error, .. } => Some(error),
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

/// One rank's CAME over its shards of a set of tensors: the same update as
/// [`crate::step_all`] on the whole tensors, bit for bit, with this rank's share of the state.
///
/// Parameters are `f32` or `f64` (`T`); gradients any [`Element`] computed in `T`. Momentum is
/// kept in `T` ([`ShardError::PackedMomentum`] otherwise). Each step makes two
/// [`Collective::all_gather`] calls (three when a step fails, to agree on the error).
pub struct ShardedCame<T: Float, C: Collective> {
    config: CameConfig,
    comm: C,
    map: ShardMap,
    parts: Vec<Part<T>>,
    steps: u64,
    send: Vec<u8>,
    recv: Vec<u8>,
}

impl<T: Float, C: Collective> ShardedCame<T, C> {
    /// This rank's optimizer for `shapes`, sharded over `comm`'s group by [`ShardMap::new`];
    /// its state starts at zero, as a fresh [`crate::CameState`] does.
    ///
    /// # Errors
    /// A config error ([`crate::CameConfig::validate`]) as [`ShardError::Tensor`] of tensor 0;
    /// the errors of [`ShardMap::new`].
    pub fn new(config: CameConfig, shapes: &[Shape], comm: C) -> Result<Self, ShardError> {
        config
            .validate()
            .map_err(|error| ShardError::Tensor { tensor: 0, error })?;
        let map = ShardMap::new(shapes, comm.size())?;
        let rank = comm.rank();
        let parts = (0..shapes.len())
            .map(|t| Part::new(&shapes[t], map.owners(t), rank))
            .collect();
        Ok(Self {
            config,
            comm,
            map,
            parts,
            steps: 0,
            send: Vec::new(),
            recv: Vec::new(),
        })
    }

    /// This rank's parts of the tensors.
    pub(crate) fn parts(&self) -> &[Part<T>] {
        &self.parts
    }

    /// This rank's parts of the tensors, to load a checkpoint into.
    pub(crate) fn parts_mut(&mut self) -> &mut [Part<T>] {
        &mut self.parts
    }

    /// Sets the step count (a loaded checkpoint's).
    pub(crate) fn set_step_count(&mut self, steps: u64) {
        self.steps = steps;
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

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// Bytes of optimizer state this rank keeps (its momentum rows, its row statistics and a
    /// copy of the column statistics), without the workspace.
    pub fn state_bytes(&self) -> usize {
        self.parts.iter().map(Part::state_len).sum::<usize>() * size_of::<T>()
    }

    /// One step: `params[t]` and `grads[t]` are this rank's elements of tensor `t`
    /// ([`ShardMap::elements`]), updated in place. Every rank of the group must call it.
    ///
    /// # Errors
    /// [`ShardError::TensorCount`], or [`ShardError::Tensor`] with a length error, before
    /// anything is exchanged; [`ShardError::Tensor`] with the error of the first failing
    /// tensor, the same on every rank: nothing changed on any rank (as [`crate::step_all`]);
    /// [`ShardError::Collective`].
    pub fn step<G: Element<Compute = T>>(
        &mut self,
        params: &mut [&mut [T]],
        grads: &[&[G]],
    ) -> Result<(), ShardError> {
        self.check(params.len(), grads.len())?;
        let rank = self.rank();
        for (tensor, ((p, g), part)) in params.iter().zip(grads).zip(&self.parts).enumerate() {
            let expected = part.elements_of(rank).len();
            crate::came::check_tensor_lens(expected, p.len(), g.len())
                .map_err(|error| ShardError::Tensor { tensor, error })?;
        }
        let k = Coefficients::new(&self.config, self.steps);
        k.check(&self.config)
            .map_err(|error| ShardError::Tensor { tensor: 0, error })?;
        // sweep 1, exchange, the clips
        self.send.clear();
        for ((part, p), g) in self.parts.iter_mut().zip(params.iter_mut()).zip(grads) {
            part.sweep_norm(&k, (p, g), &mut self.send);
        }
        self.exchange(Phase::Norm)?;
        let mut clips = Vec::with_capacity(self.parts.len());
        let mut failed = None;
        for t in 0..self.parts.len() {
            let offsets = self.offsets(Phase::Norm, t);
            let recv = &self.recv;
            let payload = |r: usize| &recv[offsets[r].clone()];
            match self.parts[t].finish_norm(&k, payload) {
                Ok(clip) => clips.push(clip),
                Err(Failure::Norm | Failure::State) => {
                    failed = Some(t);
                    break;
                }
            }
        }
        if let Some(tensor) = failed {
            let error = self.agree_on_error(tensor, grads[tensor])?;
            return Err(ShardError::Tensor { tensor, error });
        }
        for part in &mut self.parts {
            part.commit_norm();
        }
        // sweep 2, exchange, the instability statistics
        self.send.clear();
        for (((part, p), g), &clip) in self
            .parts
            .iter_mut()
            .zip(params.iter_mut())
            .zip(grads)
            .zip(&clips)
        {
            part.sweep_momentum(&k, clip, (p, g), &mut self.send);
        }
        self.exchange(Phase::Momentum)?;
        for t in 0..self.parts.len() {
            let offsets = self.offsets(Phase::Momentum, t);
            let recv = &self.recv;
            let payload = |r: usize| &recv[offsets[r].clone()];
            if self.parts[t].finish_momentum(&k, payload).is_err() {
                return Err(ShardError::Tensor {
                    tensor: t,
                    error: Error::NonFiniteState,
                });
            }
        }
        // sweep 3
        for (t, ((part, p), g)) in self
            .parts
            .iter_mut()
            .zip(params.iter_mut())
            .zip(grads)
            .enumerate()
        {
            let k = k.for_tensor(&self.config, self.steps, t);
            part.sweep_apply(&k, clips[t], (p, g));
        }
        self.steps += 1;
        Ok(())
    }

    /// Gathers the whole tensors from every rank's elements (`local[t]`: this rank's elements of
    /// tensor `t`) into `full[t]` (`shape.numel()` elements), on every rank: the parameter
    /// all-gather after a step.
    ///
    /// # Errors
    /// As [`Self::step`] for the slices' counts and lengths; [`ShardError::Collective`].
    pub fn all_gather_params(
        &mut self,
        local: &[&[T]],
        full: &mut [&mut [T]],
    ) -> Result<(), ShardError> {
        self.check(local.len(), full.len())?;
        let rank = self.rank();
        for (tensor, (l, f)) in local.iter().zip(full.iter()).enumerate() {
            let expected = self.map.elements(tensor, rank).len();
            let numel = self.map.shapes()[tensor].numel();
            crate::came::check_tensor_lens(expected, l.len(), expected)
                .and_then(|()| crate::came::check_tensor_lens(numel, f.len(), numel))
                .map_err(|error| ShardError::Tensor { tensor, error })?;
        }
        let ranks = self.map.ranks();
        let block = (0..ranks)
            .map(|r| {
                (0..local.len())
                    .map(|t| self.map.elements(t, r).len())
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
            * size_of::<T>();
        self.send.clear();
        for l in local {
            self.send.extend_from_slice(bytemuck::cast_slice(l));
        }
        self.send.resize(block, 0);
        self.recv.resize(block * ranks, 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
        for r in 0..ranks {
            let mut data = &self.recv[r * block..(r + 1) * block];
            for (t, f) in full.iter_mut().enumerate() {
                let range = self.map.elements(t, r);
                let (head, tail) = data.split_at(range.len() * size_of::<T>());
                for (x, b) in f[range].iter_mut().zip(head.chunks_exact(size_of::<T>())) {
                    *x = bytemuck::pod_read_unaligned(b);
                }
                data = tail;
            }
        }
        Ok(())
    }

    /// [`ShardError::GroupSize`] or [`ShardError::TensorCount`].
    fn check(&self, a: usize, b: usize) -> Result<(), ShardError> {
        let group = self.comm.size();
        if group != self.map.ranks() {
            return Err(ShardError::GroupSize {
                map: self.map.ranks(),
                group,
            });
        }
        let expected = self.parts.len();
        for found in [a, b] {
            if found != expected {
                return Err(ShardError::TensorCount { expected, found });
            }
        }
        Ok(())
    }

    /// The largest payload a rank sends after `phase`: every rank's block is padded to it.
    fn block_len(&self, phase: Phase) -> usize {
        (0..self.map.ranks())
            .map(|r| {
                self.parts
                    .iter()
                    .map(|p| p.payload_len(phase, r))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Where each rank's payload for tensor `tensor` lies in the gathered buffer.
    fn offsets(&self, phase: Phase, tensor: usize) -> Vec<core::ops::Range<usize>> {
        let block = self.block_len(phase);
        (0..self.map.ranks())
            .map(|r| {
                let before: usize = self.parts[..tensor]
                    .iter()
                    .map(|p| p.payload_len(phase, r))
                    .sum();
                let start = r * block + before;
                start..start + self.parts[tensor].payload_len(phase, r)
            })
            .collect()
    }

    /// Gathers every rank's payload of `phase` (in `self.send`) into `self.recv`.
    fn exchange(&mut self, phase: Phase) -> Result<(), ShardError> {
        let block = self.block_len(phase);
        debug_assert!(self.send.len() <= block);
        self.send.resize(block, 0);
        self.recv.resize(block * self.map.ranks(), 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
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
