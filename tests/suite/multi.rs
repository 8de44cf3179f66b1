//! The no-alloc multi-tensor step: fixed tensors in borrowed buffers, all or nothing.

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Error, Shape, TensorError, TensorStep};

const DIMS: [&[usize]; 3] = [&[8, 6], &[6], &[2, 3, 5]];

fn grads(seed: f32) -> [Vec<f32>; 3] {
    DIMS.map(|d| {
        let n: usize = d.iter().product();
        (0..n).map(|i| ((i as f32 + seed) * 0.7).sin()).collect()
    })
}

#[test]
fn step_all_matches_single_steps_and_is_all_or_nothing() {
    let shapes = DIMS.map(|d| Shape::new(d).unwrap());
    let config = CameConfig::new(1e-2);
    let mut params = DIMS.map(|d| vec![0.5f32; d.iter().product()]);
    let mut bufs = shapes.map(|s| vec![0.0f32; s.state_len()]);
    let [b0, b1, b2] = &mut bufs;
    let mut states = [CameState::new(b0), CameState::new(b1), CameState::new(b2)];

    let mut expected = params.clone();
    let mut ebufs = shapes.map(|s| vec![0.0f32; s.state_len()]);
    let [e0, e1, e2] = &mut ebufs;
    let mut estates = [CameState::new(e0), CameState::new(e1), CameState::new(e2)];

    for t in 0..3 {
        let g = grads(t as f32);
        {
            let [p0, p1, p2] = &mut params;
            let [s0, s1, s2] = &mut states;
            let mut tensors: heapless::Vec<TensorStep<'_, '_, f32>, 4> = heapless::Vec::new();
            for (shape, (param, (grad, state))) in shapes
                .iter()
                .zip([p0, p1, p2].into_iter().zip(g.iter().zip([s0, s1, s2])))
            {
                let t = TensorStep {
                    shape: *shape,
                    param,
                    grad,
                    state,
                };
                assert!(tensors.push(t).is_ok());
            }
            came::step_all(&config, &mut tensors).unwrap();
        }
        for (((shape, p), gr), st) in shapes.iter().zip(&mut expected).zip(&g).zip(&mut estates) {
            came::step(&config, shape, p, gr, st).unwrap();
        }
    }
    assert_eq!(params, expected);
    assert!(states.iter().all(|s| s.step_count() == 3));

    // a NaN in the middle tensor: nothing changes anywhere
    let mut g = grads(9.0);
    g[1][2] = f32::NAN;
    // the named state pieces, without the scratch workspace a failed step may have used
    let pieces = |states: &[CameState<'_, f32>; 3]| -> Vec<Vec<f32>> {
        states
            .iter()
            .zip(&shapes)
            .flat_map(|(s, shape)| {
                s.parts(shape)
                    .unwrap()
                    .named()
                    .into_iter()
                    .map(|(_, v)| v.to_vec())
            })
            .collect()
    };
    let before = (params.clone(), pieces(&states));
    let [p0, p1, p2] = &mut params;
    let [s0, s1, s2] = &mut states;
    let mut tensors = [
        TensorStep {
            shape: shapes[0],
            param: p0,
            grad: &g[0],
            state: s0,
        },
        TensorStep {
            shape: shapes[1],
            param: p1,
            grad: &g[1],
            state: s1,
        },
        TensorStep {
            shape: shapes[2],
            param: p2,
            grad: &g[2],
            state: s2,
        },
    ];
    let err = came::step_all(&config, &mut tensors).unwrap_err();
    assert_eq!(
        err,
        TensorError {
            tensor: 1,
            error: Error::NonFiniteGradient { index: 2 }
        }
    );
    assert!(err.to_string().starts_with("tensor 1"));
    assert_eq!(params, before.0);
    assert_eq!(pieces(&states), before.1);
    assert!(states.iter().all(|s| s.step_count() == 3));
}

#[test]
fn adamw_step_all_matches_single_steps_and_is_all_or_nothing() {
    let config = AdamWConfig::new(1e-2).with_weight_decay(0.1);
    let mut params = DIMS.map(|d| vec![0.5f32; d.iter().product()]);
    let mut bufs = DIMS.map(|d| vec![0.0f32; adamw::state_len(d)]);
    let [b0, b1, b2] = &mut bufs;
    let mut states = [
        AdamWState::new(b0),
        AdamWState::new(b1),
        AdamWState::new(b2),
    ];

    let mut expected = params.clone();
    let mut ebufs = DIMS.map(|d| vec![0.0f32; adamw::state_len(d)]);
    let [e0, e1, e2] = &mut ebufs;
    let mut estates = [
        AdamWState::new(e0),
        AdamWState::new(e1),
        AdamWState::new(e2),
    ];

    for t in 0..3 {
        let g = grads(t as f32);
        {
            let [p0, p1, p2] = &mut params;
            let [s0, s1, s2] = &mut states;
            let mut tensors: heapless::Vec<adamw::TensorStep<'_, '_, f32>, 4> =
                heapless::Vec::new();
            for (param, (grad, state)) in [p0, p1, p2].into_iter().zip(g.iter().zip([s0, s1, s2])) {
                let t = adamw::TensorStep { param, grad, state };
                assert!(tensors.push(t).is_ok());
            }
            adamw::step_all(&config, &mut tensors).unwrap();
        }
        for ((p, gr), st) in expected.iter_mut().zip(&g).zip(&mut estates) {
            let info = adamw::step(&config, p, gr, st).unwrap();
            assert_eq!(info.step, t + 1);
            assert_eq!(info.update_rms, None);
        }
    }
    let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
        v.iter()
            .map(|x| x.iter().map(|y| y.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&params), bits(&expected));
    assert!(states.iter().all(|s| s.step_count() == 3));
    let moments = |states: &[AdamWState<'_, f32>; 3]| -> Vec<Vec<f32>> {
        states
            .iter()
            .flat_map(|s| {
                let (m, v) = s.parts();
                [m.to_vec(), v.to_vec()]
            })
            .collect()
    };
    assert_eq!(bits(&moments(&states)), bits(&moments(&estates)));

    // a NaN in the last tensor: nothing changes anywhere, the earlier tensors included
    let mut g = grads(9.0);
    g[2][4] = f32::NAN;
    let before = (params.clone(), moments(&states));
    let [p0, p1, p2] = &mut params;
    let [s0, s1, s2] = &mut states;
    let mut tensors = [
        adamw::TensorStep {
            param: p0,
            grad: &g[0],
            state: s0,
        },
        adamw::TensorStep {
            param: p1,
            grad: &g[1],
            state: s1,
        },
        adamw::TensorStep {
            param: p2,
            grad: &g[2],
            state: s2,
        },
    ];
    let err = adamw::step_all(&config, &mut tensors).unwrap_err();
    assert_eq!(
        err,
        TensorError {
            tensor: 2,
            error: Error::NonFiniteGradient { index: 4 }
        }
    );
    assert!(err.to_string().starts_with("tensor 2"));
    assert_eq!(bits(&params), bits(&before.0));
    assert_eq!(bits(&moments(&states)), bits(&before.1));
    assert!(states.iter().all(|s| s.step_count() == 3));
    assert!(adamw::step_all::<f32>(&config, &mut []).is_ok());
}

#[test]
fn length_errors_name_the_tensor() {
    let shape = Shape::new(&[4]).unwrap();
    let mut buf = [0.0f32; 8];
    let mut state = CameState::new(&mut buf);
    let mut p = [0.0f32; 3];
    let mut tensors = [TensorStep {
        shape,
        param: &mut p,
        grad: &[0.0f32; 3],
        state: &mut state,
    }];
    let err = came::step_all(&CameConfig::default(), &mut tensors).unwrap_err();
    assert_eq!(err.tensor, 0);
    assert!(matches!(err.error, Error::LengthMismatch { .. }));
    assert!(came::step_all::<f32, f32>(&CameConfig::default(), &mut []).is_ok());
}

#[test]
fn check_gradient_finds_the_first_bad_element_anywhere() {
    for n in [0usize, 1, 7, 8, 33, 1000] {
        let mut g: Vec<f64> = (0..n).map(|i| i as f64 * 0.1 - 3.0).collect();
        assert_eq!(came::check_gradient(&g), Ok(()));
        for at in [0, n / 2, n.saturating_sub(1)] {
            if at >= n {
                continue;
            }
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let keep = g[at];
                g[at] = bad;
                assert_eq!(
                    came::check_gradient(&g),
                    Err(Error::NonFiniteGradient { index: at })
                );
                g[at] = keep;
            }
        }
    }
    // the largest finite values are fine
    assert_eq!(came::check_gradient(&[f32::MAX, f32::MIN, 0.0]), Ok(()));
}
