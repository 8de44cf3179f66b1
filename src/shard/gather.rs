//! The parameter all-gather after a sharded step, and the trait's step over whole tensors,
//! which ends with it.

use std::vec;
use std::vec::Vec;

use super::collective::Collective;
use super::error::ShardError;
use super::step::ShardedCame;
use crate::Float;
use crate::optim::StepReport;

impl<T: Float, C: Collective> ShardedCame<T, C> {
    /// Gathers the whole tensors from every rank's elements (`local[t]`: this rank's elements of
    /// tensor `t`) into `full[t]` (`shape.numel()` elements), on every rank: the parameter
    /// all-gather after [`ShardedCame::step_shards`].
    ///
    /// # Errors
    /// [`crate::optim::OptimizerError::TensorCount`] or [`crate::optim::OptimizerError::Tensor`]
    /// with a length error (inside [`ShardError::Optimizer`]); [`ShardError::GroupSize`];
    /// [`ShardError::Collective`].
    pub fn all_gather_params(
        &mut self,
        local: &[&[T]],
        full: &mut [&mut [T]],
    ) -> Result<(), ShardError> {
        self.check_group()?;
        self.check_count(local.len(), full.len())?;
        let rank = self.rank();
        for (t, (l, f)) in local.iter().zip(full.iter()).enumerate() {
            let (own, whole) = (self.parts[t].local_len(rank), self.parts[t].numel());
            crate::came::check_tensor_lens(own, l.len(), own)
                .and_then(|()| crate::came::check_tensor_lens(whole, f.len(), whole))
                .map_err(|e| self.registry.error(t, e))?;
        }
        let all = vec![true; self.parts.len()];
        self.sent = 0;
        self.pack(&all, |t| local[t]);
        self.gather_into(&all, full, true)
    }

    /// Puts this rank's elements (`own(t)`) of the tensors marked in `which` into the send
    /// buffer, padded to the longest rank's.
    fn pack<'a>(&mut self, which: &[bool], own: impl Fn(usize) -> &'a [T]) {
        let block = (0..self.map.ranks())
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
    }

    /// All-gathers the packed elements and writes every rank's into `full[t]` (this rank's
    /// too with `copy_own`; else they are there already).
    fn gather_into(
        &mut self,
        which: &[bool],
        full: &mut [&mut [T]],
        copy_own: bool,
    ) -> Result<(), ShardError> {
        let (ranks, block, me) = (self.map.ranks(), self.send.len(), self.rank());
        self.recv.resize(block * ranks, 0);
        self.comm.all_gather(&self.send, &mut self.recv)?;
        self.sent += block;
        let decode = |bytes: &[u8], into: &mut [T]| {
            for (x, b) in into.iter_mut().zip(bytes.chunks_exact(size_of::<T>())) {
                *x = bytemuck::pod_read_unaligned(b);
            }
        };
        let mut columns: Vec<T> = Vec::new();
        for r in 0..ranks {
            let mut data = &self.recv[r * block..(r + 1) * block];
            for (t, f) in full.iter_mut().enumerate().filter(|(t, _)| which[*t]) {
                let part = &self.parts[t];
                let (head, tail) = data.split_at(part.local_len(r) * size_of::<T>());
                data = tail;
                if r == me && !copy_own {
                    continue;
                }
                // a run of the whole tensor is written in place; columns go through a row-major
                // copy of the rank's block
                if let Some(run) = part.run_of(r) {
                    decode(head, &mut f[run]);
                } else {
                    columns.resize(part.local_len(r), T::zero());
                    decode(head, &mut columns);
                    part.scatter(r, &columns, f);
                }
            }
        }
        Ok(())
    }

    /// The trait's step: this rank's elements of the whole `params` (its runs in place, a
    /// matrix split by columns through a copy of its block), then the all-gather.
    pub(crate) fn step_whole(
        &mut self,
        tensors: &mut [(&mut [T], Option<&[T]>)],
    ) -> Result<StepReport, ShardError> {
        self.check_group()?;
        self.registry
            .check_step(tensors.iter().map(|(p, g)| (p.len(), g.map(<[T]>::len))))?;
        let rank = self.rank();
        let runs: Vec<_> = self.parts.iter().map(|p| p.run_of(rank)).collect();
        // the blocks of the matrices split by columns, which are no run: gradients, parameters
        let blocks = |whole: &[T], t: usize| match runs[t] {
            Some(_) => Vec::new(),
            None => self.parts[t].local_of(rank, whole),
        };
        let grad_blocks: Vec<Vec<T>> = (0..tensors.len())
            .map(|t| tensors[t].1.map_or_else(Vec::new, |g| blocks(g, t)))
            .collect();
        let mut param_blocks: Vec<Vec<T>> = (0..tensors.len())
            .map(|t| blocks(tensors[t].0, t))
            .collect();
        let grads: Vec<Option<&[T]>> = tensors
            .iter()
            .enumerate()
            .map(|(t, (_, g))| match (g, &runs[t]) {
                (Some(g), Some(run)) => Some(&g[run.clone()]),
                (Some(_), None) => Some(grad_blocks[t].as_slice()),
                (None, _) => None,
            })
            .collect();
        let report = {
            let mut local: Vec<&mut [T]> = tensors
                .iter_mut()
                .zip(&runs)
                .zip(&mut param_blocks)
                .map(|(((p, _), run), block)| match run {
                    Some(run) => &mut p[run.clone()],
                    None => block.as_mut_slice(),
                })
                .collect();
            self.step_shards(&mut local, &grads)?
        };
        let sent = self.sent;
        let which: Vec<bool> = grads.iter().map(Option::is_some).collect();
        for (t, (p, _)) in tensors.iter_mut().enumerate() {
            if runs[t].is_none() {
                self.parts[t].scatter(rank, &param_blocks[t], p);
            }
        }
        self.pack(&which, |t| match &runs[t] {
            Some(run) => &tensors[t].0[run.clone()],
            None => &param_blocks[t],
        });
        let mut full: Vec<&mut [T]> = tensors.iter_mut().map(|(p, _)| &mut **p).collect();
        self.gather_into(&which, &mut full, false)?;
        self.sent += sent;
        Ok(report)
    }
}
