//! Sharded CAME over MPI against one process, bit for bit. Run under MPI:
//!
//! ```sh
//! cargo build --release --features mpi --example dist_check
//! mpirun --oversubscribe -n 3 target/release/examples/dist_check [--steps 4]
//! ```
//!
//! Every rank steps its shards of a set of tensors of awkward shapes (rows that do not divide
//! over the ranks, a single row, a single column, batches of matrices, vectors, a scalar) for
//! several steps and gathers the parameters; rank 0 compares them with `came::step_all` on the
//! whole tensors and prints `dist_check ranks=N tensors=K steps=S identical=true|false`, then
//! every rank exits with 1 when they differ.
//!
//! `--nccl` (built with `--features mpi,nccl`) runs the same check with the collectives over
//! NCCL, one GPU per rank, MPI only starting the ranks and sharing NCCL's id.
//!
//! `--bench` times a sharded GPT-2 small step instead (medians of `--steps` steps, a step
//! taking as long as its slowest rank) against one process stepping the whole model on one
//! thread, and prints the bytes each rank sends per step:
//!
//! ```sh
//! mpirun --oversubscribe -n 2 target/release/examples/dist_check --bench --steps 5
//! ```

use std::time::Instant;

use came::shard::{Collective, MpiGroup, ShardedCame};
use came::{CameConfig, Shape};

#[path = "common/gpt2.rs"]
mod gpt2;
#[path = "../tests/suite/support/shard.rs"]
mod shard_support;

use shard_support::{AWKWARD, OneProcess, gradient, rank_part, start};

const DIMS: &[&[usize]] = AWKWARD;

/// The gradient of tensor `t` at step `s`, the same on every rank.
fn grad(t: usize, s: usize, n: usize) -> Vec<f32> {
    gradient(t, s, n).map(|x| x as f32).collect()
}

fn init(n: usize) -> Vec<f32> {
    start(n).map(|x| x as f32).collect()
}

fn main() {
    let steps = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .map_or(4, |s| s.parse().expect("--steps takes a number"));
    let universe = came::shard::mpi::initialize().expect("MPI initialised once");
    let group = MpiGroup::new(universe.world());
    if std::env::args().any(|a| a == "--bench") {
        return bench(group, steps);
    }
    if std::env::args().any(|a| a == "--nccl") {
        #[cfg(feature = "nccl")]
        return check(nccl::group(&group), steps);
        #[cfg(not(feature = "nccl"))]
        panic!("--nccl needs the nccl feature: cargo build --features mpi,nccl");
    }
    check(group, steps);
}

/// The collectives over NCCL, one GPU per rank (rank modulo the GPUs of the machine), the
/// NCCL id made on rank 0 and shared over MPI.
#[cfg(feature = "nccl")]
mod nccl {
    use came::shard::{Collective, MpiGroup, NcclGroup};
    use cudarc::driver::CudaContext;
    use cudarc::nccl::safe::{Comm, Id};

    pub fn group(mpi: &MpiGroup) -> NcclGroup {
        let id = if mpi.rank() == 0 {
            Some(came::shard::new_id().expect("NCCL loaded"))
        } else {
            None
        };
        let mine: Vec<u8> = id.map_or(vec![0; 128], |id| {
            id.internal().iter().map(|&c| c as u8).collect()
        });
        let mut all = vec![0u8; 128 * mpi.size()];
        mpi.all_gather(&mine, &mut all).expect("the NCCL id shared");
        let mut internal = [0 as core::ffi::c_char; 128];
        for (c, &b) in internal.iter_mut().zip(&all[..128]) {
            *c = b as core::ffi::c_char;
        }
        let gpus = CudaContext::device_count().expect("the CUDA driver") as usize;
        let stream = CudaContext::new(mpi.rank() % gpus)
            .expect("a GPU")
            .default_stream();
        let comm = Comm::from_rank(stream, mpi.rank(), mpi.size(), Id::uninit(internal))
            .expect("an NCCL communicator");
        NcclGroup::new(comm)
    }
}

/// The sharded steps over `group` against one process.
fn check<C: Collective>(group: C, steps: usize) {
    let (rank, ranks) = (group.rank(), group.size());
    let shapes: Vec<Shape> = DIMS.iter().map(|d| Shape::new(d).unwrap()).collect();
    let config = CameConfig::new(1e-2).with_weight_decay(0.01);

    let mut opt =
        ShardedCame::<f32, _>::with_dims(config, DIMS, group).expect("a sharded optimizer");
    let (owned, mut local) = rank_part(opt.map(), rank, |t| init(shapes[t].numel()));
    for s in 0..steps {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(t, sh)| grad(t, s, sh.numel())[owned[t].clone()].to_vec())
            .collect();
        let mut p: Vec<&mut [f32]> = local.iter_mut().map(Vec::as_mut_slice).collect();
        let g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(g.as_slice())).collect();
        opt.step_shards(&mut p, &g).expect("a sharded step");
    }
    let mut full: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.numel()]).collect();
    let l: Vec<&[f32]> = local.iter().map(Vec::as_slice).collect();
    let mut f: Vec<&mut [f32]> = full.iter_mut().map(Vec::as_mut_slice).collect();
    opt.all_gather_params(&l, &mut f)
        .expect("the parameters gathered");
    println!(
        "rank {rank}: state {} bytes (one process: {} bytes)",
        opt.local_state_bytes(),
        shapes
            .iter()
            .map(|s| s.state_layout().named_len() * 4)
            .sum::<usize>()
    );

    // one process, on every rank (each compares; rank 0 prints)
    let mut one = OneProcess::new(&shapes, shapes.iter().map(|s| init(s.numel())).collect());
    for s in 0..steps {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(t, sh)| grad(t, s, sh.numel()))
            .collect();
        one.step(&config, &grads).expect("one process's step");
    }
    let params = one.params;
    let identical = full
        .iter()
        .zip(&params)
        .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    if rank == 0 {
        println!(
            "dist_check ranks={ranks} tensors={} steps={steps} identical={identical}",
            shapes.len()
        );
    }
    if !identical {
        std::process::exit(1);
    }
}

/// Cheap deterministic values in [-scale, scale) for large tensors.
fn fill(v: &mut [f32], seed: u64, scale: f32) {
    for (i, x) in v.iter_mut().enumerate() {
        let z = (i as u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        *x = ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale;
    }
}

/// Every rank's value of `x`, in rank order.
fn gather(group: &MpiGroup, x: f64) -> Vec<f64> {
    let mut recv = vec![0u8; 8 * group.size()];
    group
        .all_gather(&x.to_le_bytes(), &mut recv)
        .expect("an all-gather");
    recv.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GPT-2 small: a sharded step on every rank against one process on rank 0.
fn bench(group: MpiGroup, steps: usize) {
    let (rank, ranks) = (group.rank(), group.size());
    let shapes: Vec<Shape> = gpt2::gpt2_small()
        .iter()
        .map(|d| Shape::new(d).unwrap())
        .collect();
    let params: usize = shapes.iter().map(Shape::numel).sum();
    let config = CameConfig::new(1e-4).with_weight_decay(0.01);
    let dims = gpt2::gpt2_small();
    let dims: Vec<&[usize]> = dims.iter().map(Vec::as_slice).collect();
    let mut opt =
        ShardedCame::<f32, _>::with_dims(config, &dims, group).expect("a sharded optimizer");
    let owned: Vec<_> = (0..shapes.len())
        .map(|t| opt.map().elements(t, rank))
        .collect();
    let mut local: Vec<Vec<f32>> = owned.iter().map(|r| vec![0.0; r.len()]).collect();
    let mut grads: Vec<Vec<f32>> = local.clone();
    for (t, (p, g)) in local.iter_mut().zip(&mut grads).enumerate() {
        fill(p, t as u64, 0.02);
        fill(g, 1000 + t as u64, 1e-3);
    }
    let mut sharded = Vec::new();
    for s in 0..=steps {
        gather(opt.collective(), 0.0); // start together
        let t0 = Instant::now();
        let mut p: Vec<&mut [f32]> = local.iter_mut().map(Vec::as_mut_slice).collect();
        let g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(g.as_slice())).collect();
        opt.step_shards(&mut p, &g).expect("a sharded step");
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let slowest = gather(opt.collective(), ms).into_iter().fold(0.0, f64::max);
        if s > 0 {
            sharded.push(slowest);
        }
    }
    let sent = gather(opt.collective(), opt.sent_bytes() as f64);
    let state = gather(opt.collective(), opt.local_state_bytes() as f64);
    // the parameter all-gather that follows a step in ZeRO stage 1 and 2
    let mut full: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.numel()]).collect();
    let mut gathers = Vec::new();
    for _ in 0..steps {
        gather(opt.collective(), 0.0);
        let t0 = Instant::now();
        let l: Vec<&[f32]> = local.iter().map(Vec::as_slice).collect();
        let mut f: Vec<&mut [f32]> = full.iter_mut().map(Vec::as_mut_slice).collect();
        opt.all_gather_params(&l, &mut f)
            .expect("the parameters gathered");
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        gathers.push(gather(opt.collective(), ms).into_iter().fold(0.0, f64::max));
    }
    let gather_bytes = gather(opt.collective(), opt.sent_bytes() as f64);
    drop((local, grads, full));
    // one process on rank 0, the other ranks waiting
    let mut single = Vec::new();
    let mut single_state = 0;
    if rank == 0 {
        let mut params: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.numel()]).collect();
        let mut grads = params.clone();
        for (t, (p, g)) in params.iter_mut().zip(&mut grads).enumerate() {
            fill(p, t as u64, 0.02);
            fill(g, 1000 + t as u64, 1e-3);
        }
        single_state = shapes
            .iter()
            .map(|s| s.state_layout().named_len() * 4)
            .sum::<usize>();
        let mut one = OneProcess::new(&shapes, params);
        for s in 0..=steps {
            let t0 = Instant::now();
            one.step(&config, &grads).expect("one process's step");
            if s > 0 {
                single.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    gather(opt.collective(), 0.0);
    if rank == 0 {
        let (sharded, single) = (median(sharded), median(single));
        println!(
            "dist_bench model=gpt2-small params={params} ranks={ranks} steps={steps} \
             sharded_ms={sharded:.1} single_ms={single:.1} speedup={:.2} \
             sent_bytes_per_rank={:.0} state_bytes_per_rank={:.0} single_state_bytes={single_state} \
             param_gather_ms={:.1} param_gather_bytes_per_rank={:.0}",
            single / sharded,
            sent.iter().copied().fold(0.0, f64::max),
            state.iter().copied().fold(0.0, f64::max),
            median(gathers),
            gather_bytes.iter().copied().fold(0.0, f64::max),
        );
    }
}
