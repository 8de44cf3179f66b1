//! Trains a character-level language model on three Shakespeare plays with CAME, AdamW and
//! Adafactor, fine-tunes each on a held-out play, and compares loss, optimizer memory and time.
//!
//! ```text
//! cargo run --release --features std --example shakespeare
//! cargo run --release --features std --example shakespeare -- --help
//! ```
//!
//! The model (`common/model.rs`) is a Bengio-style MLP over the last few characters with a
//! hand-written backward pass over flat `f32` buffers; the optimizers (`common/optim.rs`) are
//! the crate's owned `Came` and `AdamW`, and the trainer (`common/train.rs`) is written once
//! against the `came::Optimizer` trait they implement. Writes `shakespeare.csv` (every
//! progress point) and `shakespeare.svg` (the loss curves), and ends with one line per
//! optimizer and phase for scripts:
//! `result optimizer=came phase=pretrain val_loss=... state_bytes=... seconds=...`.

mod common;

use came::Instability;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use came::Optimizer;
use common::data::{Corpus, FINETUNE, PRETRAIN};
use common::model::{self, Config};
use common::optim::{self as optim, NAMES};
use common::plot::{self, Curve};
use common::rng::Rng;
use common::train::{Outcome, Phase, Trainer};

const HELP: &str = "\
Trains a char-level MLP language model on Shakespeare with CAME, AdamW and Adafactor.

Options (defaults in brackets):
  --pretrain-steps N     steps on five plays (Hamlet, Macbeth, ...) [6000]
  --finetune-steps N     steps on The Tempest, from each pretrained model [1500]
  --batch N              examples per step [128]
  --lr-came X            peak learning rate of CAME [2e-3]
  --lr-adamw X           peak learning rate of AdamW [2e-3]
  --lr-adafactor X       peak learning rate of Adafactor [2e-3]
  --finetune-lr X        fine-tuning lr as a fraction of the pretraining lr [0.3]
  --beta3 X              CAME's beta3, the decay of its instability statistics [0.999]
  --instability S        CAME's instability statistics: reference (zeros, uncorrected, as
                         came-pytorch) or bias-corrected [reference]
  --optimizers LIST      comma-separated subset of came,adamw,adafactor [all]
  --context N            characters the model sees [16]
  --embed N              embedding width [24]
  --hidden N             hidden units [512]
  --threads N            threads for forward and backward [all cores]
  --eval-every N         steps between progress lines (fine-tuning: a quarter) [500]
  --seed N               initialisation and batch order [1]
  --csv PATH             progress points [shakespeare.csv]
  --svg PATH             loss curves [shakespeare.svg]
  --sample N             characters of generated text per model [240]
";

struct Args {
    pretrain_steps: usize,
    finetune_steps: usize,
    batch: usize,
    lr: [f64; 3],
    finetune_lr: f64,
    beta3: f64,
    instability: Instability,
    optimizers: Vec<&'static str>,
    model: Config,
    threads: usize,
    eval_every: usize,
    seed: u64,
    csv: PathBuf,
    svg: PathBuf,
    sample: usize,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut a = Args {
            pretrain_steps: 6000,
            finetune_steps: 1500,
            batch: 128,
            lr: [2e-3, 2e-3, 2e-3],
            finetune_lr: 0.3,
            beta3: 0.999,
            instability: Instability::Reference,
            optimizers: NAMES.to_vec(),
            model: Config {
                vocab: 0,
                context: 16,
                embed: 24,
                hidden: 512,
            },
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            eval_every: 500,
            seed: 1,
            csv: "shakespeare.csv".into(),
            svg: "shakespeare.svg".into(),
            sample: 240,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                print!("{HELP}");
                std::process::exit(0);
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            let int = || value.parse::<usize>().map_err(|e| bad(&e));
            let float = || match value.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                Ok(_) => Err(bad(&"must be finite and > 0")),
                Err(e) => Err(bad(&e)),
            };
            match flag.as_str() {
                "--pretrain-steps" => a.pretrain_steps = int()?,
                "--finetune-steps" => a.finetune_steps = int()?,
                "--batch" => a.batch = int()?.max(1),
                "--lr-came" => a.lr[0] = float()?,
                "--lr-adamw" => a.lr[1] = float()?,
                "--lr-adafactor" => a.lr[2] = float()?,
                "--finetune-lr" => a.finetune_lr = float()?,
                "--beta3" => {
                    a.beta3 = float()?;
                    if a.beta3 >= 1.0 {
                        return Err(bad(&"must be < 1"));
                    }
                }
                "--instability" => {
                    a.instability = match value.as_str() {
                        "reference" => Instability::Reference,
                        "bias-corrected" => Instability::BiasCorrected,
                        _ => return Err(bad(&"reference or bias-corrected")),
                    }
                }
                "--optimizers" => {
                    a.optimizers = value
                        .split(',')
                        .map(|n| {
                            let n = n.trim();
                            NAMES
                                .into_iter()
                                .find(|&known| known == n)
                                .ok_or(bad(&"unknown optimizer"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--context" => a.model.context = int()?.max(1),
                "--embed" => a.model.embed = int()?.max(1),
                "--hidden" => a.model.hidden = int()?.max(1),
                "--threads" => a.threads = int()?.max(1),
                "--eval-every" => a.eval_every = int()?.max(1),
                "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
                "--csv" => a.csv = value.into(),
                "--svg" => a.svg = value.into(),
                "--sample" => a.sample = int()?,
                _ => return Err(format!("unknown option {flag} (try --help)")),
            }
        }
        Ok(a)
    }

    fn lr(&self, name: &str) -> f64 {
        self.lr[NAMES
            .iter()
            .position(|&n| n == name)
            .expect("a known optimizer")]
    }
}

/// One optimizer's run: both phases and the fine-tuned parameters.
struct Run {
    name: &'static str,
    state_bytes: usize,
    pretrain: Outcome,
    /// Tempest validation loss of the pretrained model, before fine-tuning.
    zero_shot: f64,
    finetune: Outcome,
    params: Vec<f32>,
}

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let corpus = Corpus::load(0.1);
    let config = Config {
        vocab: corpus.vocab.len(),
        ..args.model
    };
    let names: Vec<&str> = PRETRAIN.iter().map(|p| p.0).collect();
    println!(
        "pretraining on {} ({} characters, {} for validation); fine-tuning on {} ({} / {})",
        names.join(", "),
        corpus.pretrain.train.len(),
        corpus.pretrain.val.len(),
        FINETUNE.0,
        corpus.finetune.train.len(),
        corpus.finetune.val.len()
    );
    println!(
        "model: {} characters x {} embedding -> {} tanh -> softmax over {}; {} parameters; \
         batch {}, {} thread(s)",
        config.context,
        config.embed,
        config.hidden,
        config.vocab,
        config.numel(),
        args.batch,
        args.threads
    );
    let unigram = (
        corpus.pretrain.unigram_loss(config.vocab),
        corpus.finetune.unigram_loss(config.vocab),
    );
    println!(
        "unigram baseline (validation): pretraining {:.3} nats/char, {} {:.3}",
        unigram.0, FINETUNE.0, unigram.1
    );

    let mut trainer = Trainer::new(config, args.threads, args.batch);
    let mut runs = Vec::new();
    for (i, &name) in args.optimizers.iter().enumerate() {
        let (t, c, a) = (&mut trainer, &corpus, &args);
        runs.push(match name {
            "came" => train(t, c, a, i, name, || {
                optim::came(&config, a.beta3, a.instability)
            }),
            "adamw" => train(t, c, a, i, name, || optim::adamw(&config)),
            "adafactor" => train(t, c, a, i, name, || optim::adafactor(&config, a.beta3)),
            _ => unreachable!("--optimizers takes known names only"),
        });
    }

    print_table(&runs, unigram);
    if let Err(e) = write_csv(&args.csv, &runs) {
        eprintln!("error: writing {}: {e}", args.csv.display());
    }
    let curves = |finetune: bool| -> Vec<Curve<'_>> {
        runs.iter()
            .map(|r| {
                let o = if finetune { &r.finetune } else { &r.pretrain };
                Curve {
                    label: r.name,
                    val: o
                        .points
                        .iter()
                        .map(|p| (p.step as f64, p.val_loss))
                        .collect(),
                    train: o
                        .points
                        .iter()
                        .map(|p| (p.step as f64, p.train_loss))
                        .collect(),
                }
            })
            .collect()
    };
    let (pre, fine) = (curves(false), curves(true));
    let fine_title = format!("fine-tuning on {}", FINETUNE.0);
    match plot::write_svg(&args.svg, [("pretraining", &pre), (&fine_title, &fine)]) {
        Ok(()) => println!("\nwrote {} and {}", args.csv.display(), args.svg.display()),
        Err(e) => eprintln!("error: writing {}: {e}", args.svg.display()),
    }

    if args.sample > 0 {
        let prompt = corpus.vocab.encode("\nPROSPERO.\n");
        for run in &runs {
            let mut rng = Rng::new(args.seed);
            let start = &prompt[prompt.len().saturating_sub(config.context)..];
            let padded: Vec<u8> = std::iter::repeat_n(
                corpus.vocab.encode(" ")[0],
                config.context.saturating_sub(start.len()),
            )
            .chain(start.iter().copied())
            .collect();
            let text = model::sample(&config, &run.params, &padded, args.sample, 0.8, &mut rng);
            let text: String = text.iter().map(|&t| corpus.vocab.decode(t)).collect();
            println!(
                "\n--- sampled from the fine-tuned {} model (temperature 0.8) ---\nPROSPERO.\n{text}",
                run.name
            );
        }
    }

    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    for run in &runs {
        for (phase, o) in [("pretrain", &run.pretrain), ("finetune", &run.finetune)] {
            println!(
                "result optimizer={} phase={phase} val_loss={:.4} state_bytes={} seconds={:.1}",
                run.name, o.val_loss, run.state_bytes, o.seconds
            );
        }
    }
}

/// Pretrains a fresh model with a fresh optimizer from `new`, then fine-tunes it with another,
/// as a separate fine-tuning job would.
fn train<O: Optimizer<Param = [f32], Grad = [f32]>>(
    trainer: &mut Trainer,
    corpus: &Corpus,
    args: &Args,
    i: usize,
    name: &'static str,
    new: impl Fn() -> O,
) -> Run {
    let config = trainer.config();
    let lr = args.lr(name);
    let mut params = model::init(&config, args.seed);
    let mut opt = new();
    let state_bytes = opt.state_bytes();
    println!("\n[{name}] pretraining, peak lr {lr:.2e}, {state_bytes} bytes of optimizer state");
    let phase = Phase {
        steps: args.pretrain_steps,
        batch: args.batch,
        lr,
        warmup: (args.pretrain_steps / 20).max(1),
        eval_every: args.eval_every,
        eval_positions: 4096,
        seed: args.seed + 100 + i as u64,
    };
    let pretrain = trainer.phase(&mut params, &mut opt, &corpus.pretrain, &phase, report);
    let all: Vec<usize> = (config.context..corpus.finetune.val.len()).collect();
    let zero_shot = trainer.eval(&params, &corpus.finetune.val, &all);
    println!(
        "[{name}] validation {:.4} nats/char; on {} before fine-tuning {:.4}",
        pretrain.val_loss, FINETUNE.0, zero_shot
    );
    // fine-tuning starts a fresh optimizer, as a separate fine-tuning job would
    let mut opt = new();
    let phase = Phase {
        steps: args.finetune_steps,
        lr: lr * args.finetune_lr,
        warmup: (args.finetune_steps / 20).max(1),
        eval_every: (args.eval_every / 4).max(1),
        seed: args.seed + 200 + i as u64,
        ..phase
    };
    println!(
        "[{name}] fine-tuning on {}, peak lr {:.2e}",
        FINETUNE.0, phase.lr
    );
    let finetune = trainer.phase(&mut params, &mut opt, &corpus.finetune, &phase, report);
    println!(
        "[{name}] fine-tuned validation {:.4} nats/char",
        finetune.val_loss
    );
    Run {
        name,
        state_bytes,
        pretrain,
        zero_shot,
        finetune,
        params,
    }
}

fn report(p: &common::train::Point) {
    println!(
        "  step {:>5}  train {:.4}  val {:.4}  {:>6.1} steps/s",
        p.step, p.train_loss, p.val_loss, p.steps_per_second
    );
}

fn print_table(runs: &[Run], unigram: (f64, f64)) {
    let adamw = runs
        .iter()
        .find(|r| r.name == "adamw")
        .map(|r| r.state_bytes);
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| optimizer | pretrain val nats/char (bits) | {} before fine-tuning | fine-tuned val nats/char (bits) | state bytes | vs AdamW | seconds |",
        FINETUNE.0
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = adamw.map_or("-".to_string(), |a| {
            format!("{:.1}%", 100.0 * r.state_bytes as f64 / a as f64)
        });
        let _ = writeln!(
            out,
            "| {} | {:.4} ({:.3}) | {:.4} | {:.4} ({:.3}) | {} | {ratio} | {:.1} |",
            r.name,
            r.pretrain.val_loss,
            bits(r.pretrain.val_loss),
            r.zero_shot,
            r.finetune.val_loss,
            bits(r.finetune.val_loss),
            r.state_bytes,
            r.pretrain.seconds + r.finetune.seconds
        );
    }
    let _ = writeln!(
        out,
        "| unigram baseline | {:.4} ({:.3}) | {:.4} | {:.4} ({:.3}) | | | |",
        unigram.0,
        bits(unigram.0),
        unigram.1,
        unigram.1,
        bits(unigram.1)
    );
    print!("{out}");
}

fn write_csv(path: &PathBuf, runs: &[Run]) -> std::io::Result<()> {
    let mut out = String::from("optimizer,phase,step,train_loss,val_loss,seconds\n");
    for r in runs {
        for (phase, o) in [("pretrain", &r.pretrain), ("finetune", &r.finetune)] {
            for p in &o.points {
                let _ = writeln!(
                    out,
                    "{},{phase},{},{:.5},{:.5},{:.2}",
                    r.name, p.step, p.train_loss, p.val_loss, p.seconds
                );
            }
        }
    }
    std::fs::write(path, out)
}
