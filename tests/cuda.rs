//! The GPU path. The tests that need a GPU (parity with the reference trajectories and with the
//! CPU kernels, determinism, the guard) or NVRTC are `#[ignore]`d with the reason, so a
//! machine without them reports them as ignored, never as passed; `scripts/gpu-check.sh` runs
//! them with `--include-ignored`, where they fail if the GPU or NVRTC is missing. The others
//! (detection, configs the GPU refuses) run everywhere.
#![cfg(feature = "cuda")]

mod support;

use std::path::Path;
use std::sync::Arc;

use came::cuda::{CudaCame, CudaError, compile_kernels};
use came::optim::TensorId;
use came::{Came, CameConfig, Error, Optimizer as _, OptimizerError};
use cudarc::driver::{CudaSlice, CudaStream};
use support::golden::{Case, Dtype, Optimizer, compare, json_files};
use support::reference::Rng;

/// A GPU optimizer; a test that asks for one fails without it.
fn gpu<T: came::cuda::CudaFloat>(config: CameConfig) -> CudaCame<T> {
    CudaCame::<T>::new(0, config).unwrap_or_else(|e| panic!("this test needs a GPU: {e}"))
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
}

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

#[test]
#[ignore = "needs libnvrtc (CUDA's lib64, or the nvidia-cuda-nvrtc-cu12 wheel) on LD_LIBRARY_PATH: .ci/run and scripts/gpu-check.sh run it"]
fn kernels_compile_with_nvrtc() {
    for arch in ["compute_70", "compute_80", "compute_90"] {
        if let Err(e) = compile_kernels(arch) {
            panic!("{arch}: {e}");
        }
    }
}

fn upload<T: came::cuda::CudaFloat>(s: &Arc<CudaStream>, v: &[T]) -> CudaSlice<T> {
    s.clone_htod(v).unwrap()
}

fn gpu_replay<T: came::cuda::CudaFloat>(
    case: &Case,
    config: CameConfig,
) -> Option<support::golden::Trajectory> {
    let mut opt = gpu::<T>(config);
    opt.register("0", &case.shape).unwrap();
    let s = opt.stream().clone();
    let p0: Vec<T> = case.param0.iter().map(|&x| T::from_f64(x)).collect();
    let mut p = upload(&s, &p0);
    let mut out = support::golden::Trajectory::default();
    for g in &case.grads {
        let g: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
        let g = upload(&s, &g);
        opt.step(&mut [(&mut p, &g)]).unwrap();
        out.params.push(
            s.clone_dtoh(&p)
                .unwrap()
                .iter()
                .map(|x| x.as_f64())
                .collect(),
        );
    }
    let cpu = opt.to_cpu().unwrap();
    for piece in cpu.state(TensorId(0)).unwrap() {
        out.state.insert(
            piece.name.into(),
            piece.values.iter().map(|x| x.as_f64()).collect(),
        );
    }
    Some(out)
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn every_reference_case_replays_on_the_gpu() {
    // the repository the binary was built in, or the current directory (a binary built
    // elsewhere and run from the repository root, as scripts/gpu-check.sh does)
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    let dir = if built.exists() {
        built
    } else {
        std::env::current_dir().unwrap().join("tests/data/golden")
    };
    let mut worst = Vec::new();
    for path in json_files(&dir) {
        let case = Case::load(&path).unwrap();
        let Optimizer::Came(config) = case.optimizer else {
            continue;
        };
        let got = match case.dtype {
            Dtype::F32 => gpu_replay::<f32>(&case, config),
            Dtype::F64 => gpu_replay::<f64>(&case, config),
            // the GPU kernels store f32 and f64 only
            Dtype::BF16 | Dtype::F16 => continue,
        };
        let Some(got) = got else { return };
        let v = compare(&case, &got);
        assert!(
            v.passed(),
            "{}: {:.3}x tolerance at {}",
            case.name,
            v.worst,
            v.at
        );
        worst.push((case.name, v.worst));
    }
    for (name, w) in worst {
        println!("{name:32} {w:.4}x tolerance");
    }
}

/// A GPU optimizer and a CPU one with the same tensors, the host parameters and their copies
/// on the device, and the random stream for the gradients.
struct Twins {
    gpu: CudaCame<f32>,
    cpu: Came<f32>,
    host: Vec<Vec<f32>>,
    dev: Vec<CudaSlice<f32>>,
    rng: Rng,
}

impl Twins {
    fn new(dims: &[&[usize]], config: CameConfig, seed: u64) -> Self {
        let mut gpu = gpu::<f32>(config);
        let mut cpu = Came::<f32>::new(config).unwrap();
        for (i, d) in dims.iter().enumerate() {
            gpu.register(&format!("t{i}"), d).unwrap();
            cpu.register(&format!("t{i}"), d).unwrap();
        }
        let mut rng = Rng(seed);
        let host: Vec<Vec<f32>> = dims
            .iter()
            .map(|d| f32s(rng.vec(d.iter().product(), 1.0)))
            .collect();
        let s = gpu.stream().clone();
        let dev = host.iter().map(|p| upload(&s, p)).collect();
        Self {
            gpu,
            cpu,
            host,
            dev,
            rng,
        }
    }

    /// A gradient per tensor, on the host and on the device.
    fn grads(&mut self) -> (Vec<Vec<f32>>, Vec<CudaSlice<f32>>) {
        let grads: Vec<Vec<f32>> = self
            .host
            .iter()
            .map(|p| f32s(self.rng.vec(p.len(), 0.1)))
            .collect();
        let s = self.gpu.stream().clone();
        let dev = grads.iter().map(|g| upload(&s, g)).collect();
        (grads, dev)
    }

    /// Every parameter of the GPU within the f32 tolerance of the CPU's.
    fn assert_close(&self, dims: &[&[usize]]) {
        let s = self.gpu.stream();
        for (i, (h, d)) in self.host.iter().zip(&self.dev).enumerate() {
            let d = s.clone_dtoh(d).unwrap();
            let worst = h
                .iter()
                .zip(&d)
                .map(|(&a, &b)| (a - b).abs() / (5e-6 + 5e-6 * a.abs()))
                .fold(0.0f32, f32::max);
            println!("{:?}: {worst:.4}x tolerance", dims[i]);
            assert!(worst <= 1.0, "{:?}: {worst}x tolerance", dims[i]);
        }
    }
}

fn f32s(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
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
    let mut t = Twins::new(&dims, config, 42);
    for _ in 0..4 {
        let (grads, dgrads) = t.grads();
        let mut pairs: Vec<(&mut CudaSlice<f32>, &CudaSlice<f32>)> =
            t.dev.iter_mut().zip(&dgrads).collect();
        t.gpu.step(&mut pairs).unwrap();
        let mut pairs = support::pairs(&mut t.host, &grads);
        t.cpu.step(&mut pairs).unwrap();
    }
    t.assert_close(&dims);
}

/// Tensors without a gradient on some steps: the GPU leaves them as the CPU does (parameters,
/// state, step counts), and the others match the CPU kernels.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn gpu_leaves_out_tensors_without_a_gradient_like_the_cpu() {
    let dims: [&[usize]; 3] = [&[300, 257], &[4097], &[2, 70, 33]];
    let config = CameConfig::new(1e-3).with_weight_decay(0.01);
    let mut t = Twins::new(&dims, config, 9);
    for step in 0..5 {
        let (grads, dgrads) = t.grads();
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
    t.assert_close(&dims);
    for i in 0..dims.len() {
        assert_eq!(t.gpu.step_count(TensorId(i)), t.cpu.step_count(TensorId(i)));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn gpu_steps_are_deterministic_and_the_guard_changes_nothing() {
    let run = || -> Option<(Vec<f32>, CudaCame<f32>, CudaSlice<f32>)> {
        let mut opt = gpu::<f32>(CameConfig::new(1e-3));
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
