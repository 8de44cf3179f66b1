//! The sharded step's collectives over NCCL (feature `nccl`): cudarc's NCCL bindings, the
//! library loaded at run time. Each all-gather goes through device buffers on the
//! communicator's stream: the bytes are copied to the GPU, gathered by NCCL over NVLink or the
//! network, and copied back. The step itself runs on the CPU ([`super::ShardedCame`]); NCCL
//! is the transport of a job whose ranks are GPUs. Not yet run on GPUs.

use std::format;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::safe::{Comm, Id};

use super::collective::{Collective, CollectiveError, check_receive};

/// An NCCL communicator as the ranks of a sharded step.
///
/// ```no_run
/// use came::shard::{Collective, NcclGroup};
/// use cudarc::driver::CudaContext;
/// use cudarc::nccl::safe::{Comm, Id};
/// // rank 0 makes the id and sends it to the other ranks (over MPI, a file, a TCP store)
/// let id = Id::new().expect("NCCL loaded");
/// let stream = CudaContext::new(0).expect("a GPU").default_stream();
/// let comm = Comm::from_rank(stream, 0, 1, id).expect("a communicator");
/// let group = NcclGroup::new(comm);
/// assert_eq!(group.size(), 1);
/// ```
pub struct NcclGroup {
    comm: Comm,
}

impl NcclGroup {
    /// The ranks of `comm`.
    pub fn new(comm: Comm) -> Self {
        Self { comm }
    }

    /// The communicator.
    pub fn communicator(&self) -> &Comm {
        &self.comm
    }

    fn stream(&self) -> Arc<CudaStream> {
        self.comm.stream()
    }
}

impl core::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.world_size())
            .finish()
    }
}

/// A CUDA or NCCL error as a collective's.
fn engine(what: &str, e: impl core::fmt::Debug) -> CollectiveError {
    CollectiveError::Engine(format!("{what}: {e:?}"))
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), CollectiveError> {
        check_receive(self.size(), send.len(), recv.len())?;
        if send.is_empty() {
            return Ok(());
        }
        let stream = self.stream();
        let device_send: CudaSlice<u8> = stream
            .clone_htod(send)
            .map_err(|e| engine("copy to the GPU", e))?;
        let mut device_recv: CudaSlice<u8> = stream
            .alloc_zeros(recv.len())
            .map_err(|e| engine("GPU allocation", e))?;
        self.comm
            .all_gather(&device_send, &mut device_recv)
            .map_err(|e| engine("ncclAllGather", e))?;
        stream
            .memcpy_dtoh(&device_recv, recv)
            .map_err(|e| engine("copy from the GPU", e))?;
        stream.synchronize().map_err(|e| engine("stream", e))?;
        Ok(())
    }
}

/// A fresh NCCL id for [`Comm::from_rank`] (made on one rank, shared with the others).
///
/// # Errors
/// NCCL failed.
///
/// # Panics
/// If `libnccl` cannot be loaded (cudarc's dynamic loading panics; put its directory on
/// `LD_LIBRARY_PATH`).
pub fn new_id() -> Result<Id, CollectiveError> {
    Id::new().map_err(|e| engine("ncclGetUniqueId", e))
}
