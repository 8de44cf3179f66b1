//! The sharded step's collectives over MPI (feature `mpi`): the `mpi` crate (rsmpi) over the
//! system's MPI library, Open MPI on Debian (`libopenmpi-dev`, `openmpi-bin`).

use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::collective::{Collective, CollectiveError, check_receive};

/// An MPI communicator as the ranks of a sharded step: usually the world of a program started
/// with `mpirun -n N`.
///
/// ```no_run
/// use came::shard::{Collective, MpiGroup};
/// let universe = came::shard::mpi::initialize().expect("MPI initialised once");
/// let group = MpiGroup::new(universe.world());
/// println!("rank {} of {}", group.rank(), group.size());
/// ```
///
/// MPI reports errors by aborting the job (its default error handler), so the collectives
/// return `Ok` or do not return.
pub struct MpiGroup {
    comm: SimpleCommunicator,
}

impl MpiGroup {
    /// The ranks of `comm`.
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }

    /// The communicator.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl core::fmt::Debug for MpiGroup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MpiGroup")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

impl Collective for MpiGroup {
    fn rank(&self) -> usize {
        usize::try_from(self.comm.rank()).unwrap_or_default()
    }

    fn size(&self) -> usize {
        usize::try_from(self.comm.size()).unwrap_or_default()
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), CollectiveError> {
        check_receive(self.size(), send.len(), recv.len())?;
        if i32::try_from(recv.len()).is_err() {
            return Err(CollectiveError::Engine(std::format!(
                "{} bytes exceed MPI's count of 2^31 - 1",
                recv.len()
            )));
        }
        self.comm.all_gather_into(send, recv);
        Ok(())
    }
}
