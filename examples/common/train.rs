//! The training loop: batches of random positions, the gradient computed in parallel over
//! shards of the batch, a warmup-then-cosine learning-rate schedule, progress points whose
//! validation loss is, by default, the same whole-validation-text measure as the final loss.
//!
//! The parameters are stored in any [`Element`] computed in `f32` (`f32`, `half::bf16`,
//! `half::f16`): that buffer is the master copy the optimizer steps. Forward and backward
//! always compute in `f32`, from the parameters themselves when they are `f32` and otherwise
//! from a working copy widened (exactly) from the master copy before every use, as a trainer
//! with 16-bit weights does; the gradients are `f32` either way.

use std::any::TypeId;
use std::time::Instant;

use came::shard::Collective;
use came::{Element, Optimizer};

use super::data::Split;
use super::model::{self, Config, TENSORS, Workspace};
use super::rng::Rng;

/// One phase's settings.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup; then a cosine decay to `lr / 10` at the last step.
    pub warmup: usize,
    /// Steps between progress points (and at the last step).
    pub eval_every: usize,
    /// Validation positions a progress point is measured on (evenly spread). `usize::MAX` (or
    /// anything at least the number of validation positions) measures all of them, as the final
    /// loss does. The last point always measures all of them, so that a curve ends at the final
    /// loss whatever this is.
    pub eval_positions: usize,
    pub seed: u64,
}

impl Phase {
    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let progress = (step - self.warmup) as f64 / span;
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }
}

/// A progress point.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub step: usize,
    /// Mean training loss since the previous point (nats per character).
    pub train_loss: f64,
    /// Validation loss over `val_positions` positions (all of them unless
    /// `Phase::eval_positions` asked for fewer).
    pub val_loss: f64,
    /// How many validation positions `val_loss` is the mean over.
    pub val_positions: usize,
    /// Seconds since the phase started (evaluations included).
    pub seconds: f64,
}

/// What a phase ended with.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub points: Vec<Point>,
    /// Validation loss over the whole validation text: the last point's.
    pub val_loss: f64,
    /// Seconds the phase took, evaluations included.
    pub seconds: f64,
}

/// Gradients and losses of a model, over `threads` threads, with every buffer allocated once.
pub struct Trainer {
    config: Config,
    workspaces: Vec<Workspace>,
    grads: Vec<Vec<f32>>,
    positions: Vec<usize>,
    /// The `f32` working copy of parameters stored in a 16-bit type (empty for `f32` ones).
    widened: Vec<f32>,
    /// Data parallel: the ranks that compute the shards of a batch, one each (`None`: this
    /// process's threads do).
    group: Option<Box<dyn Collective>>,
}

/// The parameters as forward and backward read them: `f32` parameters as they are, any other
/// type widened into `widened` (exact for the 16-bit types).
fn as_f32<'a, P: Element<Compute = f32>>(params: &'a [P], widened: &'a mut Vec<f32>) -> &'a [f32] {
    if TypeId::of::<P>() == TypeId::of::<f32>() {
        return bytemuck::cast_slice(params);
    }
    widened.clear();
    widened.extend(params.iter().map(|p| p.to_compute()));
    widened
}

impl Trainer {
    pub fn new(config: Config, threads: usize, batch: usize) -> Self {
        let threads = threads.clamp(1, batch.max(1));
        let shard = batch.div_ceil(threads).max(64);
        Self {
            config,
            workspaces: (0..threads)
                .map(|_| Workspace::new(&config, shard))
                .collect(),
            grads: (0..threads).map(|_| vec![0.0; config.numel()]).collect(),
            positions: Vec::with_capacity(batch),
            widened: Vec::new(),
            group: None,
        }
    }

    /// A trainer of one rank of a data-parallel `group`: each rank computes one shard of every
    /// batch (on one thread), and the shards' gradients and losses are all-gathered and added
    /// up in rank order, which is the order the threads' are added in: `N` ranks compute what
    /// one process with `N` threads computes, bit for bit.
    #[allow(dead_code)] // the data-parallel example's, not the main job's
    pub fn data_parallel(config: Config, batch: usize, group: Box<dyn Collective>) -> Self {
        let ranks = group.size();
        Self {
            group: Some(group),
            ..Self::new(config, 1, batch.div_ceil(ranks.max(1)))
        }
    }

    /// Mean loss of the examples at `positions`, and (with `grad`) its gradient in
    /// `self.grads[0]`, computed in `f32` from `params` (widened if they are not `f32`).
    fn run<P: Element<Compute = f32>>(
        &mut self,
        params: &[P],
        data: &[u8],
        positions: &[usize],
        grad: bool,
    ) -> f64 {
        let mut widened = std::mem::take(&mut self.widened);
        let loss = self.run_f32(as_f32(params, &mut widened), data, positions, grad);
        self.widened = widened;
        loss
    }

    /// [`Trainer::run`] on `f32` parameters. Each thread takes a contiguous shard of the
    /// positions.
    fn run_f32(&mut self, params: &[f32], data: &[u8], positions: &[usize], grad: bool) -> f64 {
        if self.group.is_some() {
            return self.run_ranks(params, data, positions, grad);
        }
        let threads = self.workspaces.len();
        let shard = positions.len().div_ceil(threads).max(1);
        let scale = 1.0 / positions.len() as f32;
        let config = &self.config;
        let job = move |chunk: &[usize], ws: &mut Workspace, g: &mut Vec<f32>| {
            let g = grad.then(|| {
                g.fill(0.0);
                (g.as_mut_slice(), scale)
            });
            model::loss(config, params, data, chunk, ws, g)
        };
        let mut work = positions
            .chunks(shard)
            .zip(&mut self.workspaces)
            .zip(&mut self.grads);
        let Some(((first, ws), g)) = work.next() else {
            return 0.0;
        };
        // the first shard on this thread, the others on their own; summed in a fixed order
        let total: f64 = std::thread::scope(|s| {
            let others: Vec<_> = work
                .map(|((chunk, ws), g)| s.spawn(move || job(chunk, ws, g)))
                .collect();
            let mine = job(first, ws, g);
            mine + others
                .into_iter()
                .map(|h| h.join().expect("a worker panicked"))
                .sum::<f64>()
        });
        if grad {
            let used = positions.len().div_ceil(shard);
            let (first, rest) = self.grads.split_at_mut(1);
            for g in &rest[..used - 1] {
                first[0].iter_mut().zip(g).for_each(|(a, &b)| *a += b);
            }
        }
        total / positions.len() as f64
    }

    /// [`Trainer::run_f32`] over the ranks of the data-parallel group: this rank's shard, then
    /// every rank's loss and gradient, added up as the threads' are.
    fn run_ranks(&mut self, params: &[f32], data: &[u8], positions: &[usize], grad: bool) -> f64 {
        let group = self.group.as_deref().expect("a data-parallel trainer");
        let (rank, ranks) = (group.rank(), group.size());
        let shard = positions.len().div_ceil(ranks).max(1);
        let used = positions.len().div_ceil(shard);
        let chunk = positions.chunks(shard).nth(rank).unwrap_or(&[]);
        let g = &mut self.grads[0];
        let scale = 1.0 / positions.len() as f32;
        let g = grad.then(|| {
            g.fill(0.0);
            (g.as_mut_slice(), scale)
        });
        let mine = model::loss(
            &self.config,
            params,
            data,
            chunk,
            &mut self.workspaces[0],
            g,
        );
        let mut recv = vec![0u8; 8 * ranks];
        group
            .all_gather(&mine.to_le_bytes(), &mut recv)
            .expect("the losses all-gathered");
        let losses: Vec<f64> = recv
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("eight bytes")))
            .collect();
        let total = losses[0] + losses[1..used.max(1)].iter().sum::<f64>();
        if grad {
            let n = self.grads[0].len();
            let mut recv = vec![0u8; 4 * n * ranks];
            let send: &[u8] = bytemuck::cast_slice(&self.grads[0]);
            group
                .all_gather(send, &mut recv)
                .expect("the gradients all-gathered");
            let mut ranks_grads = recv.chunks_exact(4 * n).take(used).map(|b| {
                b.chunks_exact(4)
                    .map(|x| f32::from_le_bytes(x.try_into().expect("four bytes")))
            });
            let first = ranks_grads.next().expect("a shard");
            self.grads[0]
                .iter_mut()
                .zip(first)
                .for_each(|(a, b)| *a = b);
            for g in ranks_grads {
                self.grads[0].iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        total / positions.len() as f64
    }

    /// The model the trainer computes gradients for.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Mean validation loss over the given positions.
    pub fn eval<P: Element<Compute = f32>>(
        &mut self,
        params: &[P],
        data: &[u8],
        positions: &[usize],
    ) -> f64 {
        self.run(params, data, positions, false)
    }

    /// Steps the model's tensors in `params` (the master copy) with the gradient in
    /// `self.grads[0]`.
    fn step<P: Element, O: Optimizer<Param = [P], Grad = [f32]>>(
        &self,
        params: &mut [P],
        opt: &mut O,
    ) {
        let grads = model::split(&self.config, &self.grads[0]);
        let mut tensors = model::split_mut(&self.config, params)
            .into_iter()
            .zip(grads);
        let mut pairs: [(&mut [P], &[f32]); TENSORS] =
            std::array::from_fn(|_| tensors.next().expect("five tensors"));
        opt.step(&mut pairs).expect("finite gradients and state");
    }

    /// Trains `params` (stored in `P`, stepped there by `opt`, which has the model's tensors
    /// registered in order) for one phase on `split`; calls `progress` at every point.
    pub fn phase<P: Element<Compute = f32>, O: Optimizer<Param = [P], Grad = [f32]>>(
        &mut self,
        params: &mut [P],
        opt: &mut O,
        split: &Split,
        phase: &Phase,
        mut progress: impl FnMut(&Point),
    ) -> Outcome {
        let context = self.config.context;
        let all_val: Vec<usize> = (context..split.val.len()).collect();
        let stride = (all_val.len() / phase.eval_positions.max(1)).max(1);
        let some_val: Vec<usize> = all_val.iter().copied().step_by(stride).collect();
        let mut rng = Rng::new(phase.seed);
        let start = Instant::now();
        let mut points = Vec::new();
        let (mut train_sum, mut train_n) = (0.0, 0usize);
        for step in 0..phase.steps {
            let mut positions = std::mem::take(&mut self.positions);
            positions.clear();
            positions
                .extend((0..phase.batch).map(|_| context + rng.below(split.train.len() - context)));
            train_sum += self.run(params, &split.train, &positions, true);
            train_n += 1;
            self.positions = positions;
            opt.set_learning_rate(phase.lr_at(step))
                .expect("a finite learning rate > 0");
            self.step(params, opt);
            let done = step + 1 == phase.steps;
            if (step + 1) % phase.eval_every == 0 || done {
                let val = if done { &all_val } else { &some_val };
                let point = Point {
                    step: step + 1,
                    train_loss: train_sum / train_n as f64,
                    val_loss: self.eval(params, &split.val, val),
                    val_positions: val.len(),
                    seconds: start.elapsed().as_secs_f64(),
                };
                progress(&point);
                points.push(point);
                (train_sum, train_n) = (0.0, 0);
            }
        }
        let val_loss = match points.last() {
            Some(p) => p.val_loss,
            None => self.eval(params, &split.val, &all_val),
        };
        Outcome {
            points,
            val_loss,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}
