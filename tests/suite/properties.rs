//! Invariants of the step on edge-case inputs, beyond the reference trajectories.

use came::{CameConfig, CameState, Layout, Shape};

fn run(dims: &[usize], config: &CameConfig, p: &mut [f32], grads: &[Vec<f32>]) -> Vec<f32> {
    let shape = Shape::new(dims).unwrap();
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    for g in grads {
        came::step(config, &shape, p, g, &mut state).unwrap();
    }
    assert_eq!(state.step_count(), grads.len() as u64);
    assert!(p.iter().all(|x| x.is_finite()));
    assert!(state.as_slice().iter().all(|x| x.is_finite()));
    buf
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
}

#[test]
fn zero_gradients_leave_parameters_unchanged() {
    for dims in [&[5usize, 6][..], &[9], &[], &[2, 3, 4]] {
        let n: usize = dims.iter().product();
        let p0 = ramp(n);
        let mut p = p0.clone();
        let buf = run(dims, &CameConfig::new(1e-2), &mut p, &vec![vec![0.0; n]; 5]);
        assert_eq!(p, p0, "{dims:?}");
        // momentum stays exactly zero
        assert!(buf[..n].iter().all(|&m| m == 0.0));
    }
}

#[test]
fn zero_gradients_with_weight_decay_only_decay() {
    let config = CameConfig::new(1e-2).with_weight_decay(0.5);
    let mut p = vec![1.0f32; 12];
    run(&[3, 4], &config, &mut p, &[vec![0.0; 12]]);
    let decayed = 1.0 - (1e-2f64 * 0.5) as f32;
    assert!(p.iter().all(|&x| x == decayed), "{p:?}");
}

#[test]
fn zero_size_dims_are_a_successful_no_op() {
    for dims in [&[0usize][..], &[0, 5], &[3, 0], &[2, 0, 4], &[0, 0]] {
        let shape = Shape::new(dims).unwrap();
        assert_eq!(shape.numel(), 0);
        let mut buf = vec![0.0f32; shape.state_len()];
        let mut state = CameState::new(&mut buf);
        let info = came::step::<f32, f32>(&CameConfig::default(), &shape, &mut [], &[], &mut state)
            .unwrap();
        assert_eq!(info.step, 1);
        assert_eq!(info.update_rms, Some(0.0));
        assert!(buf.iter().all(|&x| x == 0.0));
    }
}

#[test]
fn one_by_one_moves_against_the_gradient() {
    for g in [0.3f32, -2.0, 1e-6, 1e6] {
        let mut p = vec![0.0f32];
        run(&[1, 1], &CameConfig::new(1e-2), &mut p, &[vec![g]]);
        assert!(
            p[0] != 0.0 && p[0].signum() == -g.signum(),
            "g = {g}: p = {}",
            p[0]
        );
    }
}

#[test]
fn one_by_n_is_factored_with_a_single_row() {
    let shape = Shape::new(&[1, 40]).unwrap();
    assert_eq!(
        shape.layout(),
        Layout::Factored {
            batch: 1,
            rows: 1,
            cols: 40
        }
    );
    let mut p = ramp(40);
    let p0 = p.clone();
    let grads: Vec<Vec<f32>> = (0..6)
        .map(|t| ramp(40).iter().map(|x| x + t as f32).collect())
        .collect();
    run(&[1, 40], &CameConfig::new(1e-2), &mut p, &grads);
    assert!(p.iter().zip(&p0).all(|(a, b)| a != b));
}

/// With every gradient equal to `g`, every factor is equal: the first update is
/// `sign(g) / sqrt(1 - beta2)` before clipping, clipped to RMS 1, so `u = sign(g)`,
/// `m = (1 - beta1) sign(g)`, the instability `(u - m)^2 + eps2 = beta1^2` (eps2 negligible),
/// and every element moves by `lr m / sqrt((1 - beta3) beta1^2)`.
#[test]
fn all_equal_gradients_move_every_element_by_the_closed_form() {
    let config = CameConfig::new(1e-3);
    for dims in [&[6usize, 7][..], &[3, 4, 5]] {
        let n: usize = dims.iter().product();
        let mut p = vec![0.0f32; n];
        run(dims, &config, &mut p, &[vec![2.5; n]]);
        let (b1, _, b3) = config.betas;
        let m = 1.0 - b1;
        let expected = -config.lr * m / ((1.0 - b3) * b1 * b1).sqrt();
        for &x in &p {
            assert!(
                (f64::from(x) - expected).abs() <= 1e-6 * expected.abs(),
                "{x} vs {expected}"
            );
        }
    }
}

#[test]
fn rows_without_gradient_stay_put() {
    let (rows, cols) = (10, 9);
    let mut p = ramp(rows * cols);
    let p0 = p.clone();
    let grads: Vec<Vec<f32>> = (0..5)
        .map(|t| {
            (0..rows * cols)
                .map(|i| {
                    if (i / cols) % 2 == 1 {
                        0.0
                    } else {
                        ((i + t) as f32).cos()
                    }
                })
                .collect()
        })
        .collect();
    run(&[rows, cols], &CameConfig::new(1e-2), &mut p, &grads);
    for (i, (a, b)) in p.iter().zip(&p0).enumerate() {
        if (i / cols) % 2 == 1 {
            assert_eq!(a, b, "row {} moved", i / cols);
        } else {
            assert_ne!(a, b, "row {} did not move", i / cols);
        }
    }
}

#[test]
fn clip_bounds_the_first_update() {
    // The first update has RMS 1/sqrt(1 - beta2) ~ 31.6 before clipping; with clip_threshold c
    // the clipped update has RMS c, so the momentum has RMS (1 - beta1) c.
    for clip in [0.1, 1.0, 3.0] {
        let dims = [8usize, 12];
        let n = 96;
        let config = CameConfig::new(1e-3).with_clip_threshold(clip);
        let shape = Shape::new(&dims).unwrap();
        let mut buf = vec![0.0f64; shape.state_len()];
        let mut state = CameState::new(&mut buf);
        let g: Vec<f64> = (0..n).map(|i| ((i * 7) as f64).sin()).collect();
        let mut p = vec![0.0f64; n];
        let info = came::step(&config, &shape, &mut p, &g, &mut state).unwrap();
        let rms = info.update_rms.unwrap();
        assert!(rms > clip, "rms {rms}");
        let m = &buf[..n];
        let rms = (m.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
        assert!(
            (rms - 0.1 * clip).abs() < 1e-12,
            "clip {clip}: momentum rms {rms}"
        );
    }
}

#[test]
fn state_parts_use_the_reference_names_and_sizes() {
    let shape = Shape::new(&[2, 3, 4]).unwrap();
    let mut buf = vec![0.0f32; shape.state_len()];
    let state = CameState::new(&mut buf);
    let named = state.parts(&shape).unwrap().named();
    let sizes: Vec<(&str, usize)> = named.iter().map(|(k, s)| (*k, s.len())).collect();
    assert_eq!(
        sizes,
        [
            ("exp_avg", 24),
            ("exp_avg_sq_row", 6),
            ("exp_avg_sq_col", 8),
            ("exp_avg_res_row", 6),
            ("exp_avg_res_col", 8)
        ]
    );
    let v = Shape::new(&[7]).unwrap();
    let mut buf = vec![0.0f32; v.state_len()];
    assert_eq!(v.state_len(), 14);
    let state = CameState::new(&mut buf);
    let names: Vec<&str> = state
        .parts(&v)
        .unwrap()
        .named()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(names, ["exp_avg", "exp_avg_sq"]);
}

#[test]
fn state_len_counts_momentum_statistics_and_workspace() {
    // 4 x 5: momentum 20, statistics 2 * (4 + 5), workspace 2 * (rows + cols) (new statistics,
    // factors) + 4 * cols (one lane's column sums and weighted column sums, each a block and
    // a compensated total)
    assert_eq!(came::state_len(&[4, 5]), 20 + 18 + 18 + 20);
    // batch of 2: statistics 2 * 2 * (3 + 4), workspace 2 * 2 * (3 + 4) + one lane's sums of
    // 4 columns
    assert_eq!(came::state_len(&[2, 3, 4]), 24 + 28 + 28 + 16);
    assert_eq!(came::state_len(&[]), 2);
    // the workspace stays O(rows + cols): under 2% of a large matrix
    let big = Shape::new(&[4096, 4096]).unwrap();
    let overhead = big.state_len() - big.numel() - 2 * (4096 + 4096);
    assert_eq!(big.lanes(), 16);
    assert_eq!(overhead, 2 * (4096 + 4096) + 4 * 16 * 4096);
    assert!(overhead * 100 < 2 * big.numel());
}

#[test]
fn resumed_state_continues_where_it_left_off() {
    let dims = [6usize, 5];
    let shape = Shape::new(&dims).unwrap();
    let config = CameConfig::new(1e-2);
    let grads: Vec<Vec<f32>> = (0..6)
        .map(|t| ramp(30).iter().map(|x| x * (t + 1) as f32).collect())
        .collect();
    let mut p_straight = ramp(30);
    run(&dims, &config, &mut p_straight, &grads);

    let mut p = ramp(30);
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    for g in &grads[..3] {
        came::step(&config, &shape, &mut p, g, &mut state).unwrap();
    }
    let (data, step) = state.into_parts();
    let saved = data.to_vec();
    let mut copy = saved.clone();
    let mut state = CameState::from_parts(&mut copy, step);
    for g in &grads[3..] {
        came::step(&config, &shape, &mut p, g, &mut state).unwrap();
    }
    assert_eq!(state.step_count(), 6);
    assert_eq!(p, p_straight);
}

#[test]
fn without_confidence_the_instability_statistics_stay_zero() {
    let config = CameConfig::new(1e-2).with_confidence(false);
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|t| ramp(24).iter().map(|g| g + t as f32).collect())
        .collect();
    let shape = Shape::new(&[2, 3, 4]).unwrap();
    let mut p = ramp(24);
    let mut buf = run(&[2, 3, 4], &config, &mut p, &grads);
    let state = CameState::from_parts(&mut buf, 3);
    let came::StateParts::Factored {
        exp_avg_sq_row,
        exp_avg_res_row,
        exp_avg_res_col,
        ..
    } = state.parts(&shape).unwrap()
    else {
        panic!("a 3-d tensor is factored");
    };
    assert!(exp_avg_res_row.iter().all(|&x| x == 0.0));
    assert!(exp_avg_res_col.iter().all(|&x| x == 0.0));
    assert!(exp_avg_sq_row.iter().all(|&x| x > 0.0));
    // and the step differs from CAME's
    let mut q = ramp(24);
    run(&[2, 3, 4], &CameConfig::new(1e-2), &mut q, &grads);
    assert!(p.iter().zip(&q).any(|(a, b)| a != b));
}

#[test]
fn without_confidence_vectors_step_exactly_as_with_it() {
    let grads = vec![ramp(9), ramp(9)];
    let (mut a, mut b) = (ramp(9), ramp(9));
    run(&[9], &CameConfig::new(1e-2), &mut a, &grads);
    run(
        &[9],
        &CameConfig::new(1e-2).with_confidence(false),
        &mut b,
        &grads,
    );
    assert_eq!(a, b);
}

#[test]
fn beta1_zero_is_allowed_only_without_confidence() {
    let config = CameConfig::new(1e-2).with_betas(0.0, 0.999, 0.9999);
    assert_eq!(config.validate(), Err(came::Error::ZeroBeta1));
    let mut p = ramp(12);
    let first = p.clone();
    run(&[3, 4], &config.with_confidence(false), &mut p, &[ramp(12)]);
    assert_ne!(p, first);
}

/// With the instability statistics bias-corrected, the confidence sees `C / (1 - β3^t)`: the
/// update of step `t` is the reference's times `sqrt(1 - β3^t)`, 0.01 at the first step with
/// β3 = 0.9999 (the reference's first steps are inflated 100x).
#[test]
fn bias_corrected_instability_scales_the_first_step_by_sqrt_one_minus_beta3() {
    let dims = [6, 5];
    let p0 = ramp(30);
    let grad: Vec<f32> = (0..30).map(|i| 0.1 * ((i * 7 % 11) as f32 - 5.0)).collect();
    let moved = |config: CameConfig| -> Vec<f64> {
        let mut p = p0.clone();
        run(&dims, &config, &mut p, std::slice::from_ref(&grad));
        p.iter().zip(&p0).map(|(a, b)| f64::from(a - b)).collect()
    };
    let reference = moved(CameConfig::new(1e-3));
    let corrected = moved(CameConfig::new(1e-3).with_instability(came::Instability::BiasCorrected));
    for ((r, c), g) in reference.iter().zip(&corrected).zip(&grad) {
        if *g == 0.0 {
            assert_eq!((*r, *c), (0.0, 0.0));
            continue;
        }
        assert!(r.abs() > 1e-4, "the reference moves the element: {r}");
        let ratio = c / r;
        assert!((ratio - 0.01).abs() < 1e-4, "{ratio}");
    }
}
