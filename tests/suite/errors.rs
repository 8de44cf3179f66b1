//! One test per error variant: the right error, and nothing changed.

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{Buffer, CameConfig, CameState, Error, Shape, StepInfo};

/// Runs one CAME step on a 4 x 5 tensor that has already taken a step, and checks that an
/// error leaves parameters and state bit-for-bit as they were.
fn came_err(config: &CameConfig, grad: &[f32], corrupt: impl Fn(&mut [f32])) -> Error {
    came_err_where(config, grad, corrupt, false)
}

fn came_err_where(
    config: &CameConfig,
    grad: &[f32],
    corrupt: impl Fn(&mut [f32]),
    momentum_may_change: bool,
) -> Error {
    let shape = Shape::new(&[4, 5]).unwrap();
    let mut p: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let warm: Vec<f32> = (0..20).map(|i| (i as f32).sin()).collect();
    came::step(&CameConfig::default(), &shape, &mut p, &warm, &mut state).unwrap();
    let (data, step) = state.into_parts();
    corrupt(data);
    let (p0, s0) = (p.clone(), data.to_vec());
    let mut state = CameState::from_parts(data, step);
    let err = came::step(config, &shape, &mut p, grad, &mut state).unwrap_err();
    assert_eq!(state.step_count(), 1, "{err}");
    assert_eq!(bits(&p), bits(&p0), "{err}: parameters changed");
    // the instability statistics (the last 18 of the 36 statistics) are never changed
    let s = state.as_slice();
    assert_eq!(
        bits(&s[29..38]),
        bits(&s0[29..38]),
        "{err}: instability changed"
    );
    if !momentum_may_change {
        assert_eq!(bits(&s[..38]), bits(&s0[..38]), "{err}: state changed");
    }
    // every error has a message
    assert!(!err.to_string().is_empty());
    err
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn good_grad() -> Vec<f32> {
    (0..20).map(|i| (i as f32 * 0.3).cos()).collect()
}

fn config_err(config: CameConfig) -> Error {
    came_err(&config, &good_grad(), |_| {})
}

#[test]
fn invalid_learning_rate() {
    for lr in [0.0, -1e-3, f64::NAN, f64::INFINITY] {
        let err = config_err(CameConfig::default().with_lr(lr));
        assert!(matches!(err, Error::InvalidLearningRate(x) if x.to_bits() == lr.to_bits()));
    }
}

#[test]
fn invalid_beta() {
    for index in 0..3 {
        for value in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            let mut betas = [0.9, 0.999, 0.9999];
            betas[index] = value;
            let err = config_err(CameConfig::default().with_betas(betas[0], betas[1], betas[2]));
            assert!(
                matches!(err, Error::InvalidBeta { index: i, value: v } if i == index && v.to_bits() == value.to_bits()),
                "{err:?}"
            );
        }
    }
    // beta2 = 0 and beta3 = 0 are valid
    assert!(
        CameConfig::default()
            .with_betas(0.9, 0.0, 0.0)
            .validate()
            .is_ok()
    );
}

#[test]
fn zero_beta1() {
    let err = config_err(CameConfig::default().with_betas(0.0, 0.999, 0.9999));
    assert_eq!(err, Error::ZeroBeta1);
    assert!(err.to_string().contains("beta1"));
}

#[test]
fn invalid_epsilon() {
    for index in 0..2 {
        for value in [-1e-30, f64::NAN, f64::INFINITY] {
            let mut eps = [1e-30, 1e-16];
            eps[index] = value;
            let err = config_err(CameConfig::default().with_eps(eps[0], eps[1]));
            assert!(
                matches!(err, Error::InvalidEpsilon { index: i, .. } if i == index),
                "{err:?}"
            );
        }
    }
    // eps2 = 0 only without the confidence term: with it, a zero gradient gives 0 / 0
    let no_confidence = CameConfig::default().with_confidence(false);
    assert!(no_confidence.with_eps(0.0, 0.0).validate().is_ok());
    let err = config_err(CameConfig::default().with_eps(0.0, 0.0));
    assert_eq!(
        err,
        Error::InvalidEpsilon {
            index: 1,
            value: 0.0
        }
    );
}

/// Hyperparameters that are valid numbers but not in the tensor's float type are refused
/// before anything is written (found by fuzzing: each gave NaN parameters and `Ok`).
#[test]
fn hyperparameters_that_do_not_fit_the_float_type_are_refused() {
    let shape = Shape::new(&[2, 3]).unwrap();
    let cases = [
        // (1 - beta3) eps2 underflows to zero in f32
        (
            CameConfig::default().with_eps(1e-30, 1e-320),
            Error::InvalidEpsilon {
                index: 1,
                value: 1e-320,
            },
        ),
        (CameConfig::new(1e300), Error::InvalidLearningRate(1e300)),
        (
            CameConfig::new(1e30).with_weight_decay(1e10),
            Error::InvalidLearningRate(1e30),
        ),
        (
            CameConfig::default().with_clip_threshold(1e-50),
            Error::InvalidClipThreshold(1e-50),
        ),
    ];
    for (config, want) in cases {
        assert!(config.validate().is_ok(), "{config:?} is valid in f64");
        let mut buf = vec![0.0f32; shape.state_len()];
        let mut p = [0.5f32; 6];
        let err = came::step(
            &config,
            &shape,
            &mut p,
            &[0.0f32; 6],
            &mut CameState::new(&mut buf),
        );
        assert_eq!(err, Err(want), "{config:?}");
        assert_eq!(p, [0.5; 6]);
        assert!(buf.iter().all(|&x| x == 0.0));
        // f64 holds them all but the underflow (1e-4 x 1e-320 is below its smallest number too)
        let mut buf = vec![0.0f64; shape.state_len()];
        let mut p = [0.5f64; 6];
        let r = came::step(
            &config,
            &shape,
            &mut p,
            &[0.0f64; 6],
            &mut CameState::new(&mut buf),
        );
        let underflow = matches!(want, Error::InvalidEpsilon { .. });
        assert_eq!(r.is_ok(), !underflow, "{config:?}: {r:?}");
    }
}

#[test]
fn invalid_clip_threshold() {
    for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = config_err(CameConfig::default().with_clip_threshold(c));
        assert!(matches!(err, Error::InvalidClipThreshold(_)), "{err:?}");
    }
}

#[test]
fn invalid_weight_decay() {
    for wd in [-0.01, f64::NAN, f64::INFINITY] {
        let err = config_err(CameConfig::default().with_weight_decay(wd));
        assert!(matches!(err, Error::InvalidWeightDecay(_)), "{err:?}");
    }
}

#[test]
fn shape_overflow() {
    assert_eq!(Shape::new(&[usize::MAX, 2]), Err(Error::ShapeOverflow));
    assert_eq!(Shape::new(&[1 << 40, 1 << 40]), Err(Error::ShapeOverflow));
    assert_eq!(
        Shape::new(&[3, usize::MAX / 2, 1, 1]),
        Err(Error::ShapeOverflow)
    );
    assert_eq!(Shape::vector(usize::MAX / 2 + 1), Err(Error::ShapeOverflow));
    // the element count fits but the state does not
    assert_eq!(
        Shape::new(&[usize::MAX / 2 + 1, 1]),
        Err(Error::ShapeOverflow)
    );
    // no elements, but statistics of usize::MAX columns
    assert_eq!(Shape::new(&[0, usize::MAX]), Err(Error::ShapeOverflow));
    assert!(Shape::new(&[0, 1 << 40]).is_ok());
}

#[test]
fn length_mismatch_names_each_buffer() {
    let shape = Shape::new(&[4, 5]).unwrap();
    let config = CameConfig::default();
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let g = vec![0.5f32; 20];
    let err = came::step(&config, &shape, &mut [0.0f32; 19], &g, &mut state).unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            buffer: Buffer::Param,
            expected: 20,
            actual: 19
        }
    );
    let err = came::step(&config, &shape, &mut [0.0f32; 20], &g[..3], &mut state).unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            buffer: Buffer::Grad,
            expected: 20,
            actual: 3
        }
    );
    let mut short = vec![0.0f32; shape.state_len() - 1];
    let mut bad_state = CameState::new(&mut short);
    let err = came::step(&config, &shape, &mut [0.0f32; 20], &g, &mut bad_state).unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            buffer: Buffer::State,
            expected: shape.state_len(),
            actual: shape.state_len() - 1
        }
    );
    assert!(bad_state.parts(&shape).is_err());
    assert_eq!(state.step_count(), 0);
}

#[test]
fn non_finite_gradient_reports_the_first_bad_element() {
    for (index, bad) in [(0, f32::NAN), (7, f32::INFINITY), (19, f32::NEG_INFINITY)] {
        let mut g = good_grad();
        g[index] = bad;
        let err = came_err(&CameConfig::default(), &g, |_| {});
        assert_eq!(err, Error::NonFiniteGradient { index });
    }
}

#[test]
fn non_finite_gradient_in_a_vector() {
    let shape = Shape::new(&[6]).unwrap();
    let mut buf = vec![0.0f64; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let mut p = vec![1.0f64; 6];
    let g = [0.1, 0.2, f64::NAN, 0.4, 0.5, 0.6];
    let err = came::step(&CameConfig::default(), &shape, &mut p, &g, &mut state).unwrap_err();
    assert_eq!(err, Error::NonFiniteGradient { index: 2 });
    assert_eq!(p, [1.0; 6]);
    assert!(buf.iter().all(|&x| x == 0.0));
}

#[test]
fn non_finite_state() {
    // a NaN in a row statistic is found before anything is written
    let err = came_err(&CameConfig::default(), &good_grad(), |s| s[21] = f32::NAN);
    assert_eq!(err, Error::NonFiniteState);
    // an infinity in the momentum surfaces in the instability statistics, after the momentum
    // and the squared-gradient statistics were updated
    let err = came_err_where(
        &CameConfig::default(),
        &good_grad(),
        |s| s[3] = f32::INFINITY,
        true,
    );
    assert_eq!(err, Error::NonFiniteState);
}

#[test]
fn negative_statistics_are_corrupt_state() {
    // a second-moment statistic is an average of squares; a negative one is found before
    // anything is written (row, column, instability row, instability column)
    for at in [21, 26, 31, 36] {
        let err = came_err(&CameConfig::default(), &good_grad(), |s| s[at] = -1e-3);
        assert_eq!(err, Error::NonFiniteState, "state[{at}]");
    }
    // a vector's negative second moment that spoils the update
    let shape = Shape::new(&[3]).unwrap();
    let mut buf = vec![0.0f32; shape.state_len()];
    buf[4] = -1.0;
    let before = bits(&buf);
    let mut state = CameState::from_parts(&mut buf, 2);
    let mut p = vec![1.0f32; 3];
    let err = came::step(
        &CameConfig::default(),
        &shape,
        &mut p,
        &[0.1f32; 3],
        &mut state,
    );
    assert_eq!(err, Err(Error::NonFiniteState));
    assert_eq!(bits(state.as_slice()), before);
    assert_eq!(p, [1.0; 3]);
}

#[test]
fn non_finite_state_in_a_vector_changes_nothing() {
    let shape = Shape::new(&[4]).unwrap();
    let mut buf = vec![0.0f32; shape.state_len()];
    buf[1] = f32::NAN; // momentum
    let before = bits(&buf);
    let mut state = CameState::from_parts(&mut buf, 3);
    let mut p = vec![1.0f32; 4];
    let err = came::step(
        &CameConfig::default(),
        &shape,
        &mut p,
        &[0.1f32; 4],
        &mut state,
    )
    .unwrap_err();
    assert_eq!(err, Error::NonFiniteState);
    assert_eq!(bits(state.as_slice()), before);
    assert_eq!(p, [1.0; 4]);
}

#[test]
fn huge_gradient_squares_overflow_f32_and_change_nothing() {
    // 1e20^2 = 1e40 > f32::MAX: the reference turns this into NaN.
    let mut g = good_grad();
    g[4] = 1e20;
    let err = came_err(&CameConfig::default(), &g, |_| {});
    assert_eq!(err, Error::NonFiniteUpdate);
    // the same gradient is fine in f64
    let shape = Shape::new(&[4, 5]).unwrap();
    let mut buf = vec![0.0f64; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
    let mut p = vec![0.0f64; 20];
    came::step(&CameConfig::default(), &shape, &mut p, &g64, &mut state).unwrap();
    assert!(p.iter().all(|x| x.is_finite()));
}

#[test]
fn zero_eps1_with_a_zero_gradient_is_refused() {
    // 0 / 0 in the second moment: the reference gives NaN
    let config = CameConfig::default().with_eps(0.0, 1e-16);
    let shape = Shape::new(&[3]).unwrap();
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let err = came::step(
        &config,
        &shape,
        &mut [1.0f32; 3],
        &[0.0f32, 1.0, 2.0],
        &mut state,
    )
    .unwrap_err();
    assert_eq!(err, Error::NonFiniteUpdate);
}

#[test]
fn adamw_errors() {
    let mut buf = vec![0.0f32; 8];
    let mut state = AdamWState::new(&mut buf);
    let mut p = vec![1.0f32; 4];
    let g = [0.1f32; 4];
    let bad = [
        (AdamWConfig::new(0.0), "learning rate"),
        (AdamWConfig::default().with_betas(1.0, 0.9), "beta1"),
        (AdamWConfig::default().with_betas(0.9, -0.5), "beta2"),
        (
            AdamWConfig {
                eps: -1.0,
                ..AdamWConfig::default()
            },
            "eps1",
        ),
        (
            AdamWConfig::default().with_weight_decay(f64::NAN),
            "weight decay",
        ),
    ];
    for (config, what) in bad {
        let err = adamw::step(&config, &mut p, &g, &mut state).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    let err = adamw::step(&AdamWConfig::default(), &mut p, &g[..3], &mut state).unwrap_err();
    assert!(matches!(
        err,
        Error::LengthMismatch {
            buffer: Buffer::Grad,
            ..
        }
    ));
    let mut short = vec![0.0f32; 7];
    let err = adamw::step(
        &AdamWConfig::default(),
        &mut p,
        &g,
        &mut AdamWState::new(&mut short),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        Error::LengthMismatch {
            buffer: Buffer::State,
            expected: 8,
            actual: 7
        }
    ));
    let err = adamw::step(
        &AdamWConfig::default(),
        &mut p,
        &[0.1, 0.2, f32::INFINITY, 0.0],
        &mut state,
    )
    .unwrap_err();
    assert_eq!(err, Error::NonFiniteGradient { index: 2 });
    assert_eq!(p, [1.0; 4]);
    assert_eq!(state.step_count(), 0);
    assert!(state.parts().0.iter().all(|&x| x == 0.0));
}

#[test]
fn adamw_refuses_gradients_whose_squares_overflow() {
    // the reference stores an infinite second moment, which freezes the element for good
    let mut buf = vec![0.0f32; 10];
    let mut state = AdamWState::new(&mut buf);
    let mut p = vec![1.0f32; 5];
    let g = [0.1, 0.2, 0.3, 0.4, 2e19];
    let err = adamw::step(&AdamWConfig::default(), &mut p, &g, &mut state);
    assert_eq!(err, Err(Error::NonFiniteUpdate));
    assert_eq!(p, [1.0; 5]);
    assert!(buf.iter().all(|&x| x == 0.0));
    // 1e19 squared is 1e38 < f32::MAX: a valid (if wild) step
    let mut state = AdamWState::new(&mut buf);
    let g = [0.1, 0.2, 0.3, 0.4, 1e19];
    assert_eq!(
        adamw::step(&AdamWConfig::default(), &mut p, &g, &mut state),
        Ok(StepInfo {
            step: 1,
            update_rms: None
        })
    );
    assert!(p.iter().chain(&buf).all(|x| x.is_finite()));
}

#[test]
fn adamw_does_not_scan_its_state() {
    // documented: a NaN written into AdamW's state by hand reaches that element only, as in
    // the reference (a scan would be a full extra read of the state on every step)
    let mut buf = vec![0.0f32; 8];
    buf[5] = f32::NAN; // second moment of element 1
    let mut state = AdamWState::from_parts(&mut buf, 0);
    let mut p = vec![1.0f32; 4];
    assert_eq!(
        adamw::step(&AdamWConfig::default(), &mut p, &[0.1; 4], &mut state),
        Ok(StepInfo {
            step: 1,
            update_rms: None
        })
    );
    assert!(p[1].is_nan(), "{p:?} {:?}", state.parts());
    assert!(p.iter().enumerate().all(|(i, x)| i == 1 || x.is_finite()));
}

#[test]
fn errors_implement_core_error() {
    fn takes(_: &dyn core::error::Error) {}
    takes(&Error::ZeroBeta1);
}

/// Found by fuzzing (multi_step): an error holding a NaN must equal itself, or two identical
/// outcomes compare unequal.
#[test]
fn errors_holding_nan_equal_themselves() {
    let e = Error::InvalidBeta {
        index: 1,
        value: f64::NAN,
    };
    assert_eq!(e, e);
    assert_ne!(
        e,
        Error::InvalidBeta {
            index: 1,
            value: 0.5
        }
    );
    assert_eq!(
        Error::InvalidLearningRate(f64::NAN),
        Error::InvalidLearningRate(f64::NAN)
    );
    assert_ne!(
        Error::InvalidLearningRate(1.0),
        Error::InvalidClipThreshold(1.0)
    );
}
