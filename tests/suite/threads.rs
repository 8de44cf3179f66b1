//! Parallel steps give bit-identical results for any thread count, and the same bits as the
//! serial step: lanes are cut by the shape alone and combined in lane order.
#![cfg(feature = "std")]

use crate::support;

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Pool, Shape, TensorStep};
use support::reference::Rng;

/// Shapes whose rows (or matrices, or elements) do not divide evenly into lanes or threads.
const SHAPES: [&[usize]; 9] = [
    &[1000, 77],
    &[64, 4096],
    &[300, 100, 3, 3],
    &[5001, 70],
    &[301, 3001],
    &[37, 100, 101],
    &[3, 257, 129],
    &[300_003],
    &[7, 5],
];

fn run_came(pool: Option<&Pool>, dims: &[usize], config: &CameConfig) -> (Vec<f32>, Vec<f32>) {
    let shape = Shape::new(dims).unwrap();
    let n = shape.numel();
    let mut rng = Rng(n as u64);
    let mut p: Vec<f32> = rng.vec(n, 1.0).into_iter().map(|x| x as f32).collect();
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    for _ in 0..3 {
        let g: Vec<f32> = rng.vec(n, 0.1).into_iter().map(|x| x as f32).collect();
        match pool {
            Some(pool) => pool.step(config, &shape, &mut p, &g, &mut state).unwrap(),
            None => came::step(config, &shape, &mut p, &g, &mut state).unwrap(),
        };
    }
    (p, buf)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn came_is_bit_identical_for_1_2_3_8_threads() {
    let pools: Vec<Pool> = [1, 2, 3, 8].map(|t| Pool::new(t).unwrap()).into();
    let configs = [
        CameConfig::new(1e-3),
        CameConfig::new(1e-3)
            .with_clip_threshold(0.01)
            .with_weight_decay(0.1),
    ];
    for dims in SHAPES {
        assert!(dims.len() < 2 || Shape::new(dims).unwrap().lanes() > 1 || dims == [7, 5]);
        for config in &configs {
            let (p0, s0) = run_came(None, dims, config);
            for pool in &pools {
                let (p, s) = run_came(Some(pool), dims, config);
                assert_eq!(
                    bits(&p),
                    bits(&p0),
                    "{dims:?} on {} threads",
                    pool.threads()
                );
                assert_eq!(
                    bits(&s),
                    bits(&s0),
                    "{dims:?} state on {} threads",
                    pool.threads()
                );
            }
        }
    }
}

#[test]
fn many_tensors_are_bit_identical_for_any_thread_count() {
    let dims: Vec<Vec<usize>> = vec![vec![3000, 64], vec![64], vec![511, 300], vec![4, 4], vec![]];
    let shapes: Vec<Shape> = dims.iter().map(|d| Shape::new(d).unwrap()).collect();
    let config = CameConfig::new(1e-3).with_weight_decay(0.01);
    let run = |pool: Option<&Pool>| {
        let mut rng = Rng(99);
        let mut params: Vec<Vec<f64>> = shapes.iter().map(|s| rng.vec(s.numel(), 1.0)).collect();
        let mut bufs: Vec<Vec<f64>> = shapes.iter().map(|s| vec![0.0; s.state_len()]).collect();
        let mut states: Vec<CameState<'_, f64>> =
            bufs.iter_mut().map(|b| CameState::new(b)).collect();
        for _ in 0..3 {
            let grads: Vec<Vec<f64>> = shapes.iter().map(|s| rng.vec(s.numel(), 0.1)).collect();
            let mut tensors: Vec<TensorStep<'_, '_, f64>> = shapes
                .iter()
                .zip(params.iter_mut())
                .zip(&grads)
                .zip(states.iter_mut())
                .map(|(((s, p), g), st)| TensorStep {
                    shape: *s,
                    param: p,
                    grad: g,
                    state: st,
                })
                .collect();
            match pool {
                Some(pool) => pool.step_all(&config, &mut tensors).unwrap(),
                None => came::step_all(&config, &mut tensors).unwrap(),
            }
        }
        drop(states);
        (params, bufs)
    };
    let serial = run(None);
    for t in [1, 2, 3, 8] {
        let pool = Pool::new(t).unwrap();
        assert_eq!(run(Some(&pool)), serial, "{t} threads");
    }
}

#[test]
fn adamw_is_bit_identical_for_any_thread_count() {
    let n = 300_007;
    let run = |pool: Option<&Pool>| {
        let mut rng = Rng(5);
        let mut p: Vec<f32> = rng.vec(n, 1.0).into_iter().map(|x| x as f32).collect();
        let mut buf = vec![0.0f32; adamw::state_len(&[n])];
        let mut state = AdamWState::new(&mut buf);
        let config = AdamWConfig::new(1e-3);
        for _ in 0..3 {
            let g: Vec<f32> = rng.vec(n, 0.1).into_iter().map(|x| x as f32).collect();
            match pool {
                Some(pool) => pool.adamw_step(&config, &mut p, &g, &mut state).unwrap(),
                None => adamw::step(&config, &mut p, &g, &mut state).unwrap(),
            };
        }
        (bits(&p), bits(&buf))
    };
    let serial = run(None);
    for t in [2, 3, 8] {
        assert_eq!(run(Some(&Pool::new(t).unwrap())), serial, "{t} threads");
    }
}

#[test]
fn adamw_step_all_is_bit_identical_on_two_threads() {
    let dims: [&[usize]; 5] = [&[3000, 64], &[64], &[511, 300], &[4, 4], &[]];
    let config = AdamWConfig::new(1e-3).with_weight_decay(0.01);
    let run = |pool: Option<&Pool>| {
        let mut rng = Rng(17);
        let mut params: Vec<Vec<f32>> = dims
            .iter()
            .map(|d| {
                let n = d.iter().product();
                rng.vec(n, 1.0).into_iter().map(|x| x as f32).collect()
            })
            .collect();
        let mut bufs: Vec<Vec<f32>> = dims
            .iter()
            .map(|d| vec![0.0; adamw::state_len(d)])
            .collect();
        let mut states: Vec<AdamWState<'_, f32>> =
            bufs.iter_mut().map(|b| AdamWState::new(b)).collect();
        for _ in 0..3 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| {
                    rng.vec(p.len(), 0.1)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect()
                })
                .collect();
            let mut tensors: Vec<adamw::TensorStep<'_, '_, f32>> = params
                .iter_mut()
                .zip(&grads)
                .zip(states.iter_mut())
                .map(|((param, grad), state)| adamw::TensorStep { param, grad, state })
                .collect();
            match pool {
                Some(pool) => pool.adamw_step_all(&config, &mut tensors).unwrap(),
                None => adamw::step_all(&config, &mut tensors).unwrap(),
            }
        }
        assert!(states.iter().all(|s| s.step_count() == 3));
        drop(states);
        let params: Vec<Vec<u32>> = params.iter().map(|p| bits(p)).collect();
        let bufs: Vec<Vec<u32>> = bufs.iter().map(|b| bits(b)).collect();
        (params, bufs)
    };
    let serial = run(None);
    assert_eq!(run(Some(&Pool::new(2).unwrap())), serial);
}

#[test]
fn pool_reports_errors_like_the_serial_step() {
    let pool = Pool::new(2).unwrap();
    let shape = Shape::new(&[300, 257]).unwrap();
    let mut p = vec![1.0f32; shape.numel()];
    let mut g = vec![0.1f32; shape.numel()];
    g[70_000] = f32::NAN;
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let err = pool
        .step(&CameConfig::default(), &shape, &mut p, &g, &mut state)
        .unwrap_err();
    assert_eq!(err, came::Error::NonFiniteGradient { index: 70_000 });
    assert!(p.iter().all(|&x| x == 1.0));
    assert_eq!(
        Pool::new(0).unwrap().threads(),
        std::thread::available_parallelism().unwrap().get()
    );
}
