//! Times optimizer steps, side by side with the memory-traffic floor, in one run.
//!
//! ```text
//! cargo run --release --features std --example bench -- --shape 4096x4096 --threads 1 --steps 9
//! cargo run --release --features std --example bench -- --model gpt2-small --threads 2
//! ```
//!
//! Options: `--shape RxC | N | AxBxCxD` (default 4096x4096), `--model gpt2-small`,
//! `--threads N` (default 1), `--steps K` timed steps after one warm-up (default 9),
//! `--optimizer came|adamw|both` (default both), `--dtype f32|f64` (default f32),
//! `--no-floor` to skip the floor, `--device cuda` (with `--features cuda`) to time the GPU
//! optimizer instead, with the achieved memory bandwidth at 32 bytes per element.
//!
//! One line per measured case:
//!
//! ```text
//! came_step shape=4096x4096 dtype=f32 threads=1 median_ms=… min_ms=… melem_per_s=…
//! adamw_step …
//! floor_step …   four sweeps over the same arrays with no optimizer arithmetic:
//!                read g | read g | read g, m, write m | read m, p, write p
//! came_model model=gpt2-small threads=1 tensors=148 params=124439808 median_ms=… min_ms=…
//! ```
//!
//! then the ratios between them and the peak resident memory against what the buffers need.

use std::time::Instant;

#[cfg(feature = "cuda")]
mod gpu;

use came::adamw::{AdamWConfig, AdamWState};
use came::{AdamW, Came, CameConfig, CameState, Float, Optimizer, Pool, Shape};
use rayon::prelude::*;

struct Args {
    shape: Vec<usize>,
    model: Option<String>,
    threads: usize,
    steps: usize,
    came: bool,
    adamw: bool,
    floor: bool,
    f64: bool,
    cuda: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        shape: vec![4096, 4096],
        model: None,
        threads: 1,
        steps: 9,
        came: true,
        adamw: true,
        floor: true,
        f64: false,
        cuda: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--shape" => a.shape = parse_shape(&value()?)?,
            "--model" => match value()?.as_str() {
                "gpt2-small" => a.model = Some("gpt2-small".into()),
                m => return Err(format!("unknown model {m} (known: gpt2-small)")),
            },
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--steps" => a.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--optimizer" => match value()?.as_str() {
                "came" => (a.came, a.adamw) = (true, false),
                "adamw" => (a.came, a.adamw) = (false, true),
                "both" => (a.came, a.adamw) = (true, true),
                o => return Err(format!("--optimizer: came, adamw or both, not {o}")),
            },
            "--dtype" => match value()?.as_str() {
                "f32" => a.f64 = false,
                "f64" => a.f64 = true,
                d => return Err(format!("--dtype: f32 or f64, not {d}")),
            },
            "--no-floor" => a.floor = false,
            "--device" => match value()?.as_str() {
                "cpu" => a.cuda = false,
                "cuda" if cfg!(feature = "cuda") => a.cuda = true,
                "cuda" => return Err("--device cuda needs --features cuda".into()),
                d => return Err(format!("--device: cpu or cuda, not {d}")),
            },
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    Ok(a)
}

fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    s.split('x')
        .map(|d| d.parse().map_err(|e| format!("bad shape {s}: {e}")))
        .collect()
}

fn shape_name(dims: &[usize]) -> String {
    dims.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// GPT-2 small's parameters: embeddings, 12 blocks of attention and MLP, final LayerNorm.
fn gpt2_small() -> Vec<Vec<usize>> {
    let (d, vocab, ctx) = (768, 50257, 1024);
    let mut t = vec![vec![vocab, d], vec![ctx, d]];
    for _ in 0..12 {
        t.extend([
            vec![d],
            vec![d], // ln_1 weight, bias
            vec![d, 3 * d],
            vec![3 * d], // attn.c_attn
            vec![d, d],
            vec![d], // attn.c_proj
            vec![d],
            vec![d], // ln_2
            vec![d, 4 * d],
            vec![4 * d], // mlp.c_fc
            vec![4 * d, d],
            vec![d], // mlp.c_proj
        ]);
    }
    t.extend([vec![d], vec![d]]); // ln_f
    t
}

/// Deterministic data in [-1, 1): a cheap integer hash, no allocation beyond the buffer.
pub(crate) fn fill<T: Float>(v: &mut [T], seed: u64, scale: f64) {
    for (i, x) in v.iter_mut().enumerate() {
        let mut z = (i as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        *x = T::from_f64(scale * (2.0 * u - 1.0));
    }
}

pub(crate) struct Timing {
    pub(crate) median_ms: f64,
    pub(crate) min_ms: f64,
}

/// Times the cases round-robin, one step of each per round after a warm-up round, so that
/// every case sees the same machine: shared machines drift, and ratios between cases measured
/// minutes apart are not worth much.
pub(crate) fn time_interleaved(steps: usize, cases: &mut [&mut dyn FnMut()]) -> Vec<Timing> {
    for case in cases.iter_mut() {
        case(); // warm-up: page in, caches, thread pool
    }
    let mut ms = vec![Vec::with_capacity(steps); cases.len()];
    for _ in 0..steps {
        for (case, ms) in cases.iter_mut().zip(&mut ms) {
            let t = Instant::now();
            case();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.into_iter()
        .map(|mut ms| {
            ms.sort_by(f64::total_cmp);
            Timing {
                median_ms: ms[ms.len() / 2],
                min_ms: ms[0],
            }
        })
        .collect()
}

/// The floor: the four sweeps of a direct CAME step, with no optimizer arithmetic: `sum(g)`,
/// `sum(g)`, `m = m / 2 + g`, `p = p - m / 1000`. (The crate's step makes three: it takes the
/// update's norm, for which a direct step reads `g` a second time, from the first sweep.) Compiled for the same instruction
/// sets as the crate's kernels (picked at run time) and run on the same threads: the calling
/// thread alone with one thread, like the optimizer.
fn floor_sweeps<T: Float>(
    pool: Option<&rayon::ThreadPool>,
    chunk: usize,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
) -> f64 {
    let arch = pulp::Arch::new();
    let sweeps = |p: &mut [T], g: &[T], m: &mut [T]| {
        let s1 = arch.dispatch(Sum(g));
        let s2 = arch.dispatch(Sum(g));
        arch.dispatch(Halve(m, g));
        arch.dispatch(Step(p, m));
        s1 + s2
    };
    match pool {
        None => sweeps(p, g, m),
        Some(pool) => pool.install(|| {
            let s1: f64 = g.par_chunks(chunk).map(|g| arch.dispatch(Sum(g))).sum();
            let s2: f64 = g.par_chunks(chunk).map(|g| arch.dispatch(Sum(g))).sum();
            let ms = m.par_chunks_mut(chunk).zip(g.par_chunks(chunk));
            ms.for_each(|(m, g)| arch.dispatch(Halve(m, g)));
            let ps = p.par_chunks_mut(chunk).zip(m.par_chunks(chunk));
            ps.for_each(|(p, m)| arch.dispatch(Step(p, m)));
            s1 + s2
        }),
    }
}

/// Floor sweeps 1 and 2: read `g`.
struct Sum<'a, T>(&'a [T]);

impl<T: Float> pulp::WithSimd for Sum<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        let mut acc = [T::zero(); 16];
        let (chunks, tail) = self.0.as_chunks::<16>();
        for c in chunks {
            for k in 0..16 {
                acc[k] = acc[k] + c[k];
            }
        }
        acc.iter().chain(tail).fold(0.0, |s, x| s + x.as_f64())
    }
}

/// Floor sweep 3: read `g` and `m`, write `m`.
struct Halve<'a, T>(&'a mut [T], &'a [T]);

impl<T: Float> pulp::WithSimd for Halve<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let half = T::from_f64(0.5);
        for (m, &g) in self.0.iter_mut().zip(self.1) {
            *m = *m * half + g;
        }
    }
}

/// Floor sweep 4: read `m` and `p`, write `p`.
struct Step<'a, T>(&'a mut [T], &'a [T]);

impl<T: Float> pulp::WithSimd for Step<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let small = T::from_f64(1e-3);
        for (p, &m) in self.0.iter_mut().zip(self.1) {
            *p = *p - m * small;
        }
    }
}

/// A rayon pool of the same size for the floor's sweeps; none for one thread.
fn floor_pool(threads: usize) -> Option<rayon::ThreadPool> {
    (threads > 1).then(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    })
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn mib(elems: usize, bytes: usize) -> f64 {
    (elems * bytes) as f64 / (1024.0 * 1024.0)
}

fn print_case(kind: &str, what: &str, dtype: &str, threads: usize, elems: usize, t: &Timing) {
    println!(
        "{kind} {what} dtype={dtype} threads={threads} median_ms={:.4} min_ms={:.4} melem_per_s={:.1}",
        t.median_ms,
        t.min_ms,
        elems as f64 / t.median_ms / 1e3
    );
}

fn run_shape<T: Float>(a: &Args, pool: &Pool) {
    let dtype = if a.f64 { "f64" } else { "f32" };
    let shape = Shape::new(&a.shape).expect("shape");
    let n = shape.numel();
    let what = format!("shape={}", shape_name(&a.shape));
    let mut p = vec![T::zero(); n];
    let mut g = vec![T::zero(); n];
    fill(&mut p, 1, 1.0);
    fill(&mut g, 2, 1e-2);
    let chunk = n.div_ceil(pool.threads() * 4).max(4096);
    let fpool = floor_pool(pool.threads());
    let came_config = CameConfig::new(1e-4);
    let adamw_config = AdamWConfig::new(1e-4);
    let mut came_buf = vec![T::zero(); if a.came { shape.state_len() } else { 0 }];
    let mut adamw_buf = vec![T::zero(); if a.adamw { 2 * n } else { 0 }];
    let state_elems = came_buf.len() + adamw_buf.len();
    // The floor streams the same arrays as a CAME step: the gradient, the momentum (the
    // first `numel` values of the CAME state, or a buffer of its own) and the parameters.
    let mut floor_m = vec![T::zero(); if a.floor && !a.came { n } else { 0 }];
    let mut came_state = CameState::new(&mut came_buf);
    let mut adamw_state = AdamWState::new(&mut adamw_buf);
    // the cases share `p` and the CAME state, one at a time
    let shared = std::cell::RefCell::new((&mut p, &mut came_state));
    let g = &g;
    let mut floor = || {
        let mut guard = shared.borrow_mut();
        let (p, st) = &mut *guard;
        let m = if floor_m.is_empty() {
            let (buf, step) =
                std::mem::replace(*st, CameState::from_parts(&mut [], 0)).into_parts();
            let out = floor_sweeps(fpool.as_ref(), chunk, p, g, &mut buf[..n]);
            **st = CameState::from_parts(buf, step);
            out
        } else {
            floor_sweeps(fpool.as_ref(), chunk, p, g, &mut floor_m)
        };
        std::hint::black_box(m);
    };
    let mut came = || {
        let mut guard = shared.borrow_mut();
        let (p, st) = &mut *guard;
        pool.step(&came_config, &shape, p, g, st)
            .expect("came step");
    };
    let mut adamw = || {
        let mut guard = shared.borrow_mut();
        let (p, _) = &mut *guard;
        pool.adamw_step(&adamw_config, p, g, &mut adamw_state)
            .expect("adamw step");
    };
    let mut names = Vec::new();
    let mut cases: Vec<&mut dyn FnMut()> = Vec::new();
    if a.floor {
        names.push(("floor", "floor_step"));
        cases.push(&mut floor);
    }
    if a.came {
        names.push(("came", "came_step"));
        cases.push(&mut came);
    }
    if a.adamw {
        names.push(("adamw", "adamw_step"));
        cases.push(&mut adamw);
    }
    let timings = time_interleaved(a.steps, &mut cases);
    let mut results = Vec::new();
    for ((key, kind), t) in names.iter().zip(&timings) {
        print_case(kind, &what, dtype, pool.threads(), n, t);
        results.push((*key, t.median_ms));
    }
    print_ratios(&results);
    if let Some(rss) = peak_rss_mib() {
        let needed = mib(2 * n + state_elems + floor_m.len(), size_of::<T>());
        println!(
            "memory {what} buffers_mib={needed:.1} peak_rss_mib={rss:.1} overhead_mib={:.1}",
            rss - needed
        );
    }
}

fn print_ratios(results: &[(&str, f64)]) {
    let get = |k: &str| results.iter().find(|r| r.0 == k).map(|r| r.1);
    let mut parts = Vec::new();
    for opt in ["came", "adamw"] {
        if let (Some(g), Some(u)) = (get(opt), get(&format!("{opt}_unguarded"))) {
            parts.push(format!("{opt}_guard_cost={:+.1}%", 100.0 * (g / u - 1.0)));
        }
    }
    if let (Some(c), Some(f)) = (get("came"), get("floor")) {
        parts.push(format!("came/floor={:.3}", c / f));
    }
    if let (Some(c), Some(a)) = (get("came"), get("adamw")) {
        parts.push(format!("came/adamw={:.3}", c / a));
    }
    if !parts.is_empty() {
        println!("ratios {}", parts.join(" "));
    }
}

/// A tensor's parameters and gradient, as the owned optimizers take them.
type Pair<'a, T> = (&'a mut [T], &'a [T]);

fn run_model<T: Float>(a: &Args, pool: &Pool, name: &str) {
    let dims = gpt2_small();
    let shapes: Vec<Shape> = dims.iter().map(|d| Shape::new(d).expect("shape")).collect();
    let total: usize = shapes.iter().map(Shape::numel).sum();
    let what = format!("model={name}");
    let mut params: Vec<Vec<T>> = shapes.iter().map(|s| vec![T::zero(); s.numel()]).collect();
    let mut grads: Vec<Vec<T>> = params.clone();
    for (i, (p, g)) in params.iter_mut().zip(&mut grads).enumerate() {
        fill(p, 2 * i as u64 + 1, 0.02);
        fill(g, 2 * i as u64 + 2, 1e-3);
    }
    // the owned optimizers a trainer would use, with the non-finite guard on (the default)
    // and off, to measure what the guard costs
    let came = |guard: bool| {
        let mut opt = Came::<T>::new(CameConfig::new(1e-4)).expect("config");
        for (i, d) in dims.iter().enumerate() {
            opt.register(&format!("t{i}"), d).expect("register");
        }
        opt.set_threads(pool.threads()).expect("threads");
        opt.set_nonfinite_guard(guard);
        opt
    };
    let adamw = |guard: bool| {
        let mut opt = AdamW::<T>::new(AdamWConfig::new(1e-4)).expect("config");
        for (i, d) in dims.iter().enumerate() {
            opt.register(&format!("t{i}"), d).expect("register");
        }
        opt.set_threads(pool.threads()).expect("threads");
        opt.set_nonfinite_guard(guard);
        opt
    };
    let mut came_opts = if a.came {
        vec![came(true), came(false)]
    } else {
        vec![]
    };
    let mut adamw_opts = if a.adamw {
        vec![adamw(true), adamw(false)]
    } else {
        vec![]
    };
    // the floor over the same number of elements, as one flat run of each array
    let floor_len = if a.floor { total } else { 0 };
    let (mut fp, mut fm) = (vec![T::zero(); floor_len], vec![T::zero(); floor_len]);
    let mut fg = vec![T::zero(); floor_len];
    fill(&mut fg, 3, 1e-3);
    let chunk = total.div_ceil(pool.threads() * 4).max(4096);
    let fpool = floor_pool(pool.threads());
    let params = std::cell::RefCell::new(&mut params);
    let step = |opt: &mut dyn FnMut(&mut [Pair<'_, T>])| {
        let mut params = params.borrow_mut();
        let mut pairs: Vec<Pair<'_, T>> = params
            .iter_mut()
            .zip(&grads)
            .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
            .collect();
        opt(&mut pairs);
    };
    let mut floor = || {
        std::hint::black_box(floor_sweeps(fpool.as_ref(), chunk, &mut fp, &fg, &mut fm));
    };
    let mut names = Vec::new();
    let mut cases: Vec<Box<dyn FnMut() + '_>> = Vec::new();
    if a.floor {
        names.push(("floor", "floor_model"));
        cases.push(Box::new(&mut floor));
    }
    let labels = [
        ("came", "came_model"),
        ("came_unguarded", "came_model_unguarded"),
    ];
    for (opt, label) in came_opts.iter_mut().zip(labels) {
        names.push(label);
        cases.push(Box::new(move || {
            step(&mut |p| {
                opt.step(p).expect("came step");
            });
        }));
    }
    let labels = [
        ("adamw", "adamw_model"),
        ("adamw_unguarded", "adamw_model_unguarded"),
    ];
    for (opt, label) in adamw_opts.iter_mut().zip(labels) {
        names.push(label);
        cases.push(Box::new(move || {
            step(&mut |p| {
                opt.step(p).expect("adamw step");
            });
        }));
    }
    let mut refs: Vec<&mut dyn FnMut()> = cases
        .iter_mut()
        .map(|c| &mut **c as &mut dyn FnMut())
        .collect();
    let timings = time_interleaved(a.steps, &mut refs);
    let mut results = Vec::new();
    for ((key, kind), t) in names.iter().zip(&timings) {
        println!(
            "{kind} {what} threads={} tensors={} params={total} median_ms={:.3} min_ms={:.3}",
            pool.threads(),
            shapes.len(),
            t.median_ms,
            t.min_ms
        );
        results.push((*key, t.median_ms));
    }
    print_ratios(&results);
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!(
                "usage: bench [--shape RxC|N|AxBxCxD | --model gpt2-small] [--threads N] \
                 [--steps K] [--optimizer came|adamw|both] [--dtype f32|f64] [--no-floor] \
                 [--device cpu|cuda]"
            );
            std::process::exit(2);
        }
    };
    #[cfg(feature = "cuda")]
    if args.cuda {
        let dims = match &args.model {
            Some(_) => gpt2_small(),
            None => vec![args.shape.clone()],
        };
        let what = match &args.model {
            Some(m) => format!("model={m}"),
            None => format!("shape={}", shape_name(&args.shape)),
        };
        if args.f64 {
            gpu::run::<f64>(&dims, &what, args.steps, args.model.is_some());
        } else {
            gpu::run::<f32>(&dims, &what, args.steps, args.model.is_some());
        }
        return;
    }
    let pool = Pool::new(args.threads).expect("thread pool");
    match (&args.model, args.f64) {
        (Some(m), false) => run_model::<f32>(&args, &pool, m),
        (Some(m), true) => run_model::<f64>(&args, &pool, m),
        (None, false) => run_shape::<f32>(&args, &pool),
        (None, true) => run_shape::<f64>(&args, &pool),
    }
}
