//! The owned optimizer: groups, schedules, threads, the non-finite guard, its errors.
#![cfg(feature = "std")]

mod support;

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
fn train<C: came::optim::Rule>(
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
fn snapshot<C: came::optim::Rule>(opt: &CpuOptimizer<f32, C>) -> Vec<(u64, Vec<u32>)> {
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

fn guard_case<C: came::optim::Rule>(mut opt: CpuOptimizer<f32, C>) {
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
