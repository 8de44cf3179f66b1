//! The collectives a sharded step needs, and an in-process implementation.

use std::string::String;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::vec;
use std::vec::Vec;

/// A collective failed. Every implementation maps its engine's errors here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectiveError {
    /// Ranks passed buffers of different lengths to one collective (`expected`: this rank's
    /// length, `found`: rank `rank`'s).
    LengthMismatch {
        /// The rank whose buffer differs.
        rank: usize,
        /// This rank's length, in bytes.
        expected: usize,
        /// Rank `rank`'s length, in bytes.
        found: usize,
    },
    /// A receive buffer is not `size()` times the send buffer.
    ReceiveLength {
        /// `size() * send.len()`.
        expected: usize,
        /// The receive buffer's length.
        found: usize,
    },
    /// Another rank of an in-process group panicked or was dropped mid-collective.
    PeerLost,
    /// Rank `rank` could not take its part in this collective (its own error says why); the
    /// collective did not happen on any rank.
    PeerFailed {
        /// The rank that failed.
        rank: usize,
    },
    /// The engine (MPI, NCCL) reported an error; its own description.
    Engine(String),
}

impl core::fmt::Display for CollectiveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::LengthMismatch {
                rank,
                expected,
                found,
            } => write!(
                f,
                "rank {rank} sent {found} bytes to a collective where this rank sent {expected}"
            ),
            Self::ReceiveLength { expected, found } => write!(
                f,
                "the receive buffer holds {found} bytes, the collective gathers {expected}"
            ),
            Self::PeerLost => f.write_str("a rank of the in-process group was lost"),
            Self::PeerFailed { rank } => {
                write!(f, "rank {rank} could not take its part in the collective")
            }
            Self::Engine(e) => write!(f, "the collective engine failed: {e}"),
        }
    }
}

impl core::error::Error for CollectiveError {}

/// The communication a sharded step is written against: a group of `size()` ranks, this one
/// being `rank()`.
///
/// Every rank must call the same collectives in the same order with buffers of the same
/// length. Implementations: [`LocalGroup`] (ranks as threads of one process), `MpiGroup`
/// (feature `mpi`, ranks as MPI processes).
pub trait Collective {
    /// This rank, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Every rank's `send` (the same length on every rank), one after another in rank order,
    /// into `recv` (`size() * send.len()` bytes) on every rank: MPI's `Allgather`, NCCL's
    /// `ncclAllGather`.
    ///
    /// # Errors
    /// [`CollectiveError::ReceiveLength`] for a wrong `recv`; what the engine reports.
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), CollectiveError>;
}

/// Checks a gather's receive buffer.
pub(crate) fn check_receive(size: usize, send: usize, recv: usize) -> Result<(), CollectiveError> {
    if size * send == recv {
        Ok(())
    } else {
        Err(CollectiveError::ReceiveLength {
            expected: size * send,
            found: recv,
        })
    }
}

/// Ranks as threads of one process: for tests, and for trainers that run their ranks in one
/// process. Each rank's handle goes to its own thread.
///
/// ```
/// use came::shard::{Collective, LocalGroup};
/// let ranks = LocalGroup::new(3);
/// let gathered: Vec<Vec<u8>> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .iter()
///         .map(|rank| s.spawn(move || {
///             let mut recv = vec![0u8; 3];
///             rank.all_gather(&[rank.rank() as u8 * 10], &mut recv).map(|()| recv)
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert!(gathered.iter().all(|g| g == &[0, 10, 20]));
/// ```
#[derive(Clone, Debug)]
pub struct LocalGroup {
    shared: Arc<Shared>,
    rank: usize,
}

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    /// every rank's send buffer, `None` where the rank could not take part
    slots: Mutex<Vec<Option<Vec<u8>>>>,
}

impl LocalGroup {
    /// The handles of a group of `size` ranks, in rank order.
    ///
    /// # Panics
    /// If `size` is 0.
    #[must_use]
    pub fn new(size: usize) -> Vec<Self> {
        assert!(size > 0, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![None; size]),
        });
        (0..size)
            .map(|rank| Self {
                shared: Arc::clone(&shared),
                rank,
            })
            .collect()
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), CollectiveError> {
        let size = self.size();
        // a rank with a wrong receive buffer still takes part, so that the others do not wait
        // for it forever; they learn that it failed
        let receive = check_receive(size, send.len(), recv.len());
        {
            let mut slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| CollectiveError::PeerLost)?;
            slots[self.rank] = receive.is_ok().then(|| send.to_vec());
        }
        self.shared.barrier.wait();
        let result = receive.and_then(|()| {
            let slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| CollectiveError::PeerLost)?;
            for (rank, slot) in slots.iter().enumerate() {
                match slot {
                    None => return Err(CollectiveError::PeerFailed { rank }),
                    Some(s) if s.len() != send.len() => {
                        return Err(CollectiveError::LengthMismatch {
                            rank,
                            expected: send.len(),
                            found: s.len(),
                        });
                    }
                    Some(_) => {}
                }
            }
            let all = slots.iter().flatten();
            for (chunk, slot) in recv.chunks_exact_mut(send.len().max(1)).zip(all) {
                chunk.copy_from_slice(slot);
            }
            Ok(())
        });
        // nobody writes its slot for the next collective before everyone has read this one
        self.shared.barrier.wait();
        result
    }
}
