//! The GPU path. The tests that need a GPU (parity with the reference trajectories and with the
//! CPU kernels, determinism, the guard) or NVRTC are `#[ignore]`d with the reason, so a
//! machine without them reports them as ignored, never as passed; `scripts/gpu-check.sh` runs
//! them with `--include-ignored`, where they fail if the GPU or NVRTC is missing. The others
//! (detection, configs the GPU refuses, the host side of the 16-bit types) run everywhere; the
//! kernels' 16-bit conversions themselves are checked on the host by a unit test of the crate
//! (`cuda::portable`), and the kernel names each type pair loads against `came.cu` by another
//! (`cuda::compile`).
#![cfg(feature = "cuda")]

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use came::cuda::{CudaCame, CudaElement, CudaError, compile_kernels};
use came::optim::TensorId;
use came::{
    Came, CameConfig, Element, Error, Float, Momentum, Optimizer as _, OptimizerError, Rounding,
};
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use support::golden::{Case, Dtype, Optimizer, compare, json_files};
use support::reference::Rng;

/// A GPU optimizer; a test that asks for one fails without it.
fn gpu<P: CudaElement, G: CudaElement<Compute = P::Compute>>(config: CameConfig) -> CudaCame<P, G> {
    CudaCame::<P, G>::new(0, config).unwrap_or_else(|e| panic!("this test needs a GPU: {e}"))
}

#[test]
fn without_cuda_new_reports_instead_of_panicking() {
    match CudaCame::<f32>::new(0, CameConfig::default()) {
        Ok(_) => println!("a GPU is present: detection not exercised"),
        Err(e) => {
            assert!(
                matches!(e, CudaError::NoCuda(_) | CudaError::NoDevice { .. }),
                "{e}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
    assert!(matches!(
        CudaCame::<f32>::new(0, CameConfig::new(-1.0)),
        Err(CudaError::Optimizer(OptimizerError::Config(_)))
    ));
    // the 16-bit types and the mixes report the same way
    let config = CameConfig::default().with_rounding(Rounding::Stochastic { seed: 1 });
    let detected = [
        CudaCame::<bf16>::new(0, config).err(),
        CudaCame::<f16>::new(0, config).err(),
        CudaCame::<f32, bf16>::new(0, config).err(),
        CudaCame::<bf16, f32>::new(0, config).err(),
    ];
    for e in detected.into_iter().flatten() {
        assert!(
            matches!(e, CudaError::NoCuda(_) | CudaError::NoDevice { .. }),
            "{e}"
        );
    }
    let refused = CudaCame::<bf16>::new(0, CameConfig::default().with_confidence(false));
    assert!(matches!(refused, Err(CudaError::Unsupported(_))));
}

/// 16-bit buffers go to the device as their bits, with no copy on the host, and come back to
/// the same values: NaN, infinities, subnormals and negative zero included.
#[test]
fn the_adafactor_baseline_is_refused_on_the_gpu() {
    // checked before any driver call, so this runs without a GPU too
    let err = CudaCame::<f32>::new(0, CameConfig::default().with_confidence(false));
    assert!(matches!(err, Err(CudaError::Unsupported(_))));
}

#[test]
fn corrected_instability_statistics_are_refused_on_the_gpu() {
    let config = CameConfig::default().with_instability(came::Instability::BiasCorrected);
    let err = CudaCame::<f32>::new(0, config);
    assert!(matches!(err, Err(CudaError::Unsupported(_))));
}

/// Every kernel `came.cu` instantiates: the statistics per compute type, the gradient sweeps
/// per gradient type, the parameter update per parameter type, the vector update per pair.
fn every_kernel() -> Vec<String> {
    let storage = ["f32", "f64", "bf16", "f16"];
    let mut names = Vec::new();
    for t in ["f32", "f64"] {
        for k in [
            "finish_sq",
            "finish_res",
            "factors_sq",
            "factors_res",
            "commit_sq",
            "finish_norm",
        ] {
            names.push(format!("came_{k}_{t}"));
        }
    }
    for g in storage {
        for k in ["tile_sq", "tile_res", "tile_norm", "vector_norm"] {
            names.push(format!("came_{k}_{g}"));
        }
        names.push(format!("came_tile_apply_{g}"));
    }
    names.push("came_vector_update_f64_f64".into());
    for p in ["f32", "bf16", "f16"] {
        for g in ["f32", "bf16", "f16"] {
            names.push(format!("came_vector_update_{p}_{g}"));
        }
    }
    names
}

#[test]
#[ignore = "needs libnvrtc (CUDA's lib64, or the nvidia-cuda-nvrtc-cu12 wheel) on LD_LIBRARY_PATH: .ci/run and scripts/gpu-check.sh run it"]
fn kernels_compile_with_nvrtc() {
    let names = every_kernel();
    assert_eq!(names.len(), 42);
    for arch in ["compute_70", "compute_80", "compute_90"] {
        let ptx = compile_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let src = ptx.to_src();
        for name in &names {
            assert!(
                src.contains(&format!(".entry {name}(")),
                "{arch}: no kernel {name} in the PTX"
            );
        }
        // no contraction into fused multiply-adds: the CPU's roundings (compile.rs)
        assert!(
            !src.contains("fma.rn.f32"),
            "{arch}: an f32 fused multiply-add"
        );
    }
}

fn upload<E: CudaElement>(s: &Arc<CudaStream>, v: &[E]) -> CudaSlice<E> {
    s.clone_htod(v).unwrap()
}

fn download<E: CudaElement>(s: &Arc<CudaStream>, d: &CudaSlice<E>) -> Vec<E> {
    s.clone_dtoh(d).unwrap()
}

/// `f64` values rounded to `E` (to its compute type, then to `E`), as the golden replay does.
fn to_t<E: Element>(v: &[f64]) -> Vec<E> {
    v.iter()
        .map(|&x| E::from_compute(<E::Compute as Float>::from_f64(x)))
        .collect()
}

fn as_f64<E: Element>(v: &[E]) -> Vec<f64> {
    v.iter().map(|x| x.to_compute().as_f64()).collect()
}

/// A case replayed on the GPU with parameters and gradients in `P`: the parameters after each
/// step and the final named state.
fn gpu_replay<P: CudaElement>(case: &Case, config: CameConfig) -> support::golden::Trajectory {
    let mut opt = gpu::<P, P>(config);
    opt.register("0", &case.shape).unwrap();
    let s = opt.stream().clone();
    let mut p = upload(&s, &to_t::<P>(&case.param0));
    let mut out = support::golden::Trajectory::default();
    for g in &case.grads {
        let g = upload(&s, &to_t::<P>(g));
        opt.step(&mut [(&mut p, &g)]).unwrap();
        out.params.push(as_f64(&download::<P>(&s, &p)));
    }
    let cpu = opt.to_cpu().unwrap();
    for piece in cpu.state(TensorId(0)).unwrap() {
        out.state.insert(piece.name.into(), as_f64(piece.values));
    }
    out
}

/// The reference files: the repository the binary was built in, or the current directory (a
/// binary built elsewhere and run from the repository root, as scripts/gpu-check.sh does).
fn golden_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    if built.exists() {
        built
    } else {
        std::env::current_dir().unwrap().join("tests/data/golden")
    }
}

/// Every reference trajectory of CAME on the GPU: `f32` and `f64` within FORMAT.md's
/// tolerances, and the 16-bit ones (`lowp/`, bf16 and f16 parameters and gradients, `f32`
/// state) within one 16-bit ulp of every parameter, as the CPU replays them (it replays them
/// bit for bit; the GPU's sums add in another order, so a parameter may round the other way).
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn every_reference_case_replays_on_the_gpu() {
    let dir = golden_dir();
    let mut files = json_files(&dir);
    files.extend(json_files(&dir.join("lowp")));
    let mut worst = Vec::new();
    let mut sixteen = 0;
    for path in files {
        let case = Case::load(&path).unwrap();
        let Optimizer::Came(config) = case.optimizer else {
            continue;
        };
        let got = match case.dtype {
            Dtype::F32 => gpu_replay::<f32>(&case, config),
            Dtype::F64 => gpu_replay::<f64>(&case, config),
            Dtype::BF16 => gpu_replay::<bf16>(&case, config),
            Dtype::F16 => gpu_replay::<f16>(&case, config),
        };
        let v = compare(&case, &got);
        assert!(
            v.passed(),
            "{}: {:.3}x tolerance at {}",
            case.name,
            v.worst,
            v.at
        );
        if matches!(case.dtype, Dtype::BF16 | Dtype::F16) {
            sixteen += 1;
            // how many parameters the GPU rounded otherwise than the CPU did
            let cpu = support::golden::replay(&case).unwrap();
            let differ = cpu
                .params
                .iter()
                .flatten()
                .zip(got.params.iter().flatten())
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            println!("{}: {differ} parameters differ from the CPU's", case.name);
        }
        worst.push((case.name, v.worst));
    }
    assert_eq!(sixteen, 8, "the 16-bit reference cases (lowp/)");
    for (name, w) in worst {
        println!("{name:32} {w:.4}x tolerance");
    }
}

/// A GPU optimizer and a CPU one with the same tensors and types, the host parameters and their
/// copies on the device.
struct Twins<P: CudaElement, G: CudaElement<Compute = P::Compute>> {
    gpu: CudaCame<P, G>,
    cpu: Came<P, G>,
    dims: Vec<Vec<usize>>,
    host: Vec<Vec<P>>,
    dev: Vec<CudaSlice<P>>,
}

impl<P: CudaElement, G: CudaElement<Compute = P::Compute>> Twins<P, G> {
    /// Random parameters in [-1, 1), rounded to `P`.
    fn new(dims: &[&[usize]], config: CameConfig, seed: u64) -> Self {
        let mut gpu = gpu::<P, G>(config);
        let mut cpu = Came::<P, G>::new(config).unwrap();
        for (i, d) in dims.iter().enumerate() {
            gpu.register(&format!("t{i}"), d).unwrap();
            cpu.register(&format!("t{i}"), d).unwrap();
        }
        let mut rng = Rng(seed);
        let host: Vec<Vec<P>> = dims
            .iter()
            .map(|d| to_t(&rng.vec(d.iter().product(), 1.0)))
            .collect();
        let s = gpu.stream().clone();
        let dev = host.iter().map(|p| upload(&s, p)).collect();
        Self {
            gpu,
            cpu,
            dims: dims.iter().map(|d| d.to_vec()).collect(),
            host,
            dev,
        }
    }

    /// One step of both with these gradients (one per tensor).
    fn step(&mut self, grads: &[Vec<G>]) {
        let s = self.gpu.stream().clone();
        let dgrads: Vec<_> = grads.iter().map(|g| upload(&s, g)).collect();
        let mut pairs: Vec<_> = self.dev.iter_mut().zip(&dgrads).collect();
        self.gpu.step(&mut pairs).unwrap();
        let mut pairs: Vec<(&mut [P], &[G])> = self
            .host
            .iter_mut()
            .zip(grads)
            .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
            .collect();
        self.cpu.step(&mut pairs).unwrap();
    }

    /// Random gradients in [-scale, scale), rounded to `G`.
    fn random_grads(&self, rng: &mut Rng, scale: f64) -> Vec<Vec<G>> {
        self.host
            .iter()
            .map(|p| to_t(&rng.vec(p.len(), scale)))
            .collect()
    }

    /// Gradients of one magnitude, 2^-4, with random signs: with the betas, epsilons and clip
    /// of [`exact_config`] every sum of a step is exact (dyadic terms of few bits), so that the
    /// order in which the GPU and the CPU add them cannot matter.
    fn sign_grads(&self, rng: &mut Rng) -> Vec<Vec<G>> {
        self.host
            .iter()
            .map(|p| {
                let signs: Vec<f64> = (0..p.len())
                    .map(|_| {
                        if rng.next_u64() & 1 == 0 {
                            0.0625
                        } else {
                            -0.0625
                        }
                    })
                    .collect();
                to_t(&signs)
            })
            .collect()
    }

    /// The GPU's parameters.
    fn device_params(&self) -> Vec<Vec<P>> {
        let s = self.gpu.stream();
        self.dev.iter().map(|d| download::<P>(s, d)).collect()
    }

    /// The GPU's parameters and state are the CPU's, bit for bit, and so are the step counts.
    fn assert_bit_identical(&self, what: &str) {
        for (i, (h, d)) in self.host.iter().zip(self.device_params()).enumerate() {
            let (h, d): (&[u8], &[u8]) = (bytemuck::cast_slice(h), bytemuck::cast_slice(&d));
            assert!(h == d, "{what}: parameters of {:?} differ", self.dims[i]);
        }
        let on_gpu = self.gpu.to_cpu().unwrap();
        for i in 0..self.dims.len() {
            let (a, b) = (
                on_gpu.state(TensorId(i)).unwrap(),
                self.cpu.state(TensorId(i)).unwrap(),
            );
            for (x, y) in a.iter().zip(&b) {
                let (xb, yb): (&[u8], &[u8]) = (
                    bytemuck::cast_slice(x.values),
                    bytemuck::cast_slice(y.values),
                );
                assert!(xb == yb, "{what}: {} of {:?} differs", x.name, self.dims[i]);
            }
            let id = TensorId(i);
            assert_eq!(self.gpu.step_count(id), self.cpu.step_count(id), "{what}");
        }
    }

    /// Every parameter of the GPU within `bound(cpu value)` of the CPU's; returns the fraction
    /// of parameters whose bits differ.
    fn assert_close(&self, what: &str, bound: impl Fn(f64) -> f64) -> f64 {
        let (mut differ, mut total) = (0usize, 0usize);
        for (i, (h, d)) in self.host.iter().zip(self.device_params()).enumerate() {
            let mut worst = 0.0f64;
            for (&a, &b) in h.iter().zip(&d) {
                let (a, b) = (a.to_compute().as_f64(), b.to_compute().as_f64());
                worst = worst.max((a - b).abs() / bound(a));
                differ += usize::from(a.to_bits() != b.to_bits());
            }
            total += h.len();
            println!("{what} {:?}: {worst:.4}x the bound", self.dims[i]);
            assert!(
                worst <= 1.0,
                "{what} {:?}: {worst}x the bound",
                self.dims[i]
            );
        }
        differ as f64 / total as f64
    }
}

/// The `f32` tolerance of the reference files.
fn f32_tolerance(x: f64) -> f64 {
    5e-6 + 5e-6 * x.abs()
}

/// One unit in the last place of `P` at `x` (the larger of the gaps on either side).
fn ulp<P: Element<Compute = f32>>(x: f64) -> f64 {
    let p = P::from_compute(x as f32);
    let bits: &[u16] = bytemuck::cast_slice(std::slice::from_ref(&p));
    let magnitude = bits[0] & 0x7FFF;
    let up: P = bytemuck::cast((bits[0] & 0x8000) | (magnitude + 1).min(0x7FFF));
    let down: P = bytemuck::cast((bits[0] & 0x8000) | magnitude.saturating_sub(1));
    let (v, u, d) = (
        p.to_compute().as_f64(),
        up.to_compute().as_f64(),
        down.to_compute().as_f64(),
    );
    (u - v).abs().max((v - d).abs())
}

/// Random large shapes, GPU against the CPU kernels: 1-D, 2-D, 4-D, odd sizes, several groups.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn gpu_matches_cpu_on_large_odd_shapes() {
    let dims: [&[usize]; 6] = [
        &[1_000_003],
        &[1999, 1501],
        &[64, 32, 3, 3],
        &[3, 700, 257],
        &[7],
        &[1, 5000],
    ];
    let config = CameConfig::new(1e-3)
        .with_weight_decay(0.01)
        .with_clip_threshold(0.5);
    let mut t = Twins::<f32, f32>::new(&dims, config, 42);
    let mut rng = Rng(43);
    for _ in 0..4 {
        let grads = t.random_grads(&mut rng, 0.1);
        t.step(&grads);
    }
    t.assert_close("f32", f32_tolerance);
}

/// Tensors without a gradient on some steps: the GPU leaves them as the CPU does (parameters,
/// state, step counts), and the others match the CPU kernels.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn gpu_leaves_out_tensors_without_a_gradient_like_the_cpu() {
    let dims: [&[usize]; 3] = [&[300, 257], &[4097], &[2, 70, 33]];
    let config = CameConfig::new(1e-3).with_weight_decay(0.01);
    let mut t = Twins::<f32, f32>::new(&dims, config, 9);
    let mut rng = Rng(10);
    for step in 0..5 {
        let grads = t.random_grads(&mut rng, 0.1);
        let s = t.gpu.stream().clone();
        let dgrads: Vec<_> = grads.iter().map(|g| upload(&s, g)).collect();
        // tensor `step % 3` has no gradient this step
        let left_out = step % 3;
        let mut pairs: Vec<(&mut CudaSlice<f32>, Option<&CudaSlice<f32>>)> = t
            .dev
            .iter_mut()
            .zip(&dgrads)
            .enumerate()
            .map(|(i, (p, g))| (p, (i != left_out).then_some(g)))
            .collect();
        t.gpu.step_some(&mut pairs).unwrap();
        let mut pairs: Vec<(&mut [f32], Option<&[f32]>)> = t
            .host
            .iter_mut()
            .zip(&grads)
            .enumerate()
            .map(|(i, (p, g))| (p.as_mut_slice(), (i != left_out).then_some(g.as_slice())))
            .collect();
        t.cpu.step_some(&mut pairs).unwrap();
    }
    t.assert_close("f32", f32_tolerance);
    for i in 0..dims.len() {
        assert_eq!(t.gpu.step_count(TensorId(i)), t.cpu.step_count(TensorId(i)));
    }
}

/// A config under which every sum of a step with [`Twins::sign_grads`] is exact: β2 = 0 makes
/// the squared-gradient statistics `g^2 = 2^-8` (so the factors are 1 and 16, and `u = ±1`),
/// β1 = β3 = 1/2 keep the momentum and the instability terms dyadic with a few bits, ε1 = 0 and
/// ε2 = 2^-10 add nothing inexact, and a clip threshold no update reaches makes the clip divisor
/// exactly 1 on both sides. What is left is element-wise or exactly summed: the GPU must give
/// the CPU's bits, in `f32` as in 16 bits, rounded to nearest or stochastically.
fn exact_config(rounding: Rounding) -> CameConfig {
    CameConfig::new(1e-2)
        .with_betas(0.5, 0.0, 0.5)
        .with_eps(0.0, 1.0 / 1024.0)
        .with_clip_threshold(1e30)
        .with_weight_decay(0.1)
        .with_rounding(rounding)
}

/// Matrices (several tiles, a batch, 3x3 kernels, one long row) and vectors; 16-bit and mixed
/// types; four steps, the state moved to the host and back after the second.
fn exact_run<P: CudaElement, G: CudaElement<Compute = P::Compute>>(rounding: Rounding) {
    let dims: [&[usize]; 6] = [
        &[130, 300],
        &[2, 70, 33],
        &[64, 3, 3],
        &[1, 5000],
        &[4097],
        &[7],
    ];
    let what = format!("{}/{} {rounding:?}", P::NAME, G::NAME);
    let mut t = Twins::<P, G>::new(&dims, exact_config(rounding), 5);
    let mut rng = Rng(6);
    for step in 0..4 {
        let grads = t.sign_grads(&mut rng);
        t.step(&grads);
        t.assert_bit_identical(&format!("{what}, step {step}"));
        if step == 1 {
            // to the host and back: the state of the new types moves both ways unchanged
            let snapshot = t.gpu.to_cpu().unwrap();
            t.gpu.load_from_cpu(&snapshot).unwrap();
        }
    }
}

/// 16-bit parameters and gradients, and the mixes with `f32`, against the CPU bit for bit,
/// where no sum depends on the order of its terms ([`exact_config`]): both roundings, weight
/// decay rounded as the reference rounds it, the stochastic bits of every element.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn sixteen_bit_steps_are_the_cpus_bit_for_bit() {
    for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 11 }] {
        exact_run::<bf16, bf16>(rounding);
        exact_run::<f16, f16>(rounding);
        exact_run::<f32, bf16>(rounding);
        exact_run::<f32, f16>(rounding);
        exact_run::<bf16, f32>(rounding);
        exact_run::<f16, bf16>(rounding);
        // the control: f32 gives the CPU's bits on these inputs too
        exact_run::<f32, f32>(rounding);
    }
}

/// Vectors step element by element (no factoring, no confidence term); with no clipping every
/// operation is element-wise, so any gradients give the CPU's bits: random ones here, several
/// tensors and groups (the stochastic key depends on the tensor's position and step count).
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn sixteen_bit_vectors_are_the_cpus_bit_for_bit_for_any_gradient() {
    fn run<P: CudaElement, G: CudaElement<Compute = P::Compute>>(rounding: Rounding) {
        let dims: [&[usize]; 3] = [&[300_007], &[7], &[4096]];
        let config = CameConfig::new(3e-3)
            .with_weight_decay(0.1)
            .with_clip_threshold(1e30)
            .with_rounding(rounding);
        let what = format!("vectors {}/{} {rounding:?}", P::NAME, G::NAME);
        let mut t = Twins::<P, G>::new(&dims, config, 21);
        let mut rng = Rng(22);
        for step in 0..5 {
            let grads = t.random_grads(&mut rng, 0.1);
            t.step(&grads);
            t.assert_bit_identical(&format!("{what}, step {step}"));
        }
    }
    for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 3 }] {
        run::<bf16, bf16>(rounding);
        run::<f16, f16>(rounding);
        run::<f32, bf16>(rounding);
        run::<f32, f16>(rounding);
        run::<bf16, f32>(rounding);
    }
}

/// Random data on large odd shapes: the GPU's sums add in another order than the CPU's, so a
/// 16-bit parameter may round to the neighbour of the CPU's; every one is within one 16-bit ulp
/// and very few differ at all. `f32` parameters with 16-bit gradients are within the `f32`
/// tolerance.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn sixteen_bit_steps_match_the_cpu_on_large_odd_shapes() {
    fn run<P: CudaElement, G: CudaElement<Compute = P::Compute>>(
        rounding: Rounding,
        bound: fn(f64) -> f64,
    ) {
        let dims: [&[usize]; 5] = [
            &[1999, 1501],
            &[64, 32, 3, 3],
            &[3, 700, 257],
            &[100_003],
            &[1, 5000],
        ];
        let config = CameConfig::new(1e-3)
            .with_weight_decay(0.01)
            .with_clip_threshold(0.5)
            .with_rounding(rounding);
        let what = format!("{}/{} {rounding:?}", P::NAME, G::NAME);
        let mut t = Twins::<P, G>::new(&dims, config, 31);
        let mut rng = Rng(32);
        for _ in 0..4 {
            let grads = t.random_grads(&mut rng, 0.1);
            t.step(&grads);
        }
        let differ = t.assert_close(&what, bound);
        println!(
            "{what}: {:.2e} of the parameters differ from the CPU's",
            differ
        );
        assert!(differ <= 1e-3, "{what}: {differ} of the parameters differ");
    }
    for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 5 }] {
        run::<bf16, bf16>(rounding, ulp::<bf16>);
        run::<f16, f16>(rounding, ulp::<f16>);
        run::<bf16, f32>(rounding, ulp::<bf16>);
    }
    run::<f32, bf16>(Rounding::Nearest, f32_tolerance);
    run::<f32, f16>(Rounding::Nearest, f32_tolerance);
}

/// An f16 parameter taken beyond 65504 holds an infinity and the step reports
/// `ParameterOverflow` with its index, as on the CPU (`lowp::f16_parameters_that_overflow_are_reported`):
/// the other tensors take their step, the failing one's step count does not advance.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn sixteen_bit_overflow_is_reported_as_on_the_cpu() {
    let config = CameConfig::new(2.0);
    let mut gpu = gpu::<f16, f16>(config);
    let mut cpu = Came::<f16>::new(config).unwrap();
    for o in [&mut gpu as &mut dyn Register, &mut cpu] {
        o.add("ok", &[3]);
        o.add("w", &[2, 2]);
        o.add("v", &[3]);
    }
    let p = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<f16>>();
    let mut host = [
        p(&[1.0, 2.0, 3.0]),
        p(&[1.0, 1.0, 65504.0, 65504.0]),
        p(&[1.0, -65504.0, 1.0]),
    ];
    let grads = [
        p(&[0.1, 0.2, 0.3]),
        p(&[1.0, 0.5, -1.0, -0.001]),
        p(&[0.5, 1.0, 0.25]),
    ];
    let s = gpu.stream().clone();
    let mut dev: Vec<_> = host.iter().map(|h| upload(&s, h)).collect();
    let dgrads: Vec<_> = grads.iter().map(|g| upload(&s, g)).collect();
    let mut pairs: Vec<_> = dev.iter_mut().zip(&dgrads).collect();
    let gpu_err = gpu.step(&mut pairs).unwrap_err();
    let mut pairs: Vec<(&mut [f16], &[f16])> = host
        .iter_mut()
        .zip(&grads)
        .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
        .collect();
    let cpu_err = cpu.step(&mut pairs).unwrap_err();
    assert!(
        matches!(
            &gpu_err,
            CudaError::Optimizer(OptimizerError::Tensor {
                index: 1,
                error: Error::ParameterOverflow { index: 2 },
                ..
            })
        ),
        "{gpu_err}"
    );
    assert_eq!(gpu_err.to_string(), cpu_err.to_string());
    // the overflowing parameter is infinite on both; the others agree to within an ulp (the
    // clip divisor comes from sums the two add in different orders)
    for (i, (h, d)) in host.iter().zip(&dev).enumerate() {
        let d = download::<f16>(&s, d);
        for (a, b) in h.iter().zip(&d) {
            let (a, b) = (f64::from(a.to_f32()), f64::from(b.to_f32()));
            if a.is_infinite() {
                assert_eq!(a.to_bits(), b.to_bits(), "tensor {i}");
            } else {
                assert!((a - b).abs() <= ulp::<f16>(a), "tensor {i}: {a} and {b}");
            }
        }
        assert_eq!(gpu.step_count(TensorId(i)), cpu.step_count(TensorId(i)));
    }
    assert!(download::<f16>(&s, &dev[1])[2].is_infinite());
    assert_eq!(gpu.step_count(TensorId(1)), Some(0));
    assert_eq!(gpu.step_count(TensorId(0)), Some(1));
}

/// Registration on either optimizer, for tests that set both up alike.
trait Register {
    fn add(&mut self, name: &str, dims: &[usize]);
}

impl<P: CudaElement, G: CudaElement<Compute = P::Compute>> Register for CudaCame<P, G> {
    fn add(&mut self, name: &str, dims: &[usize]) {
        self.register(name, dims).unwrap();
    }
}

impl<P: Element, G: Element<Compute = P::Compute>> Register for Came<P, G> {
    fn add(&mut self, name: &str, dims: &[usize]) {
        self.register(name, dims).unwrap();
    }
}

/// Packed momentum (bf16 or 8-bit) runs on the CPU only: asked for on the GPU, or brought
/// from a CPU optimizer, it is refused by name and nothing changes.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn packed_momentum_is_refused_on_the_gpu() {
    let mut opt = gpu::<bf16, bf16>(CameConfig::new(1e-3));
    assert!(opt.set_momentum(Momentum::Full).is_ok());
    for m in [Momentum::Bf16, Momentum::INT8] {
        let err = opt.set_momentum(m).unwrap_err();
        assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("Momentum::Int8"), "{err}");
    }
    opt.register("w", &[256, 512]).unwrap();
    let mut cpu = Came::<bf16>::new(CameConfig::new(1e-3)).unwrap();
    cpu.set_momentum(Momentum::INT8).unwrap();
    cpu.register("w", &[256, 512]).unwrap();
    let err = opt.load_from_cpu(&cpu).unwrap_err();
    assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn gpu_steps_are_deterministic_and_the_guard_changes_nothing() {
    let run = || -> Option<(Vec<f32>, CudaCame<f32>, CudaSlice<f32>)> {
        let mut opt = gpu::<f32, f32>(CameConfig::new(1e-3));
        opt.register("w", &[777, 1025]).unwrap();
        opt.register("b", &[1025]).unwrap();
        let s = opt.stream().clone();
        let mut rng = Rng(1);
        let mut w = upload(
            &s,
            &rng.vec(777 * 1025, 1.0)
                .into_iter()
                .map(|x| x as f32)
                .collect::<Vec<_>>(),
        );
        let mut b = upload(&s, &vec![0.0f32; 1025]);
        for _ in 0..3 {
            let gw = upload(
                &s,
                &rng.vec(777 * 1025, 0.1)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect::<Vec<_>>(),
            );
            let gb = upload(
                &s,
                &rng.vec(1025, 0.1)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect::<Vec<_>>(),
            );
            opt.step(&mut [(&mut w, &gw), (&mut b, &gb)]).unwrap();
        }
        Some((s.clone_dtoh(&w).unwrap(), opt, b))
    };
    let Some((first, mut opt, mut b)) = run() else {
        return;
    };
    let (second, _, _) = run().unwrap();
    assert!(
        first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "two runs differ"
    );

    let s = opt.stream().clone();
    let before = opt.to_cpu().unwrap();
    let mut w = upload(&s, &first);
    let mut gw = vec![0.1f32; 777 * 1025];
    gw[12345] = f32::NAN;
    let gw = upload(&s, &gw);
    let gb = upload(&s, &vec![0.1f32; 1025]);
    let err = opt.step(&mut [(&mut w, &gw), (&mut b, &gb)]).unwrap_err();
    assert!(
        matches!(
            &err,
            CudaError::Optimizer(OptimizerError::Tensor {
                index: 0,
                error: Error::NonFiniteGradient { index: 12345 },
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(s.clone_dtoh(&w).unwrap(), first, "parameters changed");
    let after = opt.to_cpu().unwrap();
    for i in 0..2 {
        assert_eq!(
            after.state(TensorId(i)),
            before.state(TensorId(i)),
            "state changed"
        );
    }
}
