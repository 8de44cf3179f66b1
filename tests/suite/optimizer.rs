//! The owned optimizer: groups, schedules, threads, the non-finite guard, its errors.
#![cfg(feature = "std")]

use crate::support;

use came::adamw::{self, AdamWConfig, AdamWState};
use came::optim::{GroupId, TensorId};
use came::{
    AdamW, Came, CameConfig, CameState, CpuOptimizer, Error, Optimizer, OptimizerError, Shape,
};
use support::reference::Rng;

const DIMS: [&[usize]; 4] = [&[40, 30], &[30], &[3, 8, 5], &[]];

fn data(rng: &mut Rng, scale: f64) -> Vec<Vec<f32>> {
    DIMS.iter()
        .map(|d| {
            let n: usize = d.iter().product();
            rng.vec(n, scale).into_iter().map(|x| x as f32).collect()
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Steps `opt` with a fresh set of gradients per step; returns the parameters.
fn train<C: came::optim::Steps<f32, f32>>(
    opt: &mut CpuOptimizer<f32, C>,
    steps: usize,
    lr: impl Fn(usize) -> f64,
) -> Vec<Vec<f32>> {
    let mut rng = Rng(3);
    let mut params = data(&mut rng, 1.0);
    for t in 0..steps {
        opt.set_learning_rate(lr(t)).unwrap();
        let grads = data(&mut rng, 0.1);
        let mut pairs = support::pairs(&mut params, &grads);
        opt.step(&mut pairs).unwrap();
    }
    params
}

fn came_opt(threads: usize) -> Came<f32> {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-3).with_weight_decay(0.1)).unwrap();
    let plain = opt
        .add_group(CameConfig::new(1e-3).with_betas(0.8, 0.99, 0.999))
        .unwrap();
    for (i, dims) in DIMS.iter().enumerate() {
        let group = if i % 2 == 0 { GroupId(0) } else { plain };
        opt.register_in(group, &format!("t{i}"), dims).unwrap();
    }
    opt.set_threads(threads).unwrap();
    opt
}

fn schedule(t: usize) -> f64 {
    1e-3 * (1.0 - t as f64 / 10.0)
}

/// The same training with the single-tensor API: each tensor with its group's config and the
/// scheduled learning rate.
#[test]
fn groups_and_schedules_match_single_tensor_steps() {
    let params = train(&mut came_opt(1), 5, schedule);

    let configs = [
        CameConfig::new(1e-3).with_weight_decay(0.1),
        CameConfig::new(1e-3).with_betas(0.8, 0.99, 0.999),
    ];
    let mut rng = Rng(3);
    let mut expected = data(&mut rng, 1.0);
    let shapes: Vec<Shape> = DIMS.iter().map(|d| Shape::new(d).unwrap()).collect();
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.state_len()]).collect();
    let mut states: Vec<CameState<'_, f32>> = bufs.iter_mut().map(|b| CameState::new(b)).collect();
    for t in 0..5 {
        let grads = data(&mut rng, 0.1);
        for (i, ((p, g), st)) in expected.iter_mut().zip(&grads).zip(&mut states).enumerate() {
            let config = configs[i % 2].with_lr(schedule(t));
            came::step(&config, &shapes[i], p, g, st).unwrap();
        }
    }
    for (a, b) in params.iter().zip(&expected) {
        assert_eq!(bits(a), bits(b));
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let one = train(&mut came_opt(1), 4, schedule);
    for threads in [2, 3, 8] {
        let many = train(&mut came_opt(threads), 4, schedule);
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(bits(a), bits(b), "{threads} threads");
        }
    }
}

#[test]
fn adamw_twin_matches_the_single_tensor_adamw() {
    let config = AdamWConfig::new(1e-2).with_weight_decay(0.05);
    let mut opt = AdamW::<f32>::new(config).unwrap();
    for (i, dims) in DIMS.iter().enumerate() {
        opt.register(&format!("t{i}"), dims).unwrap();
    }
    opt.set_threads(2).unwrap();
    let params = train(&mut opt, 4, |_| 1e-2);

    let mut rng = Rng(3);
    let mut expected = data(&mut rng, 1.0);
    let mut bufs: Vec<Vec<f32>> = expected.iter().map(|p| vec![0.0; 2 * p.len()]).collect();
    let mut states: Vec<AdamWState<'_, f32>> =
        bufs.iter_mut().map(|b| AdamWState::new(b)).collect();
    for _ in 0..4 {
        let grads = data(&mut rng, 0.1);
        for ((p, g), st) in expected.iter_mut().zip(&grads).zip(&mut states) {
            adamw::step(&config, p, g, st).unwrap();
        }
    }
    for (a, b) in params.iter().zip(&expected) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(opt.state_bytes(), 2 * 4 * (1200 + 30 + 120 + 1));
}

#[test]
fn state_bytes_counts_every_tensor() {
    let opt = came_opt(1);
    let expected: usize = DIMS
        .iter()
        .map(|d| Shape::new(d).unwrap().state_len() * 4)
        .sum();
    assert_eq!(opt.state_bytes(), expected);
    // far below AdamW's two full moments for the matrix
    assert!(came::state_len(&[40, 30]) < 2 * 1200);
}

/// A snapshot of everything the optimizer holds that a step could change.
fn snapshot<C: came::optim::Steps<f32, f32>>(opt: &CpuOptimizer<f32, C>) -> Vec<(u64, Vec<u32>)> {
    (0..opt.len())
        .map(|i| {
            let id = TensorId(i);
            let state: Vec<u32> = opt
                .state(id)
                .unwrap()
                .iter()
                .flat_map(|p| bits(p.values))
                .collect();
            (opt.tensor(id).unwrap().step, state)
        })
        .collect()
}

fn guard_case<C: came::optim::Steps<f32, f32>>(mut opt: CpuOptimizer<f32, C>) {
    let mut rng = Rng(8);
    let mut params = data(&mut rng, 1.0);
    // one good step first, so the state is not all zeros
    let grads = data(&mut rng, 0.1);
    let mut pairs = support::pairs(&mut params, &grads);
    opt.step(&mut pairs).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for tensor in [0, 1, DIMS.len() - 1] {
            let mut grads = data(&mut rng, 0.1);
            let index = grads[tensor].len() / 2;
            grads[tensor][index] = bad;
            let before = (snapshot(&opt), params.clone());
            let mut pairs = support::pairs(&mut params, &grads);
            let err = opt.step(&mut pairs).unwrap_err();
            assert_eq!(
                err,
                OptimizerError::Tensor {
                    index: tensor,
                    name: format!("t{tensor}"),
                    error: Error::NonFiniteGradient { index },
                },
                "{bad} in tensor {tensor}"
            );
            assert_eq!(
                snapshot(&opt),
                before.0,
                "{bad} in tensor {tensor}: state changed"
            );
            for (a, b) in params.iter().zip(&before.1) {
                assert_eq!(
                    bits(a),
                    bits(b),
                    "{bad} in tensor {tensor}: parameters changed"
                );
            }
        }
    }
}

#[test]
fn guard_skips_the_whole_came_step_on_nan_and_inf_anywhere() {
    guard_case(came_opt(1));
    guard_case(came_opt(3));
}

#[test]
fn guard_skips_the_whole_adamw_step_on_nan_and_inf_anywhere() {
    let mut opt = AdamW::<f32>::new(AdamWConfig::new(1e-3)).unwrap();
    for (i, dims) in DIMS.iter().enumerate() {
        opt.register(&format!("t{i}"), dims).unwrap();
    }
    guard_case(opt);
}

#[test]
fn without_the_guard_the_other_tensors_step() {
    let mut opt = came_opt(2);
    opt.set_nonfinite_guard(false);
    let mut rng = Rng(8);
    let mut params = data(&mut rng, 1.0);
    let mut grads = data(&mut rng, 0.1);
    grads[2][7] = f32::NAN;
    let before = params.clone();
    let mut pairs = support::pairs(&mut params, &grads);
    let err = opt.step(&mut pairs).unwrap_err();
    assert!(
        matches!(err, OptimizerError::Tensor { index: 2, .. }),
        "{err}"
    );
    for (i, (a, b)) in params.iter().zip(&before).enumerate() {
        assert_eq!(a == b, i == 2, "tensor {i}");
    }
    assert_eq!(opt.tensor(TensorId(2)).unwrap().step, 0);
    assert_eq!(opt.tensor(TensorId(0)).unwrap().step, 1);
}

#[test]
fn huge_gradients_are_refused_with_everything_untouched() {
    // 1e20^2 overflows f32: the reference turns the state into NaN
    let mut opt = came_opt(1);
    let mut rng = Rng(8);
    let mut params = data(&mut rng, 1.0);
    let mut grads = data(&mut rng, 0.1);
    grads[0][3] = 1e20;
    let before = (snapshot(&opt), params.clone());
    let mut pairs = support::pairs(&mut params, &grads);
    let err = opt.step(&mut pairs).unwrap_err();
    assert!(
        matches!(
            err,
            OptimizerError::Tensor {
                index: 0,
                error: Error::NonFiniteUpdate,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(snapshot(&opt), before.0);
    assert_eq!(params, before.1);
}

#[test]
fn bad_calls_are_refused_and_change_nothing() {
    let mut opt = came_opt(1);
    let before = snapshot(&opt);
    let mut w = vec![0.0f32; 1200];
    let g = vec![0.0f32; 1200];
    let err = opt.step(&mut [(&mut w, &g)]).unwrap_err();
    assert_eq!(
        err,
        OptimizerError::TensorCount {
            expected: 4,
            actual: 1
        }
    );

    let mut rng = Rng(1);
    let mut params = data(&mut rng, 1.0);
    let mut grads = data(&mut rng, 0.1);
    grads[1].pop();
    let mut pairs = support::pairs(&mut params, &grads);
    let err = opt.step(&mut pairs).unwrap_err();
    assert!(matches!(
        err,
        OptimizerError::Tensor {
            index: 1,
            error: Error::LengthMismatch { .. },
            ..
        }
    ));
    assert_eq!(snapshot(&opt), before);

    assert_eq!(
        opt.register("t0", &[2]),
        Err(OptimizerError::DuplicateName("t0".into()))
    );
    assert_eq!(
        opt.register_in(GroupId(9), "x", &[2]),
        Err(OptimizerError::UnknownGroup(9))
    );
    assert!(matches!(
        opt.register("huge", &[usize::MAX, 2]),
        Err(OptimizerError::Shape {
            error: Error::ShapeOverflow,
            ..
        })
    ));
    assert!(matches!(
        opt.set_learning_rate(-1.0),
        Err(OptimizerError::Config(Error::InvalidLearningRate(_)))
    ));
    assert_eq!(opt.groups()[0].lr, 1e-3);
    assert!(matches!(
        opt.add_group(CameConfig::default().with_betas(0.0, 0.9, 0.9)),
        Err(OptimizerError::Config(Error::ZeroBeta1))
    ));
    assert!(Came::<f32>::new(CameConfig::new(f64::NAN)).is_err());
    // errors carry messages and sources
    let e = OptimizerError::Tensor {
        index: 0,
        name: "w".into(),
        error: Error::ZeroBeta1,
    };
    assert!(e.to_string().contains("\"w\""));
    assert!(std::error::Error::source(&e).is_some());
}

/// Within the f32 tolerance of the reference files (FORMAT.md).
fn close(a: f32, reference: f64) -> bool {
    (f64::from(a) - reference).abs() <= 5e-6 + 5e-6 * reference.abs()
}

/// came-pytorch 0.1.3 with `p.grad = None` for the second tensor at step 2: two 4 x 4 tensors
/// of ones, lr 1e-2, weight decay 0.1, gradients 0.3, 0.3 (first only), -0.2 everywhere.
#[test]
fn tensors_without_a_gradient_are_left_out_as_pytorch_leaves_them() {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-2).with_weight_decay(0.1)).unwrap();
    opt.register("a", &[4, 4]).unwrap();
    opt.register("b", &[4, 4]).unwrap();
    let (mut a, mut b) = (vec![1.0f32; 16], vec![1.0f32; 16]);
    let g = |x: f32| vec![x; 16];
    opt.step_some(&mut [(&mut a, Some(&g(0.3))), (&mut b, Some(&g(0.3)))])
        .unwrap();
    assert!(close(a[0], 0.887_888_908_386_230_5) && close(b[0], 0.887_888_908_386_230_5));
    let b_state: Vec<Vec<u32>> = opt
        .state(TensorId(1))
        .unwrap()
        .iter()
        .map(|p| bits(p.values))
        .collect();
    let b_before = bits(&b);
    let report = opt
        .step_some(&mut [(&mut a, Some(&g(0.3))), (&mut b, None)])
        .unwrap();
    assert_eq!(report.stepped, 1);
    assert!(close(a[0], 0.730_079_054_832_458_5), "{}", a[0]);
    // the tensor without a gradient: parameters, state and step count as they were
    assert_eq!(bits(&b), b_before);
    let b_after: Vec<Vec<u32>> = opt
        .state(TensorId(1))
        .unwrap()
        .iter()
        .map(|p| bits(p.values))
        .collect();
    assert_eq!(b_after, b_state);
    assert_eq!(opt.tensor(TensorId(0)).unwrap().step, 2);
    assert_eq!(opt.tensor(TensorId(1)).unwrap().step, 1);
    // a checkpoint keeps each tensor's own step count, and the run goes on from it
    let path = std::env::temp_dir().join(format!("came-subset-{}.safetensors", std::process::id()));
    opt.save(&path).unwrap();
    let mut resumed = Came::<f32>::new(CameConfig::new(1e-2).with_weight_decay(0.1)).unwrap();
    resumed.register("a", &[4, 4]).unwrap();
    resumed.register("b", &[4, 4]).unwrap();
    resumed.load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(resumed.tensor(TensorId(1)).unwrap().step, 1);
    let (mut a2, mut b2) = (a.clone(), b.clone());
    opt.step(&mut [(&mut a, &g(-0.2)), (&mut b, &g(-0.2))])
        .unwrap();
    resumed
        .step(&mut [(&mut a2, &g(-0.2)), (&mut b2, &g(-0.2))])
        .unwrap();
    assert!(close(a[0], 0.685_425_579_547_882_1), "{}", a[0]);
    assert!(close(b[0], 0.894_475_340_843_200_7), "{}", b[0]);
    assert_eq!((bits(&a), bits(&b)), (bits(&a2), bits(&b2)));
    assert_eq!(opt.tensor(TensorId(1)).unwrap().step, 2);
}

/// AdamW's bias correction follows each tensor's own step count: a tensor left out of some
/// steps moves exactly as if it had been alone in an optimizer that skipped those steps.
#[test]
fn adamw_bias_correction_follows_each_tensor_s_own_steps() {
    let config = AdamWConfig::new(1e-2);
    let mut both = AdamW::<f32>::new(config).unwrap();
    both.register("a", &[3, 5]).unwrap();
    both.register("b", &[7]).unwrap();
    let mut alone = AdamW::<f32>::new(config).unwrap();
    alone.register("b", &[7]).unwrap();
    let mut rng = Rng(11);
    let (mut a, mut b) = (vec![0.5f32; 15], vec![-0.25f32; 7]);
    let mut b_alone = b.clone();
    for t in 0..6 {
        let ga: Vec<f32> = rng.vec(15, 0.1).into_iter().map(|x| x as f32).collect();
        let gb: Vec<f32> = rng.vec(7, 0.1).into_iter().map(|x| x as f32).collect();
        let with_b = t % 3 != 1;
        let gb_some = with_b.then_some(gb.as_slice());
        both.step_some(&mut [(&mut a, Some(&ga)), (&mut b, gb_some)])
            .unwrap();
        if with_b {
            alone.step(&mut [(&mut b_alone, &gb)]).unwrap();
        }
    }
    assert_eq!(bits(&b), bits(&b_alone));
    assert_eq!(both.tensor(TensorId(0)).unwrap().step, 6);
    assert_eq!(both.tensor(TensorId(1)).unwrap().step, 4);
}

/// The guard covers the tensors that are stepped: a NaN in one of them leaves every tensor as
/// it was; lengths are checked for every parameter, and for the gradients that are given.
#[test]
fn a_step_of_some_tensors_is_all_or_nothing_over_them() {
    let mut opt = came_opt(2);
    let mut rng = Rng(5);
    let mut params = data(&mut rng, 1.0);
    let mut grads = data(&mut rng, 0.1);
    grads[2][7] = f32::NAN;
    let before = snapshot(&opt);
    let params_before: Vec<Vec<u32>> = params.iter().map(|p| bits(p)).collect();
    let [p0, p1, p2, p3] = &mut params[..] else {
        unreachable!()
    };
    let err = opt
        .step_some(&mut [
            (p0, Some(&grads[0])),
            (p1, None),
            (p2, Some(&grads[2])),
            (p3, None),
        ])
        .unwrap_err();
    assert!(matches!(
        err,
        OptimizerError::Tensor {
            index: 2,
            error: Error::NonFiniteGradient { index: 7 },
            ..
        }
    ));
    assert_eq!(snapshot(&opt), before);
    let after: Vec<Vec<u32>> = params.iter().map(|p| bits(p)).collect();
    assert_eq!(after, params_before);
    // a short parameter is refused even without a gradient
    let mut short = vec![0.0f32; 29];
    let [p0, _, p2, p3] = &mut params[..] else {
        unreachable!()
    };
    let err = opt
        .step_some(&mut [
            (p0, Some(&grads[0])),
            (&mut short, None),
            (p2, None),
            (p3, None),
        ])
        .unwrap_err();
    assert!(
        matches!(err, OptimizerError::Tensor { index: 1, .. }),
        "{err}"
    );
}

/// The trait is usable as a trait object: CAME and its Adafactor baseline behind one `dyn`.
#[test]
fn optimizers_of_one_config_type_share_a_trait_object() {
    type Dyn = dyn Optimizer<
            Config = CameConfig,
            Param = [f32],
            Grad = [f32],
            Error = OptimizerError,
            CheckpointError = came::CheckpointError,
        >;
    let mut opts: Vec<Box<Dyn>> = vec![
        Box::new(Came::<f32>::new(CameConfig::new(1e-2)).unwrap()),
        Box::new(Came::<f32>::new(CameConfig::new(1e-2).with_confidence(false)).unwrap()),
    ];
    let mut moved = Vec::new();
    for opt in &mut opts {
        opt.register("w", &[4, 3]).unwrap();
        let mut w = vec![0.5f32; 12];
        let g: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.5).collect();
        let report = opt.step(&mut [(&mut w, &g)]).unwrap();
        assert_eq!(report.stepped, 1);
        moved.push(w);
    }
    // both move every element against its gradient, by different amounts: the confidence
    // term scales CAME's step from the first step on
    for w in &moved {
        for (i, &x) in w.iter().enumerate() {
            let g = 0.1 * i as f32 - 0.5;
            assert!(g == 0.0 || (x - 0.5) * g < 0.0, "element {i}: {x}");
        }
    }
    assert_ne!(bits(&moved[0]), bits(&moved[1]));
}

/// A schedule over groups of different learning rates: each group's base lr times a factor,
/// as PyTorch's schedulers scale each group's `initial_lr`; the base survives a checkpoint.
#[test]
fn schedules_scale_each_group_s_base_learning_rate() {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    let fast = opt.add_group(CameConfig::new(1e-2)).unwrap();
    opt.register("w", &[4, 3]).unwrap();
    opt.register_in(fast, "b", &[3]).unwrap();
    let lrs = |o: &Came<f32>| o.groups().iter().map(|g| g.lr).collect::<Vec<_>>();
    opt.scale_learning_rate(0.5).unwrap();
    assert_eq!(lrs(&opt), [5e-4, 5e-3]);
    opt.scale_learning_rate(0.25).unwrap();
    assert_eq!(lrs(&opt), [2.5e-4, 2.5e-3]);
    // a bad factor changes nothing
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = opt.scale_learning_rate(bad).unwrap_err();
        assert!(matches!(err, OptimizerError::LrScale(x) if x.to_bits() == bad.to_bits()));
    }
    assert_eq!(lrs(&opt), [2.5e-4, 2.5e-3]);
    // setting a group's lr sets its base
    opt.set_group_lr(fast, 2e-2).unwrap();
    opt.scale_learning_rate(0.5).unwrap();
    assert_eq!(lrs(&opt), [5e-4, 1e-2]);
    // the base lrs survive a checkpoint: the schedule goes on after a resume
    let bytes = opt.to_safetensors(None).unwrap();
    let mut resumed = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    resumed.add_group(CameConfig::new(1e-3)).unwrap();
    resumed.register("w", &[4, 3]).unwrap();
    resumed.register_in(fast, "b", &[3]).unwrap();
    resumed.load_safetensors(&bytes, None).unwrap();
    assert_eq!(lrs(&resumed), [5e-4, 1e-2]);
    resumed.scale_learning_rate(0.1).unwrap();
    assert_eq!(lrs(&resumed), [1e-4, 2e-3]);
    assert_eq!(resumed.step_count(TensorId(1)), Some(0));
    assert_eq!(resumed.step_count(TensorId(2)), None);
}

#[test]
fn too_many_threads_are_refused_and_the_optimizer_keeps_its_own() {
    let mut opt = came_opt(2);
    let err = opt.set_threads(100_000).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(opt.threads(), 2);
    let mut p = data(&mut Rng(1), 1.0);
    let g = data(&mut Rng(2), 0.1);
    opt.step(&mut support::pairs(&mut p, &g)).unwrap();
}
