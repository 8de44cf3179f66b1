//! Data-parallel training of the main job's model on MPI ranks with sharded CAME: each rank
//! computes the gradient of its part of every batch, the gradients are all-gathered and added up
//! in rank order, and `ShardedCame` steps the model with each rank keeping about `1/N` of the
//! optimizer state. Run:
//!
//! ```sh
//! cargo build --release --features mpi --example shakespeare_dp
//! mpirun --oversubscribe -n 2 target/release/examples/shakespeare_dp [--steps 1500] [--batch 128]
//! ```
//!
//! Rank 0 then trains the same model in one process with `came::Came` and as many threads as
//! there are ranks (the same global batch, cut into the same shards), and prints both runs'
//! losses, each rank's optimizer-state bytes against the one process's, and
//! `shakespeare_dp ranks=N steps=S val_loss=X single_val_loss=Y identical=true|false`; every
//! rank exits with 1 when the runs differ.

#[allow(dead_code)]
mod common;

use came::shard::{Collective, MpiGroup, ShardedCame};
use came::{Came, Instability};
use common::data::Corpus;
use common::model::{self, Config};
use common::optim::{came_config, registered};
use common::train::{Phase, Point, Trainer};

fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

fn main() {
    let (steps, batch) = (arg("--steps", 1500), arg("--batch", 128));
    let universe = came::shard::mpi::initialize().expect("MPI initialised once");
    let group = MpiGroup::new(universe.world());
    let (rank, ranks) = (group.rank(), group.size());
    // a second handle on the world for the trainer's all-gathers of losses and gradients
    let trainer_group = MpiGroup::new(universe.world());

    let corpus = Corpus::load(0.1);
    let config = Config {
        vocab: corpus.vocab.len(),
        context: 16,
        embed: 24,
        hidden: 512,
    };
    let phase = Phase {
        steps,
        batch,
        lr: 2e-3,
        warmup: (steps / 20).max(1),
        eval_every: (steps / 3).max(1),
        eval_positions: 4000,
        seed: 7,
    };
    let came = came_config(0.999, Instability::Reference);
    let show = |who: &str, p: &Point| {
        println!(
            "{who} step {:>5}/{steps}  train {:.4}  val {:.4}  {:.1} s",
            p.step, p.train_loss, p.val_loss, p.seconds
        );
    };

    // data parallel: ranks as the shards of every batch, the optimizer state sharded
    let mut opt = registered(ShardedCame::<f32, _>::new(came, group), &config);
    let mut trainer = Trainer::data_parallel(config, batch, Box::new(trainer_group));
    let mut params = model::init::<f32>(&config, 1);
    let sharded = trainer.phase(&mut params, &mut opt, &corpus.pretrain, &phase, |p| {
        if rank == 0 {
            show(&format!("[{ranks} ranks]"), p);
        }
    });
    let state = gather(opt.collective(), opt.local_state_bytes());

    // one process, on rank 0, with a thread per rank
    let mut identical = true;
    if rank == 0 {
        let mut opt = registered(Came::<f32>::new(came), &config);
        let mut trainer = Trainer::new(config, ranks, batch);
        let mut single = model::init::<f32>(&config, 1);
        let outcome = trainer.phase(&mut single, &mut opt, &corpus.pretrain, &phase, |p| {
            show("[1 process]", p);
        });
        // the named pieces of the state (a checkpoint's), as for the ranks
        let single_state: usize = config
            .tensors()
            .iter()
            .map(|(_, d)| {
                came::Shape::new(d)
                    .expect("a shape")
                    .state_layout()
                    .named_len()
                    * 4
            })
            .sum();
        let single_loss = outcome.val_loss;
        identical = single
            .iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
            && outcome.val_loss.to_bits() == sharded.val_loss.to_bits();
        for (r, bytes) in state.iter().enumerate() {
            println!(
                "rank {r}: optimizer state {bytes} bytes ({:.1}% of one process's {single_state})",
                100.0 * *bytes as f64 / single_state as f64
            );
        }
        println!(
            "shakespeare_dp ranks={ranks} steps={steps} val_loss={:.4} single_val_loss={single_loss:.4} \
             identical={identical}",
            sharded.val_loss
        );
    }
    let identical = gather(opt.collective(), usize::from(identical))[0] == 1;
    if !identical {
        std::process::exit(1);
    }
}

/// Every rank's `x`, in rank order.
fn gather(group: &MpiGroup, x: usize) -> Vec<usize> {
    let mut recv = vec![0u8; 8 * group.size()];
    group
        .all_gather(&(x as u64).to_le_bytes(), &mut recv)
        .expect("an all-gather");
    recv.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes")) as usize)
        .collect()
}
