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

use came::shard::{Collective, MpiGroup, ShardedCame};
use came::{CameConfig, CameState, Shape, TensorStep};

#[path = "common/rng.rs"]
#[allow(dead_code)]
mod rng;

const DIMS: &[&[usize]] = &[
    &[7, 5],
    &[1, 70_001],
    &[70_001, 1],
    &[301, 700],
    &[1000, 517],
    &[8, 3, 130, 70],
    &[256, 256, 3, 3],
    &[100],
    &[150_001],
    &[],
];

/// The gradient of tensor `t` at step `s`, the same on every rank.
fn grad(t: usize, s: usize, n: usize) -> Vec<f32> {
    let mut rng = rng::Rng::new((t as u64) << 32 | s as u64);
    (0..n)
        .map(|i| {
            let u = rng.normal();
            // a few large entries, so that the update is clipped
            if i % 997 == 0 { u * 40.0 } else { u }
        })
        .collect()
}

fn init(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.37).cos() * 0.1).collect()
}

fn main() {
    let steps = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .map_or(4, |s| s.parse().expect("--steps takes a number"));
    let universe = came::shard::mpi::initialize().expect("MPI initialised once");
    let group = MpiGroup::new(universe.world());
    let (rank, ranks) = (group.rank(), group.size());
    let shapes: Vec<Shape> = DIMS.iter().map(|d| Shape::new(d).unwrap()).collect();
    let config = CameConfig::new(1e-2).with_weight_decay(0.01);

    let mut opt = ShardedCame::<f32, _>::new(config, &shapes, group).expect("a sharded optimizer");
    let owned: Vec<_> = (0..shapes.len())
        .map(|t| opt.map().elements(t, rank))
        .collect();
    let mut local: Vec<Vec<f32>> = shapes
        .iter()
        .zip(&owned)
        .map(|(s, r)| init(s.numel())[r.clone()].to_vec())
        .collect();
    for s in 0..steps {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(t, sh)| grad(t, s, sh.numel())[owned[t].clone()].to_vec())
            .collect();
        let mut p: Vec<&mut [f32]> = local.iter_mut().map(Vec::as_mut_slice).collect();
        let g: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        opt.step(&mut p, &g).expect("a sharded step");
    }
    let mut full: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.numel()]).collect();
    let l: Vec<&[f32]> = local.iter().map(Vec::as_slice).collect();
    let mut f: Vec<&mut [f32]> = full.iter_mut().map(Vec::as_mut_slice).collect();
    opt.all_gather_params(&l, &mut f)
        .expect("the parameters gathered");
    println!(
        "rank {rank}: state {} bytes (one process: {} bytes)",
        opt.state_bytes(),
        shapes
            .iter()
            .map(|s| s.state_layout().named_len() * 4)
            .sum::<usize>()
    );

    // one process, on every rank (each compares; rank 0 prints)
    let mut params: Vec<Vec<f32>> = shapes.iter().map(|s| init(s.numel())).collect();
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.state_len()]).collect();
    let mut states: Vec<CameState<'_, f32>> = bufs.iter_mut().map(|b| CameState::new(b)).collect();
    for s in 0..steps {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(t, sh)| grad(t, s, sh.numel()))
            .collect();
        let mut tensors: Vec<TensorStep<'_, '_, f32>> = params
            .iter_mut()
            .zip(&grads)
            .zip(states.iter_mut())
            .zip(&shapes)
            .map(|(((param, grad), state), shape)| TensorStep {
                shape: *shape,
                param,
                grad,
                state,
            })
            .collect();
        came::step_all(&config, &mut tensors).expect("one process's step");
    }
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
