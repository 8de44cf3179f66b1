//! What a sharded optimizer can fail with.

use std::string::String;
use std::vec::Vec;

use super::CollectiveError;
use crate::optim::OptimizerError;

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
    /// [`crate::Error::NonFiniteGradient`] is in the whole tensor), and nothing changed on any rank,
    /// except as [`crate::Error::NonFiniteState`] says.
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
