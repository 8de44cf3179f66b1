//! Trains a character-level language model on five Shakespeare plays with CAME, AdamW,
//! Adafactor and CAME over weights stored in bf16 (rounded to nearest, and stochastically),
//! fine-tunes each on a held-out play, and compares loss, optimizer and weight memory, and time.
//!
//! ```text
//! cargo run --release --features std --example shakespeare
//! cargo run --release --features std --example shakespeare -- --help
//! ```
//!
//! The model (`common/model.rs`) is a Bengio-style MLP over the last few characters with a
//! hand-written forward and backward pass in `f32` over flat buffers; the optimizers
//! (`common/optim.rs`) are the crate's owned `Came` and `AdamW`, and the trainer
//! (`common/train.rs`) is written once against the `came::Optimizer` trait they implement and
//! over the type the weights are stored in. The rows `came`, `adamw` and `adafactor` keep `f32`
//! weights (4 bytes each); `came-bf16w-rn` and `came-bf16w-sr` keep them in bf16 (2 bytes):
//! `Came::<half::bf16, f32>` steps that bf16 master copy with `f32` gradients and `f32` state,
//! rounding each updated weight to nearest (`Rounding::Nearest`, what came-pytorch does with
//! bf16 parameters) or stochastically (`Rounding::Stochastic`, seeded by `--seed`), and every
//! forward and backward pass computes in `f32` from a working copy widened from it. Both start
//! from the `f32` initialisation rounded to bf16.
//!
//! Each phase's last validation loss is the mean over the whole validation text, the measure of
//! the final table; the points before it measure an evenly spaced subset of at least
//! `--eval-positions` positions (all of The Tempest's). Writes `shakespeare.csv` (every progress
//! point, with each optimizer's state and weight bytes; no timings, so that a rerun with the
//! same settings and thread count writes the same bytes) and `shakespeare.svg` (the loss curves, the unigram
//! baseline, each optimizer's state and weight bytes), and ends with one line per optimizer and
//! phase for scripts:
//! `result optimizer=came phase=pretrain val_loss=... state_bytes=... weight_bytes=... seconds=...`.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use came::{Code8, Element, Instability, Momentum, Optimizer, Rounding};
use common::data::{Corpus, FINETUNE, PRETRAIN};
use common::model::{self, Config};
use common::optim::{self as optim, NAMES};
use common::plot::{self, Curve, Panel};
use common::rng::Rng;
use common::train::{Outcome, Phase, Point, Trainer};

const HELP: &str = "\
Trains a char-level MLP language model on Shakespeare with CAME, AdamW and Adafactor (f32
weights), and with CAME over weights stored in bf16, rounded to nearest (came-bf16w-rn) or
stochastically (came-bf16w-sr); forward and backward compute in f32 for all of them.

Options (defaults in brackets):
  --pretrain-steps N     steps on five plays (Hamlet, Macbeth, ...) [6000]
  --finetune-steps N     steps on The Tempest, from each pretrained model [1500]
  --batch N              examples per step [128]
  --lr-came X            peak learning rate of CAME, f32 and bf16 weights alike [2e-3]
  --lr-adamw X           peak learning rate of AdamW [2e-3]
  --lr-adafactor X       peak learning rate of Adafactor [2e-3]
  --finetune-lr X        fine-tuning lr as a fraction of the pretraining lr [0.3]
  --beta3 X              CAME's beta3, the decay of its instability statistics [0.999]
  --instability S        CAME's instability statistics: reference (zeros, uncorrected, as
                         came-pytorch) or bias-corrected [reference]
  --optimizers LIST      comma-separated subset of came,adamw,adafactor,came-bf16w-rn,
                         came-bf16w-sr,came-bf16m,came-q8, run in the order given (each
                         one's batch order follows from --seed and its place in the list)
                         [all]
  --code8 S              the 8-bit code of came-q8: absmax or minmax, blocks of 256
                         [absmax]
  --context N            characters the model sees [16]
  --embed N              embedding width [24]
  --hidden N             hidden units [512]
  --threads N            threads for forward and backward [all cores]
  --eval-every N         steps between progress lines (fine-tuning: a quarter) [500]
  --eval-positions N     validation positions a progress point measures, evenly spaced
                         (at least N; 0 for all) [17000]; the last point of each phase
                         measures the whole validation text, as the table does
  --seed N               initialisation, batch order and stochastic rounding [1]
  --csv PATH             progress points: step, training and validation loss, state and
                         weight bytes, no timings (the same bytes on every run with the same
                         settings and threads) [shakespeare.csv]
  --times PATH           also write the seconds of every progress point there [none]
  --svg PATH             loss curves [shakespeare.svg]
  --sample N             characters of generated text per model [240]
";

struct Args {
    pretrain_steps: usize,
    finetune_steps: usize,
    batch: usize,
    lr_came: f64,
    lr_adamw: f64,
    lr_adafactor: f64,
    finetune_lr: f64,
    beta3: f64,
    instability: Instability,
    code8: Code8,
    optimizers: Vec<&'static str>,
    model: Config,
    threads: usize,
    eval_every: usize,
    eval_positions: usize,
    seed: u64,
    csv: PathBuf,
    times: Option<PathBuf>,
    svg: PathBuf,
    sample: usize,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut a = Args {
            pretrain_steps: 6000,
            finetune_steps: 1500,
            batch: 128,
            lr_came: 2e-3,
            lr_adamw: 2e-3,
            lr_adafactor: 2e-3,
            finetune_lr: 0.3,
            beta3: 0.999,
            instability: Instability::Reference,
            code8: Code8::Absmax,
            optimizers: NAMES.to_vec(),
            model: Config {
                vocab: 0,
                context: 16,
                embed: 24,
                hidden: 512,
            },
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            eval_every: 500,
            eval_positions: 17_000,
            seed: 1,
            csv: "shakespeare.csv".into(),
            times: None,
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
                "--lr-came" => a.lr_came = float()?,
                "--lr-adamw" => a.lr_adamw = float()?,
                "--lr-adafactor" => a.lr_adafactor = float()?,
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
                "--code8" => {
                    a.code8 = match value.as_str() {
                        "absmax" => Code8::Absmax,
                        "minmax" => Code8::MinMax,
                        _ => return Err(bad(&"absmax or minmax")),
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
                "--eval-positions" => {
                    a.eval_positions = match int()? {
                        0 => usize::MAX,
                        n => n,
                    }
                }
                "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
                "--csv" => a.csv = value.into(),
                "--times" => a.times = Some(value.into()),
                "--svg" => a.svg = value.into(),
                "--sample" => a.sample = int()?,
                _ => return Err(format!("unknown option {flag} (try --help)")),
            }
        }
        Ok(a)
    }

    /// The 8-bit momentum of `came-q8`.
    fn momentum8(&self) -> Momentum {
        Momentum::Int8 {
            code: self.code8,
            block: 256,
        }
    }

    /// The optimizer's peak learning rate: CAME's for CAME over weights of any type.
    fn lr(&self, name: &str) -> f64 {
        match name {
            "came" | "came-bf16w-rn" | "came-bf16w-sr" | "came-bf16m" | "came-q8" => self.lr_came,
            "adamw" => self.lr_adamw,
            "adafactor" => self.lr_adafactor,
            _ => unreachable!("a known optimizer"),
        }
    }
}

/// One optimizer's run: both phases and the fine-tuned parameters.
struct Run {
    name: &'static str,
    state_bytes: usize,
    /// Bytes of the weights as stored (the master copy the optimizer steps).
    weight_bytes: usize,
    pretrain: Outcome,
    /// Tempest validation loss of the pretrained model, before fine-tuning.
    zero_shot: f64,
    finetune: Outcome,
    /// The fine-tuned weights, widened to `f32` for sampling.
    params: Vec<f32>,
}

/// Where the run stands, for the progress lines: which optimizer of how many, and the steps
/// behind and ahead, to estimate the time left from the rate so far.
struct Progress {
    started: Instant,
    optimizers: usize,
    total_steps: usize,
    done_steps: usize,
}

impl Progress {
    /// One progress line: `[came 1/3] pretraining  step 1500/6000  train ...  val ...  time`.
    fn line(&self, tag: (&str, usize), phase: (&str, usize), full_val: usize, p: &Point) {
        let ((name, k), (phase, steps)) = (tag, phase);
        let subset = if p.val_positions < full_val {
            format!(" (subset of {} of {full_val} positions)", p.val_positions)
        } else {
            String::new()
        };
        let done = self.done_steps + p.step;
        let elapsed = self.started.elapsed().as_secs_f64();
        let all_left = elapsed / done as f64 * (self.total_steps - done) as f64;
        let left = if p.step < steps {
            let phase_left = p.seconds / p.step as f64 * (steps - p.step) as f64;
            format!("~{} left in this phase", duration(phase_left))
        } else {
            "phase done".to_string()
        };
        println!(
            "[{name} {k}/{}] {phase}  step {:>w$}/{steps}  train {:.4}  val {:.4}{subset}  \
             {:.1} s elapsed, {left}, ~{} left in all",
            self.optimizers,
            p.step,
            p.train_loss,
            p.val_loss,
            p.seconds,
            duration(all_left),
            w = steps.to_string().len(),
        );
    }
}

/// `42 s`, `3 min 05 s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 100 {
        format!("{s} s")
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// `1030176` as `1,030,176`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    // a prediction needs `context` characters before it: the first ones are never predicted
    let positions = |val: &[u8]| val.len().saturating_sub(config.context);
    let val_positions = (
        positions(&corpus.pretrain.val),
        positions(&corpus.finetune.val),
    );
    let subset = args.eval_positions.min(val_positions.0);
    println!(
        "progress lines: train = mean loss of the training batches since the previous line; \
         val = loss over the validation text ({} positions; {} {}; before a phase's last \
         line an evenly spaced subset of at least {subset}), the last as in the table; time \
         left estimated from the rate so far",
        val_positions.0, FINETUNE.0, val_positions.1
    );

    let mut trainer = Trainer::new(config, args.threads, args.batch);
    let mut progress = Progress {
        started: Instant::now(),
        optimizers: args.optimizers.len(),
        total_steps: args.optimizers.len() * (args.pretrain_steps + args.finetune_steps),
        done_steps: 0,
    };
    let mut runs = Vec::new();
    for (i, &name) in args.optimizers.iter().enumerate() {
        let (t, c, a, p) = (&mut trainer, &corpus, &args, &mut progress);
        runs.push(match name {
            "came" => train(t, c, a, p, i, name, || {
                optim::came(&config, a.beta3, a.instability)
            }),
            "adamw" => train(t, c, a, p, i, name, || optim::adamw(&config)),
            "adafactor" => train(t, c, a, p, i, name, || optim::adafactor(&config, a.beta3)),
            "came-bf16w-rn" => train(t, c, a, p, i, name, || {
                optim::came_bf16_weights(&config, a.beta3, a.instability, Rounding::Nearest)
            }),
            "came-bf16w-sr" => train(t, c, a, p, i, name, || {
                let rounding = Rounding::Stochastic { seed: a.seed };
                optim::came_bf16_weights(&config, a.beta3, a.instability, rounding)
            }),
            "came-bf16m" => train(t, c, a, p, i, name, || {
                optim::came_momentum(&config, a.beta3, a.instability, Momentum::Bf16)
            }),
            "came-q8" => train(t, c, a, p, i, name, || {
                let q8 = a.momentum8();
                optim::came_momentum(&config, a.beta3, a.instability, q8)
            }),
            _ => unreachable!("--optimizers takes known names only"),
        });
    }

    print_table(&runs, &args, unigram);
    for (path, times) in [(Some(&args.csv), false), (args.times.as_ref(), true)] {
        if let Some(path) = path
            && let Err(e) = write_csv(path, &runs, times)
        {
            eprintln!("error: writing {}: {e}", path.display());
        }
    }
    let adamw = runs
        .iter()
        .find(|r| r.name == "adamw")
        .map(|r| r.state_bytes);
    let curves = |finetune: bool| -> Vec<Curve> {
        runs.iter()
            .map(|r| {
                let o = if finetune { &r.finetune } else { &r.pretrain };
                // fine-tuning starts from the pretrained model, measured before its first step
                let start = finetune.then_some((0.0, r.zero_shot));
                let vs = match adamw {
                    Some(a) if r.name != "adamw" => {
                        format!(", {:.1}% of AdamW", 100.0 * r.state_bytes as f64 / a as f64)
                    }
                    _ => String::new(),
                };
                Curve {
                    label: display_name(r.name).to_string(),
                    note: format!(
                        "{} B optimizer state{vs}; {} B weights",
                        thousands(r.state_bytes),
                        thousands(r.weight_bytes)
                    ),
                    colour: NAMES.iter().position(|&n| n == r.name).unwrap_or(0),
                    val: start
                        .into_iter()
                        .chain(o.points.iter().map(|p| (p.step as f64, p.val_loss)))
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
    let fine_title = format!("fine-tuning on {}, from each pretrained model", FINETUNE.0);
    let title = format!(
        "Character-level MLP on Shakespeare ({} parameters): loss by optimizer",
        thousands(config.numel())
    );
    let val_note = format!(
        "Validation loss: the dot at the end of each curve is the table's value, over the \
         whole validation text ({} positions; {} {}); the points before it measure an evenly \
         spaced subset\nof at least {} positions. Fine-tuning starts at step 0 from its 'before \
         fine-tuning' value. Lower row: the validation curves over the second half of each \
         phase, magnified.",
        thousands(val_positions.0),
        FINETUNE.0,
        thousands(val_positions.1),
        thousands(subset),
    );
    let baseline = format!(
        "unigram baseline (validation): {:.3} pretraining, {:.3} {}",
        unigram.0, unigram.1, FINETUNE.0
    );
    let panels = [
        Panel {
            title: "pretraining on five plays",
            baseline: unigram.0,
            curves: &pre,
        },
        Panel {
            title: &fine_title,
            baseline: unigram.1,
            curves: &fine,
        },
    ];
    match plot::write_svg(&args.svg, &title, &val_note, &baseline, panels) {
        Ok(()) => println!("\nwrote {} and {}", args.csv.display(), args.svg.display()),
        Err(e) => eprintln!("error: writing {}: {e}", args.svg.display()),
    }
    if let Some(times) = &args.times {
        println!("wrote {}", times.display());
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
                "result optimizer={} phase={phase} val_loss={:.4} state_bytes={} \
                 weight_bytes={} seconds={:.1}",
                run.name, o.val_loss, run.state_bytes, run.weight_bytes, o.seconds
            );
        }
    }
}

/// Pretrains a fresh model, its weights stored in `P`, with a fresh optimizer from `new`, then
/// fine-tunes it with another, as a separate fine-tuning job would.
fn train<P: Element<Compute = f32>, O: Optimizer<Param = [P], Grad = [f32]>>(
    trainer: &mut Trainer,
    corpus: &Corpus,
    args: &Args,
    progress: &mut Progress,
    i: usize,
    name: &'static str,
    new: impl Fn() -> O,
) -> Run {
    let config = trainer.config();
    let lr = args.lr(name);
    // the f32 initialisation, rounded to nearest where the weights are 16-bit
    let mut params: Vec<P> = model::init(&config, args.seed);
    let weight_bytes = size_of_val(params.as_slice());
    let mut opt = new();
    let state_bytes = opt.state_bytes();
    let tag = (name, i + 1);
    let n = progress.optimizers;
    println!(
        "\n[{name} {}/{n}] pretraining, peak lr {lr:.2e}, {state_bytes} bytes of optimizer \
         state, {weight_bytes} bytes of weights ({})",
        i + 1,
        P::DTYPE
    );
    let phase = Phase {
        steps: args.pretrain_steps,
        batch: args.batch,
        lr,
        warmup: (args.pretrain_steps / 20).max(1),
        eval_every: args.eval_every,
        // the last point measures the whole validation text, as the table does
        eval_positions: args.eval_positions,
        seed: args.seed + 100 + i as u64,
    };
    let full = corpus.pretrain.val.len().saturating_sub(config.context);
    let pretrain = trainer.phase(&mut params, &mut opt, &corpus.pretrain, &phase, |p| {
        progress.line(tag, ("pretraining", phase.steps), full, p);
    });
    progress.done_steps += phase.steps;
    let all: Vec<usize> = (config.context..corpus.finetune.val.len()).collect();
    let zero_shot = trainer.eval(&params, &corpus.finetune.val, &all);
    println!(
        "[{name} {}/{n}] validation {:.4} nats/char; on {} before fine-tuning {:.4}",
        i + 1,
        pretrain.val_loss,
        FINETUNE.0,
        zero_shot
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
        "[{name} {}/{n}] fine-tuning on {}, peak lr {:.2e}",
        i + 1,
        FINETUNE.0,
        phase.lr
    );
    let full = corpus.finetune.val.len().saturating_sub(config.context);
    let finetune = trainer.phase(&mut params, &mut opt, &corpus.finetune, &phase, |p| {
        progress.line(tag, ("fine-tuning", phase.steps), full, p);
    });
    progress.done_steps += phase.steps;
    println!(
        "[{name} {}/{n}] fine-tuned validation {:.4} nats/char",
        i + 1,
        finetune.val_loss
    );
    Run {
        name,
        state_bytes,
        weight_bytes,
        pretrain,
        zero_shot,
        finetune,
        params: params.iter().map(|p| p.to_compute()).collect(),
    }
}

fn display_name(name: &str) -> &'static str {
    match name {
        "came" => "CAME",
        "adamw" => "AdamW",
        "adafactor" => "Adafactor",
        "came-bf16w-rn" => "CAME, bf16 weights, round to nearest",
        "came-bf16w-sr" => "CAME, bf16 weights, stochastic rounding",
        "came-bf16m" => "CAME, bf16 momentum",
        "came-q8" => "CAME, 8-bit momentum",
        _ => unreachable!("a known optimizer"),
    }
}

/// The optimizer and its settings, as the table's first column names them.
fn setting(args: &Args, name: &str) -> String {
    let lr = format!("lr {:e}", args.lr(name));
    match name {
        "came" => {
            let corrected = if matches!(args.instability, Instability::BiasCorrected) {
                ", bias-corrected"
            } else {
                ""
            };
            format!("CAME ({lr}, β3 {}{corrected})", args.beta3)
        }
        "came-bf16w-rn" => format!("{}, bf16 weights, round to nearest", setting(args, "came")),
        "came-bf16w-sr" => format!(
            "{}, bf16 weights, stochastic rounding (seed {})",
            setting(args, "came"),
            args.seed
        ),
        "came-bf16m" => format!("{}, bf16 momentum", setting(args, "came")),
        "came-q8" => {
            let code = match args.code8 {
                Code8::MinMax => "min-max",
                _ => "absmax",
            };
            format!(
                "{}, 8-bit momentum ({code}, blocks of 256)",
                setting(args, "came")
            )
        }
        _ => format!("{} ({lr})", display_name(name)),
    }
}

/// The table the README shows, in Markdown.
fn print_table(runs: &[Run], args: &Args, unigram: (f64, f64)) {
    let adamw = runs
        .iter()
        .find(|r| r.name == "adamw")
        .map(|r| r.state_bytes);
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| optimizer | pretraining val loss, nats/char (bits) | {} before fine-tuning | \
         fine-tuned val loss, nats/char (bits) | optimizer state | vs AdamW | weights | \
         seconds (pretraining + fine-tuning) |",
        FINETUNE.0
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = adamw.map_or("-".to_string(), |a| {
            format!("{:.1}%", 100.0 * r.state_bytes as f64 / a as f64)
        });
        let _ = writeln!(
            out,
            "| {} | {:.4} ({:.3}) | {:.4} | {:.4} ({:.3}) | {} B | {ratio} | {} B | {:.1} + {:.1} |",
            setting(args, r.name),
            r.pretrain.val_loss,
            bits(r.pretrain.val_loss),
            r.zero_shot,
            r.finetune.val_loss,
            bits(r.finetune.val_loss),
            thousands(r.state_bytes),
            thousands(r.weight_bytes),
            r.pretrain.seconds,
            r.finetune.seconds
        );
    }
    let _ = writeln!(
        out,
        "| unigram baseline | {:.4} ({:.3}) | {:.4} | {:.4} ({:.3}) | | | | |",
        unigram.0,
        bits(unigram.0),
        unigram.1,
        unigram.1,
        bits(unigram.1)
    );
    print!("{out}");
}

/// Every progress point: the losses and the optimizer's state and weight bytes (`times: false`,
/// the same bytes on every run with the same settings and threads), or the seconds since the
/// phase started (`times: true`).
fn write_csv(path: &Path, runs: &[Run], times: bool) -> std::io::Result<()> {
    let mut out = String::from(if times {
        "optimizer,phase,step,seconds\n"
    } else {
        "optimizer,phase,step,train_loss,val_loss,state_bytes,weight_bytes\n"
    });
    for r in runs {
        for (phase, o) in [("pretrain", &r.pretrain), ("finetune", &r.finetune)] {
            for p in &o.points {
                let _ = if times {
                    writeln!(out, "{},{phase},{},{:.2}", r.name, p.step, p.seconds)
                } else {
                    writeln!(
                        out,
                        "{},{phase},{},{:.5},{:.5},{},{}",
                        r.name, p.step, p.train_loss, p.val_loss, r.state_bytes, r.weight_bytes
                    )
                };
            }
        }
    }
    std::fs::write(path, out)
}
