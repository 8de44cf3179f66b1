//! Sharded CAME (ZeRO stages 1 and 2): each data-parallel rank keeps and updates only its part
//! of every tensor's optimizer state and parameters, and the result is the same as one process
//! stepping the whole tensors, bit for bit, for any number of ranks.
//!
//! CAME's factored statistics cross the parts: a rank that holds some rows of a matrix cannot
//! compute the column statistics, the mean of the row statistics or the update's norm alone.
//! The step therefore exchanges partial results twice per step, whatever the number of tensors
//! ([`Collective::all_gather`], all tensors packed into one buffer per exchange): after the
//! first sweep (column sums, weighted column sums, new row statistics) and after the second
//! (instability column sums and row statistics). Rows and columns are `O(rows + cols)` per
//! matrix, against `O(rows * cols)` for the momentum a rank no longer keeps.
//!
//! # The shard map
//! One process already cuts each tensor into *lanes* ([`crate::Shape::lanes`]: up to 16 runs of
//! whole rows of a matrix, of whole matrices of a batch, of elements of a vector), computes each
//! lane on its own and adds up what crosses lanes in lane order; that is why its results do not
//! depend on the thread count. Sharding uses the same lanes: [`ShardMap::new`] gives each rank
//! a contiguous run of every tensor's lanes, and after each exchange every rank adds the lanes'
//! parts up in lane order, as one process does. The rule, for tensor `t` with `L` lanes and `N`
//! ranks: the lanes are cut into `N` contiguous runs whose lengths differ by at most one (the
//! longer runs first), and run `p` goes to rank `(p + t) % N`, so that tensors of a single lane
//! (any tensor under 64 Ki elements) are spread over the ranks instead of all landing on rank
//! 0. A rank may own nothing of a tensor. [`ShardMap::elements`] tells a trainer which
//! elements of each tensor a rank steps.
//!
//! ```
//! use came::shard::{LocalGroup, ShardedCame};
//! use came::CameConfig;
//!
//! // two ranks as threads, each stepping only its elements of each tensor
//! let dims: [&[usize]; 2] = [&[300, 256], &[256]];
//! let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
//!     let handles: Vec<_> = LocalGroup::new(2)
//!         .into_iter()
//!         .map(|comm| s.spawn(move || {
//!             let mut opt = ShardedCame::<f32, _>::with_dims(CameConfig::new(1e-3), &dims, comm)?;
//!             let rank = opt.rank();
//!             let mut params: Vec<Vec<f32>> = (0..dims.len())
//!                 .map(|t| opt.map().elements(t, rank).map(|i| i as f32 * 1e-4).collect())
//!                 .collect();
//!             let grads: Vec<Vec<f32>> =
//!                 params.iter().map(|p| p.iter().map(|x| x.sin()).collect()).collect();
//!             let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
//!             let g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(g.as_slice())).collect();
//!             opt.step_shards(&mut p, &g)?;
//!             Ok::<_, came::shard::ShardError>(params)
//!         }))
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
//! });
//! // the matrix's lanes are split between the ranks; the vector is one lane, rank 1's
//! assert!(!results[0][0].is_empty() && !results[1][0].is_empty());
//! assert!(results[0][1].is_empty() && results[1][1].len() == 256);
//! ```

mod checkpoint;
mod collective;
mod error;
mod gather;
mod map;
#[cfg(feature = "mpi")]
#[path = "mpi.rs"]
mod mpi_group;
#[cfg(feature = "nccl")]
mod nccl;
mod optimizer;
mod step;

#[cfg(feature = "nccl")]
pub use self::nccl::{NcclGroup, new_id};
pub use collective::{Collective, CollectiveError, LocalGroup};
pub use error::ShardError;
pub use map::{ShardMap, Split};
/// The `mpi` crate (rsmpi) this module is built with: `mpi::initialize()` starts MPI.
#[cfg(feature = "mpi")]
pub use mpi;
#[cfg(feature = "mpi")]
pub use mpi_group::MpiGroup;
pub use step::ShardedCame;
