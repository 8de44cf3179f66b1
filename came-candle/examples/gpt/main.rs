//! Trains a small GPT-style character model, built from candle-nn layers, on the main job's
//! Shakespeare plays with `came_candle::Came` and with `candle_nn::AdamW`, the same weights,
//! batches and schedule for both, and compares them: validation loss, optimizer-state bytes,
//! the peak resident memory of the process, and the median time of the optimizer's step alone
//! (on the model, and on one 4096 x 4096 var).
//!
//! ```text
//! cargo run --release -p came-candle --example gpt
//! cargo run --release -p came-candle --example gpt -- --help
//! ```
//!
//! The only difference between the two runs is the line that makes the optimizer:
//!
//! ```text
//! let opt = candle_nn::AdamW::new(varmap.all_vars(), ParamsAdamW { lr, weight_decay, ..Default::default() })?;
//! let opt = came_candle::Came::new(varmap.all_vars(), ParamsCame { lr, weight_decay, ..Default::default() })?;
//! ```
//!
//! Each optimizer trains in a child process of its own (this program run again with
//! `--child`), so that each peak resident set size (`VmHWM` of `/proc/self/status`, read by
//! the child at its end) is that optimizer's alone; the 4096 x 4096 step is timed in two more
//! children, so that its buffers do not count in the training peaks. Prints a table, one line
//! per optimizer for scripts,
//! `result optimizer=came|adamw val_loss=... state_bytes=... peak_rss_bytes=... step_ms=...`,
//! and writes the curves to `came-candle/gpt.svg` and `came-candle/gpt.csv`.

mod data;
mod heap;
mod model;
mod plot;
/// The main job's SplitMix64: the same weights and batches on every machine, for both
/// optimizers.
#[path = "../../../examples/common/rng.rs"]
#[allow(dead_code)] // `uniform` serves the main job only
mod rng;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use came_candle::{Came, Instability, ParamsCame};
use candle::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use data::Corpus;
use model::{Config, Gpt};
use rng::Rng;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Counts the bytes in use, for the peak heap column.
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

const HELP: &str = "\
Trains a small GPT-style character model (candle-nn layers) on Shakespeare with
came_candle::Came and with candle_nn::AdamW, and compares validation loss, optimizer state,
peak RSS and the optimizer's step time; each optimizer runs in a child process of its own.

Options (defaults in brackets):
  --steps N          training steps [250]
  --batch N          windows per step [16]
  --context N        characters per window [64]
  --embed N          embedding width [256]
  --layers N         transformer blocks [2]
  --heads N          attention heads [4]
  --lr-came X        peak learning rate of CAME [2e-3]
  --lr-adamw X       peak learning rate of AdamW [2e-3]
  --beta3 X          CAME's beta3, the decay of its instability statistics [0.9999, the
                     reference's]
  --instability S    CAME's instability statistics: reference (zeros, uncorrected, as
                     came-pytorch: its first steps are up to 100x too large, which a run
                     this short does not recover from) or bias-corrected [bias-corrected]
  --weight-decay X   decoupled weight decay, both optimizers [0.01]
  --warmup N         steps of linear warmup before the cosine decay to a tenth [25]
  --eval-every N     steps between progress points (validation loss on --eval-windows
                     windows spread over the validation text) [50]
  --eval-windows N   windows of a progress point [64]
  --bench-size N     the square var whose step is timed alone [4096]
  --bench-steps N    timed steps of it (after one untimed) [5]
  --optimizers LIST  came,adamw or either one [came,adamw]
  --seed N           weights and batches [1]
  --data DIR         the plays [the workspace's data/]
  --svg PATH         curves [came-candle/gpt.svg]
  --csv PATH         progress points, no timings [came-candle/gpt.csv]
  --quick            a short run for CI: 40 steps, points every 20, a 1024 x 1024 bench
";

/// The run's settings.
#[derive(Clone, Debug)]
struct Options {
    steps: usize,
    batch: usize,
    config: Config,
    lr_came: f64,
    lr_adamw: f64,
    beta3: f64,
    instability: Instability,
    weight_decay: f64,
    warmup: usize,
    eval_every: usize,
    eval_windows: usize,
    bench_size: usize,
    bench_steps: usize,
    optimizers: Vec<String>,
    seed: u64,
    data: PathBuf,
    svg: PathBuf,
    csv: PathBuf,
    /// `train:<optimizer>` or `bench:<optimizer>`: this process is a child.
    child: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            steps: 250,
            batch: 16,
            config: Config {
                vocab: 0,
                context: 64,
                embed: 256,
                layers: 2,
                heads: 4,
            },
            lr_came: 2e-3,
            lr_adamw: 2e-3,
            beta3: ParamsCame::default().beta3,
            instability: Instability::BiasCorrected,
            weight_decay: 0.01,
            warmup: 25,
            eval_every: 50,
            eval_windows: 64,
            bench_size: 4096,
            bench_steps: 5,
            optimizers: vec!["came".into(), "adamw".into()],
            seed: 1,
            data: Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"),
            svg: Path::new(env!("CARGO_MANIFEST_DIR")).join("gpt.svg"),
            csv: Path::new(env!("CARGO_MANIFEST_DIR")).join("gpt.csv"),
            child: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--help" | "-h" => {
                    print!("{HELP}");
                    std::process::exit(0);
                }
                "--quick" => {
                    o.steps = 40;
                    o.eval_every = 20;
                    o.warmup = 10;
                    o.bench_size = 1024;
                    o.bench_steps = 3;
                }
                "--steps" => o.steps = value()?.parse()?,
                "--batch" => o.batch = value()?.parse()?,
                "--context" => o.config.context = value()?.parse()?,
                "--embed" => o.config.embed = value()?.parse()?,
                "--layers" => o.config.layers = value()?.parse()?,
                "--heads" => o.config.heads = value()?.parse()?,
                "--lr-came" => o.lr_came = value()?.parse()?,
                "--lr-adamw" => o.lr_adamw = value()?.parse()?,
                "--beta3" => o.beta3 = value()?.parse()?,
                "--instability" => {
                    o.instability = match value()?.as_str() {
                        "reference" => Instability::Reference,
                        "bias-corrected" => Instability::BiasCorrected,
                        other => return Err(format!("unknown --instability {other}").into()),
                    }
                }
                "--weight-decay" => o.weight_decay = value()?.parse()?,
                "--warmup" => o.warmup = value()?.parse()?,
                "--eval-every" => o.eval_every = value()?.parse()?,
                "--eval-windows" => o.eval_windows = value()?.parse()?,
                "--bench-size" => o.bench_size = value()?.parse()?,
                "--bench-steps" => o.bench_steps = value()?.parse()?,
                "--optimizers" => {
                    o.optimizers = value()?.split(',').map(str::to_string).collect();
                }
                "--seed" => o.seed = value()?.parse()?,
                "--data" => o.data = value()?.into(),
                "--svg" => o.svg = value()?.into(),
                "--csv" => o.csv = value()?.into(),
                "--child" => o.child = Some(value()?.clone()),
                other => return Err(format!("unknown option {other} (see --help)").into()),
            }
        }
        for name in &o.optimizers {
            if name != "came" && name != "adamw" {
                return Err(format!("unknown optimizer {name}: came or adamw").into());
            }
        }
        if !o.config.embed.is_multiple_of(o.config.heads) {
            return Err("--embed must be a multiple of --heads".into());
        }
        if o.steps == 0 || o.batch == 0 || o.eval_every == 0 || o.bench_steps == 0 {
            return Err("--steps, --batch, --eval-every and --bench-steps must be > 0".into());
        }
        Ok(o)
    }

    /// The learning rate at `step` (0-based) for a peak of `peak`: linear warmup from
    /// `peak / warmup`, then a cosine decay to a tenth of the peak at the last step.
    fn lr(&self, peak: f64, step: usize) -> f64 {
        if step < self.warmup {
            return peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let done = (step - self.warmup) as f64 / span;
        peak * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * done).cos()))
    }
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options::parse(&args)?;
    match options.child.as_deref() {
        Some(child) => run_child(&options, child),
        None => run_parent(&options, &args),
    }
}

// ---------------------------------------------------------------------------------------------
// the children

/// Peak and current resident set size of this process, in bytes (`VmHWM`, `VmRSS`); 0 where
/// `/proc/self/status` does not exist.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn run_child(o: &Options, child: &str) -> Result {
    let (mode, name) = child
        .split_once(':')
        .ok_or("--child takes train:NAME or bench:NAME")?;
    match mode {
        "train" => train(o, name),
        "bench" => bench(o, name),
        _ => Err(format!("unknown child mode {mode}").into()),
    }
}

/// The optimizer under test, behind candle's trait.
enum Opt {
    Came(Box<Came>),
    AdamW(AdamW),
}

impl Opt {
    /// The one line that differs between the runs.
    fn new(name: &str, vars: Vec<Var>, lr: f64, o: &Options) -> Result<Self> {
        let weight_decay = o.weight_decay;
        Ok(match name {
            "came" => Opt::Came(Box::new(Came::new(
                vars,
                ParamsCame {
                    lr,
                    weight_decay,
                    beta3: o.beta3,
                    instability: o.instability,
                    ..Default::default()
                },
            )?)),
            _ => Opt::AdamW(AdamW::new(
                vars,
                ParamsAdamW {
                    lr,
                    weight_decay,
                    ..Default::default()
                },
            )?),
        })
    }

    fn step(&mut self, grads: &candle::backprop::GradStore) -> candle::Result<()> {
        match self {
            Opt::Came(o) => o.step(grads),
            Opt::AdamW(o) => o.step(grads),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            Opt::Came(o) => o.set_learning_rate(lr),
            Opt::AdamW(o) => o.set_learning_rate(lr),
        }
    }

    /// Bytes of optimizer state: CAME's as it counts them; AdamW's two moments, each the size
    /// of its var.
    fn state_bytes(&self, vars: &[Var]) -> usize {
        match self {
            Opt::Came(o) => o.state_bytes(),
            Opt::AdamW(_) => vars
                .iter()
                .map(|v| 2 * v.elem_count() * v.dtype().size_in_bytes())
                .sum(),
        }
    }
}

/// Mean loss over the windows of `ids` starting at `starts`, `batch` windows at a time.
fn mean_loss(model: &Gpt, ids: &[u32], starts: &[usize], o: &Options) -> Result<f64> {
    let mut total = 0.0;
    for chunk in starts.chunks(o.batch) {
        let (x, y) = data::windows(ids, chunk, o.config.context)?;
        let loss = model.loss(&x, &y)?.to_scalar::<f32>()?;
        total += f64::from(loss) * chunk.len() as f64;
    }
    Ok(total / starts.len() as f64)
}

fn train(o: &Options, name: &str) -> Result {
    let corpus = Corpus::load(&o.data)
        .map_err(|e| format!("reading the plays in {}: {e}", o.data.display()))?;
    let config = Config {
        vocab: corpus.vocab,
        ..o.config
    };
    let varmap = VarMap::new();
    let model = Gpt::new(&config, &varmap, o.seed)?;
    let vars = varmap.all_vars();
    let params: usize = vars.iter().map(|v| v.elem_count()).sum();
    let peak_lr = if name == "came" {
        o.lr_came
    } else {
        o.lr_adamw
    };
    let mut opt = Opt::new(name, vars.clone(), o.lr(peak_lr, 0), o)?;

    let t = config.context;
    // progress points: windows spread evenly over the validation text; the final loss: every
    // whole window of it
    let last = corpus.val.len() - t - 1;
    let points: Vec<usize> = (0..o.eval_windows)
        .map(|i| i * last / o.eval_windows.max(1))
        .collect();
    let all: Vec<usize> = (0..corpus.val.len().saturating_sub(1) / t)
        .map(|i| i * t)
        .collect();

    let mut rng = Rng::new(o.seed.wrapping_add(1));
    let mut step_ms = Vec::with_capacity(o.steps);
    let start = Instant::now();
    let mut train_loss = 0.0;
    let mut since = 0usize;
    for step in 0..o.steps {
        opt.set_learning_rate(o.lr(peak_lr, step));
        let (x, y) = data::batch(&corpus.train, o.batch, t, &mut rng)?;
        let loss = model.loss(&x, &y)?;
        train_loss += f64::from(loss.to_scalar::<f32>()?);
        since += 1;
        let grads = loss.backward()?;
        let timer = Instant::now();
        opt.step(&grads)?;
        step_ms.push(timer.elapsed().as_secs_f64() * 1e3);
        drop(grads);
        let done = step + 1;
        if done % o.eval_every == 0 || done == o.steps {
            let val = mean_loss(&model, &corpus.val, &points, o)?;
            println!(
                "point optimizer={name} step={done} train_loss={:.4} val_loss={val:.4} seconds={:.1}",
                train_loss / since as f64,
                start.elapsed().as_secs_f64()
            );
            train_loss = 0.0;
            since = 0;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let val = mean_loss(&model, &corpus.val, &all, o)?;
    let (peak, _) = rss();
    let (state, heap, ms, chars) = (
        opt.state_bytes(&vars),
        heap::peak(),
        median(step_ms),
        all.len() * t,
    );
    println!(
        "done optimizer={name} val_loss={val:.4} state_bytes={state} peak_rss_bytes={peak} \
         peak_heap_bytes={heap} step_ms={ms:.3} params={params} val_chars={chars} \
         train_seconds={seconds:.1}"
    );
    Ok(())
}

/// Times the optimizer's step alone on one square var.
fn bench(o: &Options, name: &str) -> Result {
    let n = o.bench_size;
    let mut rng = Rng::new(o.seed.wrapping_add(2));
    let values: Vec<f32> = (0..n * n).map(|_| 0.02 * rng.normal()).collect();
    let var = Var::from_vec(values, (n, n), &Device::Cpu)?;
    let values: Vec<f32> = (0..n * n).map(|_| 1e-3 * rng.normal()).collect();
    let grad = Tensor::from_vec(values, (n, n), &Device::Cpu)?;
    let mut grads = candle::backprop::GradStore::default();
    grads.insert(var.as_tensor(), grad);
    let mut opt = Opt::new(name, vec![var.clone()], 1e-3, o)?;
    opt.step(&grads)?;
    let mut ms = Vec::new();
    for _ in 0..o.bench_steps {
        let timer = Instant::now();
        opt.step(&grads)?;
        ms.push(timer.elapsed().as_secs_f64() * 1e3);
    }
    assert_eq!(var.dtype(), DType::F32);
    let (peak, _) = rss();
    let (state, heap, ms) = (opt.state_bytes(&[var]), heap::peak(), median(ms));
    println!(
        "bench optimizer={name} numel={} step_ms={ms:.3} state_bytes={state} \
         peak_rss_bytes={peak} peak_heap_bytes={heap}",
        n * n
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the parent

/// One optimizer's outcome, as its children reported it.
#[derive(Clone, Debug, Default)]
struct Outcome {
    name: String,
    /// (step, training loss, validation loss on the progress windows)
    points: Vec<(usize, f64, f64)>,
    val_loss: f64,
    state_bytes: u64,
    peak_rss: u64,
    peak_heap: u64,
    step_ms: f64,
    params: u64,
    val_chars: u64,
    seconds: f64,
    bench_ms: f64,
    bench_state: u64,
    bench_rss: u64,
    bench_heap: u64,
}

/// `key=value` fields of a line.
fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs this program again as a child, echoing its lines as they come; returns them.
fn spawn(args: &[String], child: &str) -> Result<Vec<String>> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(["--child", child])
        .stdout(Stdio::piped());
    let mut proc = cmd.spawn()?;
    let stdout = proc.stdout.take().ok_or("no stdout from the child")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line.starts_with("point ") {
            println!(
                "  {:<6} step {:>5}  train {:.4}  val {:.4}  ({} s)",
                field::<String>(&line, "optimizer").unwrap_or_default(),
                field::<usize>(&line, "step").unwrap_or_default(),
                field::<f64>(&line, "train_loss").unwrap_or(f64::NAN),
                field::<f64>(&line, "val_loss").unwrap_or(f64::NAN),
                field::<String>(&line, "seconds").unwrap_or_default(),
            );
        }
        lines.push(line);
    }
    let status = proc.wait()?;
    if !status.success() {
        return Err(format!("the child {child} failed: {status}").into());
    }
    Ok(lines)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn run_parent(o: &Options, args: &[String]) -> Result {
    let c = &o.config;
    println!(
        "GPT: {} layers, {} wide, {} heads, context {}; {} steps of {} x {} characters; \
         lr CAME {}, AdamW {}, weight decay {}",
        c.layers,
        c.embed,
        c.heads,
        c.context,
        o.steps,
        o.batch,
        c.context,
        o.lr_came,
        o.lr_adamw,
        o.weight_decay
    );
    let mut outcomes = Vec::new();
    for name in &o.optimizers {
        let mut out = Outcome {
            name: name.clone(),
            ..Outcome::default()
        };
        for line in spawn(args, &format!("train:{name}"))? {
            if line.starts_with("point ") {
                out.points.push((
                    field(&line, "step").unwrap_or_default(),
                    field(&line, "train_loss").unwrap_or(f64::NAN),
                    field(&line, "val_loss").unwrap_or(f64::NAN),
                ));
            } else if line.starts_with("done ") {
                out.val_loss = field(&line, "val_loss").unwrap_or(f64::NAN);
                out.state_bytes = field(&line, "state_bytes").unwrap_or_default();
                out.peak_rss = field(&line, "peak_rss_bytes").unwrap_or_default();
                out.peak_heap = field(&line, "peak_heap_bytes").unwrap_or_default();
                out.step_ms = field(&line, "step_ms").unwrap_or(f64::NAN);
                out.params = field(&line, "params").unwrap_or_default();
                out.val_chars = field(&line, "val_chars").unwrap_or_default();
                out.seconds = field(&line, "train_seconds").unwrap_or(f64::NAN);
            }
        }
        outcomes.push(out);
    }
    for out in &mut outcomes {
        for line in spawn(args, &format!("bench:{}", out.name))? {
            if line.starts_with("bench ") {
                out.bench_ms = field(&line, "step_ms").unwrap_or(f64::NAN);
                out.bench_state = field(&line, "state_bytes").unwrap_or_default();
                out.bench_rss = field(&line, "peak_rss_bytes").unwrap_or_default();
                out.bench_heap = field(&line, "peak_heap_bytes").unwrap_or_default();
            }
        }
    }

    let params = outcomes.first().map_or(0, |x| x.params);
    let chars = outcomes.first().map_or(0, |x| x.val_chars);
    println!();
    println!(
        "{params} weights; validation loss over {chars} held-out characters (nats per character)"
    );
    println!(
        "{:<8} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "the GPT", "val loss", "state", "peak RSS", "peak heap", "step", "training"
    );
    for x in &outcomes {
        println!(
            "{:<8} {:>9.4} {:>7.2} MiB {:>7.1} MiB {:>7.1} MiB {:>8.3} ms {:>7.1} s",
            x.name,
            x.val_loss,
            mib(x.state_bytes),
            mib(x.peak_rss),
            mib(x.peak_heap),
            x.step_ms,
            x.seconds,
        );
    }
    println!();
    println!(
        "{:<18} {:>11} {:>11} {:>11} {:>11}",
        format!("one {0}x{0} var", o.bench_size),
        "step",
        "state",
        "peak RSS",
        "peak heap"
    );
    for x in &outcomes {
        println!(
            "{:<18} {:>8.2} ms {:>7.1} MiB {:>7.1} MiB {:>7.1} MiB",
            x.name,
            x.bench_ms,
            mib(x.bench_state),
            mib(x.bench_rss),
            mib(x.bench_heap),
        );
    }
    println!(
        "step: the median time of the optimizer's step alone; peak RSS: VmHWM of the run's \
         process; peak heap: the most bytes allocated at once, counted at each allocation"
    );
    let came = outcomes.iter().find(|x| x.name == "came");
    let adamw = outcomes.iter().find(|x| x.name == "adamw");
    if let (Some(c), Some(a)) = (came, adamw) {
        let saved = a.state_bytes as f64 - c.state_bytes as f64;
        let bench_saved = a.bench_state as f64 - c.bench_state as f64;
        let diff = |a: u64, c: u64| (a as f64 - c as f64) / (1024.0 * 1024.0);
        println!();
        println!(
            "validation loss: CAME {:+.2}% of AdamW's; CAME's step takes {:.2}x AdamW's time \
             on the model, {:.3}x on the {}x{} var",
            100.0 * (c.val_loss / a.val_loss - 1.0),
            c.step_ms / a.step_ms,
            c.bench_ms / a.bench_ms,
            o.bench_size,
            o.bench_size
        );
        println!(
            "memory: CAME keeps {:.2} MiB less state; its peak RSS is {:.2} MiB lower, its \
             peak heap {:.2} MiB lower (the {}x{} var: {:.1} MiB less state, {:.1} and {:.1} MiB \
             lower)",
            saved / (1024.0 * 1024.0),
            diff(a.peak_rss, c.peak_rss),
            diff(a.peak_heap, c.peak_heap),
            o.bench_size,
            o.bench_size,
            bench_saved / (1024.0 * 1024.0),
            diff(a.bench_rss, c.bench_rss),
            diff(a.bench_heap, c.bench_heap),
        );
    }
    println!();
    for x in &outcomes {
        println!(
            "result optimizer={} val_loss={:.4} state_bytes={} peak_rss_bytes={} step_ms={:.3}",
            x.name, x.val_loss, x.state_bytes, x.peak_rss, x.step_ms
        );
    }

    let mut csv = String::from("optimizer,step,train_loss,val_loss\n");
    for x in &outcomes {
        for (step, train, val) in &x.points {
            csv.push_str(&format!("{},{step},{train:.6},{val:.6}\n", x.name));
        }
    }
    std::fs::write(&o.csv, csv)?;
    plot::write_svg(&o.svg, o, &outcomes)?;
    println!("wrote {} and {}", o.csv.display(), o.svg.display());
    Ok(())
}
