//! Times optimizer steps, side by side with the memory-traffic floor, in one run.
//!
//! ```text
//! cargo run --release --features std --example bench -- --shape 4096x4096 --threads 1 --steps 9
//! cargo run --release --features std --example bench -- --model gpt2-small --threads 2
//! ```
//!
//! Options: `--shape RxC | N | AxBxCxD` (default 4096x4096), `--model gpt2-small`,
//! `--threads N` (default 1), `--steps K` timed steps after one warm-up (default 9),
//! `--optimizer came|adamw|both` (default both), `--dtype f32|f64|bf16|f16` (default f32),
//! `--momentum f32|bf16|q8` (default f32: CAME's momentum in the compute type; `bf16` or
//! block-wise 8 bits, `Momentum::INT8`, for the tensors the rule of `came::momentum` picks),
//! `--no-floor` to skip the floor, `--device cuda` (with `--features cuda`; any `--dtype`, f32
//! momentum) to time the GPU optimizer instead, with the achieved memory bandwidth at 32 bytes
//! per element in `f32` (half of them the parameters' and gradients', which scale with their
//! storage: 24 for bf16 and f16, 64 in `f64`).
//!
//! `--dtype` is the type parameters and gradients are stored in; the state (momentum and
//! statistics) is kept in the type the update is computed in: `f32` for `f32`, `bf16` and `f16`
//! (`Came::<half::bf16>`, `came::step::<half::bf16, half::bf16>`), `f64` for `f64`. AdamW stores
//! everything in `f32` or `f64` only: with `bf16` or `f16` it is skipped (said on stderr), and
//! `--optimizer adamw` is refused. With a 16-bit dtype or a packed momentum, an `f32` AdamW
//! step over `f32` copies of the data runs beside (`adamw_f32_step`), the baseline of the
//! memory and speed targets.
//!
//! One line per measured case, with the storage and the bytes one element of the step moves
//! through memory (`bytes_per_elem`; `gb_per_s` is that times `melem_per_s`):
//!
//! ```text
//! came_step shape=4096x4096 dtype=f32 momentum=f32 bytes_per_elem=28 threads=1 median_ms=… min_ms=… melem_per_s=… gb_per_s=…
//! adamw_step …
//! floor_step …   four sweeps over the same arrays with no optimizer arithmetic:
//!                read g | read g | read g, m, write m | read m, p, write p
//! came_model model=gpt2-small dtype=f32 momentum=f32 bytes_per_elem=28 threads=1 tensors=148 params=124439808 median_ms=… min_ms=…
//! ```
//!
//! Bytes per element: CAME reads `g` twice, reads and writes `m` and reads it again, reads and
//! writes `p`: 28 in `f32` (8 + 12 + 8), 20 with 16-bit `p` and `g` (4 + 12 + 4), 56 in `f64`.
//! AdamW reads `g`, reads and writes `p`, `m` and `v`: 28 in `f32`, and the owned optimizer's
//! non-finite guard reads `g` once more (32). The floor reads `g` three times, reads `m` twice
//! and writes it once, and reads and writes `p`: 32 in `f32`, 22 with 16-bit `p` and `g`. With
//! 16-bit types the floor widens and rounds each value as a step does (`half`'s conversions),
//! so it measures that work as well as the traffic. Like the optimizers' sweeps, it requests its
//! cache lines ahead (software prefetch, on x86).
//!
//! Then the ratios between them and the peak resident memory against what the buffers need.

use std::time::Instant;

#[path = "../common/gpt2.rs"]
mod gpt2;
#[cfg(feature = "cuda")]
mod gpu;

use gpt2::gpt2_small;

use came::adamw::{AdamWConfig, AdamWState};
use came::optim::{CpuOptimizer, Steps};
use came::{Came, CameConfig, CameState, Element, Float, Momentum, Optimizer, Pool, Shape};
use half::{bf16, f16};
use rayon::prelude::*;

/// The type parameters and gradients are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    Bf16,
    F16,
}

/// A type the bench stores parameters and gradients in: CAME steps any [`Element`], AdamW only
/// `f32` and `f64`.
trait Storage: Element {
    /// Its name in the output (`bf16`).
    const NAME: &'static str;
    /// AdamW over this type, or `None`.
    const ADAMW: Option<AdamWSteps<Self>>;
}

impl Storage for f32 {
    const NAME: &'static str = "f32";
    const ADAMW: Option<AdamWSteps<Self>> = Some(AdamWSteps::OF);
}

impl Storage for f64 {
    const NAME: &'static str = "f64";
    const ADAMW: Option<AdamWSteps<Self>> = Some(AdamWSteps::OF);
}

impl Storage for bf16 {
    const NAME: &'static str = "bf16";
    const ADAMW: Option<AdamWSteps<Self>> = None;
}

impl Storage for f16 {
    const NAME: &'static str = "f16";
    const ADAMW: Option<AdamWSteps<Self>> = None;
}

/// One borrowed step over `p` with `g`, the state (`2 numel` values) in `buf` after `step`
/// steps; returns the step count after it.
type BorrowedStep<T> = fn(pool: &Pool, p: &mut [T], g: &[T], buf: &mut [T], step: u64) -> u64;

/// A step of every tensor of a model.
type ModelStep<T> = Box<dyn FnMut(&mut [Pair<'_, T>])>;

/// AdamW's two cases over `T`.
struct AdamWSteps<T> {
    /// One borrowed step of one tensor.
    step: BorrowedStep<T>,
    /// The owned optimizer over the tensors `dims` on the pool's threads, with the non-finite
    /// guard on or off.
    model: fn(dims: &[Vec<usize>], pool: &Pool, guard: bool) -> ModelStep<T>,
}

impl<T: Float> AdamWSteps<T> {
    const OF: Self = Self {
        step: adamw_step::<T>,
        model: adamw_model::<T>,
    };
}

fn adamw_step<T: Float>(pool: &Pool, p: &mut [T], g: &[T], buf: &mut [T], step: u64) -> u64 {
    let mut state = AdamWState::from_parts(buf, step);
    pool.adamw_step(&AdamWConfig::new(1e-4), p, g, &mut state)
        .expect("adamw step");
    state.step_count()
}

fn adamw_model<T: Float>(dims: &[Vec<usize>], pool: &Pool, guard: bool) -> ModelStep<T> {
    let mut opt = owned::<T, _>(AdamWConfig::new(1e-4), dims, pool, guard);
    Box::new(move |pairs| {
        opt.step(pairs).expect("adamw step");
    })
}

/// `dtype=bf16 momentum=q8`: where parameters and gradients, and the momentum, are stored.
fn storage<P: Storage>(momentum: Momentum) -> String
where
    P::Compute: Storage,
{
    let m = match momentum {
        Momentum::Bf16 => "bf16",
        Momentum::Int8 { .. } => "q8",
        _ => <P::Compute as Storage>::NAME,
    };
    format!("dtype={} momentum={m}", P::NAME)
}

/// Bytes a CAME step moves per element: `g` read twice, `m` read, written and read again, `p`
/// read and written (8-bit momentum: a byte and its share of a 4-byte scale per 256).
fn came_bytes<P: Element>(momentum: Momentum) -> f64 {
    let m = match momentum {
        Momentum::Bf16 => 2.0,
        Momentum::Int8 { block, .. } => 1.0 + 4.0 / f64::from(block),
        _ => size_of::<P::Compute>() as f64,
    };
    (4 * size_of::<P>()) as f64 + 3.0 * m
}

/// Bytes an AdamW step moves per element: `p`, `m` and `v` read and written, `g` read, and read
/// once more by the non-finite guard.
fn adamw_bytes<T>(guard: bool) -> usize {
    (7 + usize::from(guard)) * size_of::<T>()
}

/// Bytes the floor's sweeps move per element: `g` read three times, `m` read twice and written,
/// `p` read and written.
fn floor_bytes<P: Element>() -> usize {
    5 * size_of::<P>() + 3 * size_of::<P::Compute>()
}

struct Args {
    shape: Vec<usize>,
    model: Option<String>,
    threads: usize,
    steps: usize,
    came: bool,
    adamw: bool,
    floor: bool,
    dtype: Dtype,
    momentum: Momentum,
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
        dtype: Dtype::F32,
        momentum: Momentum::Full,
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
                "f32" => a.dtype = Dtype::F32,
                "f64" => a.dtype = Dtype::F64,
                "bf16" => a.dtype = Dtype::Bf16,
                "f16" => a.dtype = Dtype::F16,
                d => return Err(format!("--dtype: f32, f64, bf16 or f16, not {d}")),
            },
            "--momentum" => match value()?.as_str() {
                "f32" | "full" => a.momentum = Momentum::Full,
                "bf16" => a.momentum = Momentum::Bf16,
                "q8" => a.momentum = Momentum::INT8,
                m => return Err(format!("--momentum: f32, bf16 or q8, not {m}")),
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
    let wide = matches!(a.dtype, Dtype::F32 | Dtype::F64);
    if !wide && a.adamw && !a.came {
        return Err("--optimizer adamw: AdamW stores parameters in f32 or f64 only".into());
    }
    if a.momentum != Momentum::Full && a.cuda {
        return Err("--device cuda: f32 momentum only (packed momentum runs on the CPU)".into());
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

/// Deterministic data in [-1, 1): a cheap integer hash, no allocation beyond the buffer.
/// Rounded to the compute type, then (16-bit types) to nearest in `T`.
pub(crate) fn fill<T: Element>(v: &mut [T], seed: u64, scale: f64) {
    for (i, x) in v.iter_mut().enumerate() {
        let mut z = (i as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        *x = T::from_compute(Float::from_f64(scale * (2.0 * u - 1.0)));
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
/// `sum(g)`, `m = m / 2 + g`, `p = p - m / 1000`, over `p` and `g` stored in `P` and `m` in its
/// compute type, as the optimizer stores them. (The crate's step makes three: it takes the
/// update's norm, for which a direct step reads `g` a second time, from the first sweep.)
/// Compiled for the instruction sets `pulp` picks at run time, those of the crate's kernels
/// (AVX2 on x86-64; AVX-512 where the CPU has it in a build with the `avx512` feature, which
/// the crate's kernels use only for packed momentum), and run on the same threads: the calling
/// thread alone with one thread, like the optimizer.
fn floor_sweeps<P: Element>(
    pool: Option<&rayon::ThreadPool>,
    chunk: usize,
    p: &mut [P],
    g: &[P],
    m: &mut [P::Compute],
) -> f64 {
    let arch = pulp::Arch::new();
    let sweeps = |p: &mut [P], g: &[P], m: &mut [P::Compute]| {
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

/// Elements the floor's sweeps 3 and 4 take at a time.
const SPAN: usize = 256;

/// Requests the cache lines of `data[at..at + len]` 1 KiB further on, as the optimizers'
/// sweeps request theirs (`came`'s software prefetching, x86 only), so that the floor stays a
/// floor.
#[inline(always)]
fn ahead<T>(data: &[T], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let size = size_of::<T>();
        let first = at + 1024 / size;
        for k in (first..(first + len).min(data.len())).step_by(64 / size) {
            safe_arch::prefetch_t0(&data[k]);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, at, len);
}

/// Floor sweeps 1 and 2: read `g`.
struct Sum<'a, P>(&'a [P]);

impl<P: Element> pulp::WithSimd for Sum<'_, P> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        let mut acc = [P::Compute::default(); 16];
        let (chunks, tail) = self.0.as_chunks::<16>();
        for (i, c) in chunks.iter().enumerate() {
            ahead(self.0, 16 * i, 16);
            for k in 0..16 {
                acc[k] = acc[k] + c[k].to_compute();
            }
        }
        let tail = tail.iter().map(|x| x.to_compute().as_f64());
        acc.iter().map(|x| x.as_f64()).chain(tail).sum()
    }
}

/// Floor sweep 3: read `g` and `m`, write `m`.
struct Halve<'a, P: Element>(&'a mut [P::Compute], &'a [P]);

impl<P: Element> pulp::WithSimd for Halve<'_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let half = Float::from_f64(0.5);
        for at in (0..self.0.len()).step_by(SPAN) {
            ahead(&*self.0, at, SPAN);
            ahead(self.1, at, SPAN);
            let m = self.0[at..].iter_mut().take(SPAN);
            for (m, &g) in m.zip(&self.1[at..]) {
                *m = *m * half + g.to_compute();
            }
        }
    }
}

/// Floor sweep 4: read `m` and `p`, write `p`.
struct Step<'a, P: Element>(&'a mut [P], &'a [P::Compute]);

impl<P: Element> pulp::WithSimd for Step<'_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let small = Float::from_f64(1e-3);
        for at in (0..self.0.len()).step_by(SPAN) {
            ahead(&*self.0, at, SPAN);
            ahead(self.1, at, SPAN);
            let p = self.0[at..].iter_mut().take(SPAN);
            for (p, &m) in p.zip(&self.1[at..]) {
                *p = P::from_compute(p.to_compute() - m * small);
            }
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

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One case's line.
fn print_case(
    kind: &str,
    what: &str,
    storage: &str,
    bytes: f64,
    threads: usize,
    elems: usize,
    t: &Timing,
) {
    let melem_per_s = elems as f64 / t.median_ms / 1e3;
    println!(
        "{kind} {what} {storage} bytes_per_elem={bytes} threads={threads} median_ms={:.4} \
         min_ms={:.4} melem_per_s={melem_per_s:.1} gb_per_s={:.1}",
        t.median_ms,
        t.min_ms,
        melem_per_s * bytes / 1e3
    );
}

/// AdamW over `P` if it was asked for; says on stderr why not where it cannot run on `P`.
fn adamw_for<P: Storage>(a: &Args) -> Option<AdamWSteps<P>> {
    if a.adamw && P::ADAMW.is_none() {
        eprintln!(
            "adamw skipped: AdamW stores parameters, gradients and state in f32 or f64 only, \
             not {}",
            P::NAME
        );
    }
    P::ADAMW.filter(|_| a.adamw)
}

fn run_shape<P: Storage>(a: &Args, pool: &Pool)
where
    P::Compute: Storage,
{
    let storage = storage::<P>(a.momentum);
    let shape = Shape::new(&a.shape)
        .and_then(|s| s.with_momentum(a.momentum))
        .expect("shape");
    let n = shape.numel();
    let what = format!("shape={}", shape_name(&a.shape));
    let mut p = vec![P::default(); n];
    let mut g = vec![P::default(); n];
    fill(&mut p, 1, 1.0);
    fill(&mut g, 2, 1e-2);
    let chunk = n.div_ceil(pool.threads() * 4).max(4096);
    let fpool = floor_pool(pool.threads());
    let came_config = CameConfig::new(1e-4);
    let packed = a.momentum != Momentum::Full;
    let adamw = adamw_for::<P>(a).filter(|_| !packed);
    let mut came_buf = vec![P::Compute::default(); if a.came { shape.state_len() } else { 0 }];
    let mut adamw_buf = vec![P::default(); if adamw.is_some() { 2 * n } else { 0 }];
    // The floor streams the same arrays as a CAME step: the gradient, the momentum (the
    // first `numel` values of the CAME state, or a buffer of its own) and the parameters.
    let mut floor_m =
        vec![P::Compute::default(); if a.floor && (!a.came || packed) { n } else { 0 }];
    // the f32 AdamW baseline beside 16-bit or packed CAME: its own f32 data
    let baseline = a.adamw && (adamw.is_none() || packed);
    let mut base = vec![0.0f32; if baseline { 4 * n } else { 0 }];
    let buffer_bytes = size_of_val(p.as_slice())
        + size_of_val(g.as_slice())
        + size_of_val(came_buf.as_slice())
        + size_of_val(adamw_buf.as_slice())
        + size_of_val(floor_m.as_slice())
        + size_of_val(base.as_slice());
    let mut came_state = CameState::new(&mut came_buf);
    let mut adamw_steps = 0;
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
    let mut adamw_case = |adamw: &AdamWSteps<P>| {
        let mut guard = shared.borrow_mut();
        let (p, _) = &mut *guard;
        adamw_steps = (adamw.step)(pool, p, g, &mut adamw_buf, adamw_steps);
    };
    let mut adamw_case = || adamw.iter().for_each(&mut adamw_case);
    let mut base_steps = 0;
    if baseline {
        let (p32, rest) = base.split_at_mut(n);
        let (g32, _) = rest.split_at_mut(n);
        fill(p32, 1, 1.0);
        fill(g32, 2, 1e-2);
    }
    let mut adamw_f32 = || {
        let (p32, rest) = base.split_at_mut(n);
        let (g32, state) = rest.split_at_mut(n);
        base_steps = adamw_step::<f32>(pool, p32, g32, state, base_steps);
    };
    let mut names = Vec::new();
    let mut cases: Vec<&mut dyn FnMut()> = Vec::new();
    if a.floor {
        names.push(("floor", "floor_step", floor_bytes::<P>() as f64));
        cases.push(&mut floor);
    }
    if a.came {
        names.push(("came", "came_step", came_bytes::<P>(a.momentum)));
        cases.push(&mut came);
    }
    if adamw.is_some() {
        names.push(("adamw", "adamw_step", adamw_bytes::<P>(false) as f64));
        cases.push(&mut adamw_case);
    }
    if baseline {
        names.push(("adamw", "adamw_f32_step", adamw_bytes::<f32>(false) as f64));
        cases.push(&mut adamw_f32);
    }
    let timings = time_interleaved(a.steps, &mut cases);
    let mut results = Vec::new();
    for ((key, kind, bytes), t) in names.iter().zip(&timings) {
        let storage = if *kind == "adamw_f32_step" {
            "dtype=f32 momentum=f32"
        } else {
            &storage
        };
        print_case(kind, &what, storage, *bytes, pool.threads(), n, t);
        results.push((*key, t.median_ms));
    }
    print_ratios(&results);
    if let Some(rss) = peak_rss_mib() {
        let needed = mib(buffer_bytes);
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

/// The owned optimizer of `config` over the tensors `dims`, on the pool's threads, with the
/// non-finite guard on (the default) or off.
fn owned<P: Element, C: Steps<P, P>>(
    config: C,
    dims: &[Vec<usize>],
    pool: &Pool,
    guard: bool,
) -> CpuOptimizer<P, C> {
    let opt = CpuOptimizer::<P, C>::new(config).expect("config");
    registered(opt, dims, pool, guard)
}

/// `opt` with the tensors `dims` registered, on the pool's threads, the guard on or off.
fn registered<P: Element, C: Steps<P, P>>(
    mut opt: CpuOptimizer<P, C>,
    dims: &[Vec<usize>],
    pool: &Pool,
    guard: bool,
) -> CpuOptimizer<P, C> {
    for (i, d) in dims.iter().enumerate() {
        opt.register(&format!("t{i}"), d).expect("register");
    }
    opt.set_threads(pool.threads()).expect("threads");
    opt.set_nonfinite_guard(guard);
    opt
}

fn run_model<P: Storage>(a: &Args, pool: &Pool, name: &str)
where
    P::Compute: Storage,
{
    let storage = storage::<P>(a.momentum);
    let dims = gpt2_small();
    let shapes: Vec<Shape> = dims.iter().map(|d| Shape::new(d).expect("shape")).collect();
    let total: usize = shapes.iter().map(Shape::numel).sum();
    let what = format!("model={name}");
    let mut params: Vec<Vec<P>> = shapes
        .iter()
        .map(|s| vec![P::default(); s.numel()])
        .collect();
    let mut grads: Vec<Vec<P>> = params.clone();
    for (i, (p, g)) in params.iter_mut().zip(&mut grads).enumerate() {
        fill(p, 2 * i as u64 + 1, 0.02);
        fill(g, 2 * i as u64 + 2, 1e-3);
    }
    // the owned optimizers a trainer would use, with the non-finite guard on (the default)
    // and off, to measure what the guard costs
    let mut came_opts: Vec<Came<P>> = if a.came {
        let came = |guard| {
            let mut opt = Came::<P>::new(CameConfig::new(1e-4)).expect("config");
            opt.set_momentum(a.momentum).expect("momentum");
            registered(opt, &dims, pool, guard)
        };
        vec![came(true), came(false)]
    } else {
        vec![]
    };
    let mut adamw_opts = match adamw_for::<P>(a) {
        Some(adamw) => vec![
            (adamw.model)(&dims, pool, true),
            (adamw.model)(&dims, pool, false),
        ],
        None => vec![],
    };
    // the floor over the same number of elements, as one flat run of each array
    let floor_len = if a.floor { total } else { 0 };
    let (mut fp, mut fm) = (
        vec![P::default(); floor_len],
        vec![P::Compute::default(); floor_len],
    );
    let mut fg = vec![P::default(); floor_len];
    fill(&mut fg, 3, 1e-3);
    let chunk = total.div_ceil(pool.threads() * 4).max(4096);
    let fpool = floor_pool(pool.threads());
    let params = std::cell::RefCell::new(&mut params);
    let step = |opt: &mut dyn FnMut(&mut [Pair<'_, P>])| {
        let mut params = params.borrow_mut();
        let mut pairs: Vec<Pair<'_, P>> = params
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
        names.push(("floor", "floor_model", floor_bytes::<P>() as f64));
        cases.push(Box::new(&mut floor));
    }
    let labels = [
        ("came", "came_model", came_bytes::<P>(a.momentum)),
        (
            "came_unguarded",
            "came_model_unguarded",
            came_bytes::<P>(a.momentum),
        ),
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
        ("adamw", "adamw_model", adamw_bytes::<P>(true) as f64),
        (
            "adamw_unguarded",
            "adamw_model_unguarded",
            adamw_bytes::<P>(false) as f64,
        ),
    ];
    for (opt, label) in adamw_opts.iter_mut().zip(labels) {
        names.push(label);
        cases.push(Box::new(move || step(opt)));
    }
    let mut refs: Vec<&mut dyn FnMut()> = cases
        .iter_mut()
        .map(|c| &mut **c as &mut dyn FnMut())
        .collect();
    let timings = time_interleaved(a.steps, &mut refs);
    let mut results = Vec::new();
    for ((key, kind, bytes), t) in names.iter().zip(&timings) {
        println!(
            "{kind} {what} {storage} bytes_per_elem={bytes} threads={} tensors={} \
             params={total} median_ms={:.3} min_ms={:.3}",
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
                 [--steps K] [--optimizer came|adamw|both] [--dtype f32|f64|bf16|f16] \
                 [--momentum f32|bf16|q8] [--no-floor] [--device cpu|cuda]"
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
        match args.dtype {
            Dtype::F64 => gpu::run::<f64>(&dims, &what, args.steps, args.model.is_some()),
            Dtype::F32 => gpu::run::<f32>(&dims, &what, args.steps, args.model.is_some()),
            Dtype::Bf16 => gpu::run::<bf16>(&dims, &what, args.steps, args.model.is_some()),
            Dtype::F16 => gpu::run::<f16>(&dims, &what, args.steps, args.model.is_some()),
        }
        return;
    }
    let pool = Pool::new(args.threads).expect("thread pool");
    match args.dtype {
        Dtype::F32 => run::<f32>(&args, &pool),
        Dtype::F64 => run::<f64>(&args, &pool),
        Dtype::Bf16 => run::<bf16>(&args, &pool),
        Dtype::F16 => run::<f16>(&args, &pool),
    }
}

/// The model or the shape the arguments name, over parameters and gradients in `P`.
fn run<P: Storage>(a: &Args, pool: &Pool)
where
    P::Compute: Storage,
{
    match &a.model {
        Some(m) => run_model::<P>(a, pool, m),
        None => run_shape::<P>(a, pool),
    }
}
