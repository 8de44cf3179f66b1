//! [`ShardedCame`] as an [`Optimizer`]: a drop-in for [`crate::Came`] in a data-parallel
//! trainer.

use std::path::Path;

use super::collective::Collective;
use super::error::ShardError;
use super::step::ShardedCame;
use crate::optim::{CheckpointError, GroupId, Optimizer, StepReport, TensorId, TensorInfo};
use crate::{CameConfig, Float};

/// The whole tensors in, the whole updated tensors out on every rank; this rank keeps and
/// updates only its part of the state. Checkpoints are directories of per-rank files
/// ([`ShardedCame::save_dir`]); the non-finite guard is always on and global.
impl<T: Float, C: Collective> Optimizer for ShardedCame<T, C> {
    type Config = CameConfig;
    type Param = [T];
    type Grad = [T];
    type Error = ShardError;
    type CheckpointError = CheckpointError;

    fn add_group(&mut self, config: CameConfig) -> Result<GroupId, ShardError> {
        Ok(self.registry_mut().add_group(config)?)
    }

    fn groups(&self) -> &[CameConfig] {
        self.registry().groups()
    }

    fn register_in(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, ShardError> {
        self.register_tensor(group, name, dims)
    }

    fn len(&self) -> usize {
        self.registry().tensors().len()
    }

    fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>> {
        self.registry().tensor(id)
    }

    fn learning_rate(&self) -> f64 {
        self.registry().lr()
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<(), ShardError> {
        Ok(self.registry_mut().set_lr(lr)?)
    }

    fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), ShardError> {
        Ok(self.registry_mut().set_group_lr(group, lr)?)
    }

    fn scale_learning_rate(&mut self, factor: f64) -> Result<(), ShardError> {
        Ok(self.registry_mut().scale_lr(factor)?)
    }

    fn step(&mut self, tensors: &mut [(&mut [T], &[T])]) -> Result<StepReport, ShardError> {
        let mut some: std::vec::Vec<(&mut [T], Option<&[T]>)> = tensors
            .iter_mut()
            .map(|(p, g)| (&mut **p, Some(*g)))
            .collect();
        self.step_whole(&mut some)
    }

    fn step_some(
        &mut self,
        tensors: &mut [(&mut [T], Option<&[T]>)],
    ) -> Result<StepReport, ShardError> {
        let mut some: std::vec::Vec<(&mut [T], Option<&[T]>)> =
            tensors.iter_mut().map(|(p, g)| (&mut **p, *g)).collect();
        self.step_whole(&mut some)
    }

    /// This rank's state, its workspace and the exchange buffers.
    fn state_bytes(&self) -> usize {
        self.held_bytes()
    }

    /// `path` is a directory: this rank writes its file there ([`ShardedCame::save_dir`]).
    fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        self.save_dir(path).map(|_| ())
    }

    /// `path` is a directory of per-rank files written on any number of ranks
    /// ([`ShardedCame::load_dir`]).
    fn load(&mut self, path: &Path) -> Result<(), CheckpointError> {
        self.load_dir(path)
    }
}
