//! The Shakespeare example's model and trainer: the hand-written gradient against finite
//! differences, a short training run per optimizer (bf16 weights included) against the unigram
//! baseline, the bf16 weights' exact widening for forward and backward, and the
//! optimizer-state sizes against the formula.
#![cfg(feature = "std")]

#[allow(dead_code)]
#[path = "../../examples/common/mod.rs"]
mod common;

use came::{Element, Instability, Layout, Momentum, Optimizer, Rounding, Shape};
use common::data::{Corpus, Split};
use common::model::{self, Config, Workspace};
use common::optim::{self as optim, NAMES};
use common::train::{Phase, Trainer};
use half::bf16;

fn small(vocab: usize) -> Config {
    Config {
        vocab,
        context: 6,
        embed: 8,
        hidden: 48,
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let config = Config {
        vocab: 7,
        context: 3,
        embed: 4,
        hidden: 5,
    };
    let data: Vec<u8> = (0..40u8).map(|i| (i * 5 + i / 3) % 7).collect();
    let positions: Vec<usize> = (3..40).step_by(3).collect();
    let mut params: Vec<f32> = model::init(&config, 3);
    // larger output weights than the initialisation, so that every term matters
    for p in model::split_mut(&config, &mut params)[3].iter_mut() {
        *p *= 30.0;
    }
    let mut ws = Workspace::new(&config, 4);
    let mut grad = vec![0.0f32; config.numel()];
    let scale = 1.0 / positions.len() as f32;
    model::loss(
        &config,
        &params,
        &data,
        &positions,
        &mut ws,
        Some((&mut grad, scale)),
    );
    let mean = |p: &[f32], ws: &mut Workspace| {
        model::loss(&config, p, &data, &positions, ws, None) / positions.len() as f64
    };
    let h = 1e-2f32;
    let mut worst = 0.0f64;
    for i in 0..params.len() {
        let mut p = params.clone();
        p[i] += h;
        let up = mean(&p, &mut ws);
        p[i] -= 2.0 * h;
        let down = mean(&p, &mut ws);
        let numeric = (up - down) / (2.0 * f64::from(h));
        let err = (numeric - f64::from(grad[i])).abs() / (1e-3 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 2e-2, "worst relative gradient error {worst}");
    assert!(grad.iter().any(|&g| g.abs() > 1e-3));
}

#[test]
fn a_short_run_beats_the_unigram_baseline_with_every_optimizer() {
    let corpus = Corpus::load(0.1);
    let config = small(corpus.vocab.len());
    let unigram = corpus.pretrain.unigram_loss(config.vocab);
    let mut trainer = Trainer::new(config, 2, 32);
    let phase = Phase {
        steps: 800,
        batch: 32,
        lr: 0.0,
        warmup: 20,
        eval_every: 800,
        eval_positions: 2000,
        seed: 5,
    };
    let reference = Instability::Reference;
    for name in NAMES {
        // CAME's tuned lr is about a third of the others' (see the README)
        let lr = if name.starts_with("came") { 3e-3 } else { 1e-2 };
        let phase = Phase { lr, ..phase };
        let (t, split) = (&mut trainer, &corpus.pretrain);
        let bf16_weights =
            |rounding| optim::came_bf16_weights(&config, 0.9999, reference, rounding);
        let (first, last) = match name {
            "came" => short_run(t, split, &phase, optim::came(&config, 0.9999, reference)),
            "adamw" => short_run(t, split, &phase, optim::adamw(&config)),
            "adafactor" => short_run(t, split, &phase, optim::adafactor(&config, 0.9999)),
            "came-bf16w-rn" => short_run(t, split, &phase, bf16_weights(Rounding::Nearest)),
            "came-bf16w-sr" => {
                let rounding = Rounding::Stochastic { seed: 1 };
                short_run(t, split, &phase, bf16_weights(rounding))
            }
            "came-bf16m" | "came-q8" => {
                let momentum = if name == "came-q8" {
                    Momentum::INT8
                } else {
                    Momentum::Bf16
                };
                let opt = optim::came_momentum(&config, 0.9999, reference, momentum);
                short_run(t, split, &phase, opt)
            }
            _ => unreachable!(),
        };
        eprintln!("{name}: {first:.3} -> {last:.3} (unigram {unigram:.3})");
        assert!(
            last < unigram - 0.3,
            "{name}: validation {last:.3} vs unigram {unigram:.3} (started at {first:.3})"
        );
    }
}

/// Validation loss on a few positions before, and on all of them after, a phase with `opt`
/// over weights stored in `P`.
fn short_run<P: Element<Compute = f32>, O: Optimizer<Param = [P], Grad = [f32]>>(
    trainer: &mut Trainer,
    split: &Split,
    phase: &Phase,
    mut opt: O,
) -> (f64, f64) {
    let mut params: Vec<P> = model::init(&trainer.config(), 1);
    let first = trainer.eval(&params, &split.val, &[100, 2000, 30_000]);
    let out = trainer.phase(&mut params, &mut opt, split, phase, |_| {});
    (first, out.val_loss)
}

#[test]
fn bf16_weights_are_widened_exactly_for_forward_and_backward() {
    let corpus = Corpus::load(0.1);
    let config = small(corpus.vocab.len());
    let mut trainer = Trainer::new(config, 2, 32);
    let weights: Vec<bf16> = model::init(&config, 1);
    let widened: Vec<f32> = weights.iter().map(|w| w.to_f32()).collect();
    assert_eq!(
        widened,
        model::init::<f32>(&config, 1)
            .iter()
            .map(|&x| bf16::from_f32(x).to_f32())
            .collect::<Vec<_>>()
    );
    let positions: Vec<usize> = (config.context..corpus.pretrain.val.len())
        .step_by(97)
        .collect();
    let val = &corpus.pretrain.val;
    let from_bf16 = trainer.eval(&weights, val, &positions);
    assert_eq!(
        from_bf16.to_bits(),
        trainer.eval(&widened, val, &positions).to_bits()
    );
    // and the f32 copy is refreshed from the master copy at every use
    let zeros = vec![bf16::ZERO; weights.len()];
    let uniform = trainer.eval(&zeros, val, &positions);
    assert!(
        (uniform - (config.vocab as f64).ln()).abs() < 1e-6,
        "{uniform}"
    );
    assert_eq!(
        trainer.eval(&weights, val, &positions).to_bits(),
        from_bf16.to_bits()
    );
}

#[test]
fn came_state_is_about_half_of_adamw() {
    let corpus = Corpus::load(0.1);
    let config = Config {
        vocab: corpus.vocab.len(),
        context: 12,
        embed: 16,
        hidden: 384,
    };
    // CAME: the momentum, four statistics of rows + cols, and the kernels' O(rows + cols)
    // workspace (new statistics and factors 2 (rows + cols), two column sums per lane, each a
    // block and a compensated total) per matrix; momentum and second moment per vector
    let formula: usize = config
        .tensors()
        .iter()
        .map(|(_, dims)| {
            let shape = Shape::new(dims).unwrap();
            match shape.layout() {
                Layout::Factored { batch, rows, cols } => {
                    rows * cols * batch
                        + 2 * batch * (rows + cols)
                        + 2 * batch * (rows + cols)
                        + 4 * shape.lanes() * cols
                }
                Layout::Vector { len } => 2 * len,
            }
        })
        .sum();
    let came = optim::came(&config, 0.9999, Instability::Reference).state_bytes();
    let adamw = optim::adamw(&config).state_bytes();
    assert_eq!(came, 4 * formula);
    // bf16 weights: the same f32 state, stochastic rounding needing none
    for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 1 }] {
        let bf16_weights =
            optim::came_bf16_weights(&config, 0.9999, Instability::Reference, rounding);
        assert_eq!(bf16_weights.state_bytes(), came);
    }
    assert_eq!(optim::adafactor(&config, 0.9999).state_bytes(), 4 * formula);
    assert_eq!(adamw, 4 * 2 * config.numel());
    let ratio = came as f64 / adamw as f64;
    assert!((0.5..0.55).contains(&ratio), "{ratio}");
}
