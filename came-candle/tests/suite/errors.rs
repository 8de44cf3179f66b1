//! What is refused, with which var named, and that a refused call changes nothing.

use crate::common;

use came::{Code8, Momentum, OptimizerError};
use came_candle::{Came, Error, ParamGroup, ParamsCame};
use candle::{DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use common::{Rng, bits, grads, tensor, values, var};
use half::bf16;

fn two_vars() -> (Var, Var) {
    let mut rng = Rng::new(2);
    (
        var(&rng.values::<f32>(8 * 12, 0.5), &[8, 12]),
        var(&rng.values::<f32>(12, 0.5), &[12]),
    )
}

fn named(a: &Var, b: &Var) -> Came {
    Came::from_groups([ParamGroup::named(
        [("w", a.clone()), ("b", b.clone())],
        ParamsCame::default(),
    )])
    .unwrap()
}

#[test]
fn invalid_hyperparameters_are_refused() {
    let (a, _) = two_vars();
    let cases = [
        (
            ParamsCame {
                lr: 0.0,
                ..Default::default()
            },
            came::Error::InvalidLearningRate(0.0),
        ),
        (
            ParamsCame {
                beta2: 1.0,
                ..Default::default()
            },
            came::Error::InvalidBeta {
                index: 1,
                value: 1.0,
            },
        ),
        (
            ParamsCame {
                weight_decay: -0.1,
                ..Default::default()
            },
            came::Error::InvalidWeightDecay(-0.1),
        ),
    ];
    for (params, expected) in cases {
        match Came::from_groups([ParamGroup::new([a.clone()], params)]) {
            Err(Error::Optimizer(OptimizerError::Config(e))) => assert_eq!(e, expected),
            other => panic!("{other:?}"),
        }
        // through candle's trait: a candle error with the same message
        let e = Came::new(vec![a.clone()], params).unwrap_err();
        assert!(e.to_string().contains(&expected.to_string()), "{e}");
    }
    let bad_block = Momentum::Int8 {
        code: Code8::Absmax,
        block: 33,
    };
    let params = ParamsCame {
        momentum: bad_block,
        ..Default::default()
    };
    assert!(matches!(
        Came::from_groups([ParamGroup::new([a], params)]),
        Err(Error::Optimizer(OptimizerError::Config(
            came::Error::InvalidMomentum(_)
        )))
    ));
}

#[test]
fn a_refused_group_registers_nothing() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    let c = Var::zeros(4, DType::F32, &Device::Cpu).unwrap();
    // the same var again, after a good one
    let err = opt
        .add_param_group(ParamGroup::named(
            [("c", c.clone()), ("w2", a.clone())],
            ParamsCame::default(),
        ))
        .unwrap_err();
    match err {
        Error::DuplicateVar { name, first } => {
            assert_eq!((name.as_str(), first.as_str()), ("w2", "w"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(opt.len(), 2);
    assert_eq!(opt.groups().len(), 1);
    // a name taken already
    let err = opt
        .add_param_group(ParamGroup::named([("b", c.clone())], ParamsCame::default()))
        .unwrap_err();
    assert!(matches!(err, Error::Optimizer(OptimizerError::DuplicateName(ref n)) if n == "b"));
    // twice in one group
    let err = Came::new(vec![c.clone(), c.clone()], ParamsCame::default()).unwrap_err();
    assert!(err.to_string().contains("\"var.1\""), "{err}");
    assert!(err.to_string().contains("\"var.0\""), "{err}");
    // then a good group goes in
    let g = opt
        .add_param_group(ParamGroup::named([("c", c)], ParamsCame::default()))
        .unwrap();
    assert_eq!((g.0, opt.len(), opt.groups().len()), (1, 3, 2));
}

#[test]
fn unsupported_dtypes_are_refused() {
    let f8 = Var::zeros(4, DType::F8E4M3, &Device::Cpu).unwrap();
    match Came::from_groups([ParamGroup::named([("q", f8)], ParamsCame::default())]) {
        Err(Error::UnsupportedDtype { name, dtype }) => {
            assert_eq!((name.as_str(), dtype), ("q", DType::F8E4M3));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gradients_that_do_not_fit_are_refused() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    let before = (values::<f32>(&a), values::<f32>(&b));
    let g64 = Tensor::zeros(12, DType::F64, &Device::Cpu).unwrap();
    match opt.step_report(&grads(&[(&b, &g64)])) {
        Err(Error::GradDtype { name, var, grad }) => {
            assert_eq!((name.as_str(), var, grad), ("b", DType::F32, DType::F64));
        }
        other => panic!("{other:?}"),
    }
    let wide = Tensor::zeros((12, 8), DType::F32, &Device::Cpu).unwrap();
    match opt.step_report(&grads(&[(&a, &wide)])) {
        Err(Error::GradShape { name, var, grad }) => {
            assert_eq!(name, "w");
            assert_eq!((var, grad), (vec![8, 12], vec![12, 8]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((values::<f32>(&a), values::<f32>(&b)), before);
    assert_eq!(opt.step_count(0), Some(0));
}

/// A gradient over a var's own buffer would need that buffer locked for reading and for
/// writing at once: refused, naming both.
#[test]
fn a_gradient_over_a_vars_buffer_is_refused() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    let own = a.as_tensor().clone();
    match opt.step_report(&grads(&[(&a, &own)])) {
        Err(Error::GradAliasesVar { name, var }) => {
            assert_eq!((name, var), ("w".into(), "w".into()))
        }
        other => panic!("{other:?}"),
    }
    let c = Var::zeros(12, DType::F32, &Device::Cpu).unwrap();
    let mut opt = Came::from_groups([ParamGroup::named(
        [("b", b.clone()), ("c", c.clone())],
        ParamsCame::default(),
    )])
    .unwrap();
    match opt.step_report(&grads(&[(&b, c.as_tensor())])) {
        Err(Error::GradAliasesVar { name, var }) => {
            assert_eq!((name, var), ("b".into(), "c".into()))
        }
        other => panic!("{other:?}"),
    }
}

/// The non-finite guard: a NaN or an infinity anywhere fails the step, names the var and the
/// element, and changes no var and no state.
#[test]
fn a_non_finite_gradient_changes_nothing() {
    for bad in [f32::NAN, f32::INFINITY] {
        let (a, b) = two_vars();
        let mut opt = named(&a, &b);
        let mut rng = Rng::new(4);
        let ga = tensor(&rng.values::<f32>(96, 0.1), &[8, 12]);
        let mut gb = rng.values::<f32>(12, 0.1);
        gb[5] = bad;
        let gb = tensor(&gb, &[12]);
        let before = (bits(&values::<f32>(&a)), bits(&values::<f32>(&b)));
        match opt.step_report(&grads(&[(&a, &ga), (&b, &gb)])) {
            Err(Error::Tensor { index, name, error }) => {
                assert_eq!((index, name.as_str()), (1, "b"));
                assert_eq!(error, came::Error::NonFiniteGradient { index: 5 });
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((bits(&values::<f32>(&a)), bits(&values::<f32>(&b))), before);
        assert_eq!((opt.step_count(0), opt.step_count(1)), (Some(0), Some(0)));
        // candle's trait: the same error as a candle error naming the var
        let e = opt.step(&grads(&[(&a, &ga), (&b, &gb)])).unwrap_err();
        assert!(e.to_string().contains("var 1 (\"b\")"), "{e}");
        // the next good step runs from the untouched state
        let ok = tensor(&[0.1f32; 12], &[12]);
        opt.step(&grads(&[(&a, &ga), (&b, &ok)])).unwrap();
        assert_eq!((opt.step_count(0), opt.step_count(1)), (Some(1), Some(1)));
    }
}

/// A gradient whose square overflows `f32` fails the step as the core fails it.
#[test]
fn an_overflowing_gradient_changes_nothing() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    let before = bits(&values::<f32>(&a));
    let mut g = vec![0.1f32; 96];
    g[7] = 1e30;
    let g = tensor(&g, &[8, 12]);
    match opt.step_report(&grads(&[(&a, &g)])) {
        Err(Error::Tensor {
            index: 0, error, ..
        }) => {
            assert_eq!(error, came::Error::NonFiniteUpdate);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bits(&values::<f32>(&a)), before);
}

/// With vars of two dtypes the guard still covers every gradient before any var changes.
#[test]
fn a_non_finite_gradient_of_another_dtype_changes_nothing() {
    let mut rng = Rng::new(8);
    let w = var(&rng.values::<bf16>(16 * 8, 0.5), &[16, 8]);
    let n = var(&rng.values::<f32>(8, 0.5), &[8]);
    // the bf16 var first: its part would step first
    let mut opt = Came::from_groups([ParamGroup::named(
        [("w", w.clone()), ("n", n.clone())],
        ParamsCame::default(),
    )])
    .unwrap();
    let gw = tensor(&rng.values::<bf16>(128, 0.1), &[16, 8]);
    let mut gn = rng.values::<f32>(8, 0.1);
    gn[2] = f32::NAN;
    let gn = tensor(&gn, &[8]);
    let before = (bits(&values::<bf16>(&w)), bits(&values::<f32>(&n)));
    match opt.step_report(&grads(&[(&w, &gw), (&n, &gn)])) {
        Err(Error::Tensor { index, name, error }) => {
            assert_eq!((index, name.as_str()), (1, "n"));
            assert_eq!(error, came::Error::NonFiniteGradient { index: 2 });
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (bits(&values::<bf16>(&w)), bits(&values::<f32>(&n))),
        before
    );
    assert_eq!((opt.step_count(0), opt.step_count(1)), (Some(0), Some(0)));
    // a checkpoint holds one dtype
    let path = std::env::temp_dir().join(format!("came-candle-mixed-{}.st", std::process::id()));
    match opt.save(&path) {
        Err(Error::MixedDtypes { dtypes }) => assert_eq!(dtypes, [DType::BF16, DType::F32]),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());
}

/// With the guard off, the var with the bad gradient is reported and left as it was; the others
/// take their step.
#[test]
fn without_the_guard_the_other_vars_step() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    opt.set_nonfinite_guard(false);
    let ga = tensor(&[0.1f32; 96], &[8, 12]);
    let gb = tensor(&[f32::NAN; 12], &[12]);
    let (a0, b0) = (values::<f32>(&a), values::<f32>(&b));
    assert!(matches!(
        opt.step_report(&grads(&[(&a, &ga), (&b, &gb)])),
        Err(Error::Tensor { index: 1, .. })
    ));
    assert_ne!(values::<f32>(&a), a0);
    assert_eq!(values::<f32>(&b), b0);
    assert_eq!((opt.step_count(0), opt.step_count(1)), (Some(1), Some(0)));
}

/// candle's `set_learning_rate` cannot fail: an invalid lr changes nothing and fails the next
/// steps until a valid one is set.
#[test]
fn an_invalid_learning_rate_fails_the_next_step() {
    let (a, b) = two_vars();
    let mut opt = named(&a, &b);
    let g = tensor(&[0.1f32; 12], &[12]);
    let lr = opt.learning_rate();
    opt.set_learning_rate(0.0);
    assert_eq!(opt.learning_rate(), lr);
    let before = values::<f32>(&b);
    for _ in 0..2 {
        match opt.step_report(&grads(&[(&b, &g)])) {
            Err(Error::Optimizer(OptimizerError::Config(e))) => {
                assert_eq!(e, came::Error::InvalidLearningRate(0.0));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(values::<f32>(&b), before);
    opt.set_learning_rate(1e-3);
    assert_eq!(opt.learning_rate(), 1e-3);
    opt.step(&grads(&[(&b, &g)])).unwrap();
    assert_ne!(values::<f32>(&b), before);
    assert!(matches!(
        opt.try_set_learning_rate(f64::NAN),
        Err(Error::Optimizer(OptimizerError::Config(
            came::Error::InvalidLearningRate(_)
        )))
    ));
    assert_eq!(opt.learning_rate(), 1e-3);
    assert!(opt.scale_learning_rate(-1.0).is_err());
    assert!(opt.set_group_lr(came_candle::GroupId(3), 1e-3).is_err());
}

/// Every error converts to a candle error with the same message; a candle error stays itself.
#[test]
fn errors_reach_candle_with_their_message() {
    let e = Error::GradShape {
        name: "h.0.mlp.w".into(),
        var: vec![4, 8],
        grad: vec![8, 4],
    };
    let text = e.to_string();
    assert_eq!(
        text,
        "the gradient of var \"h.0.mlp.w\" has dims [8, 4], the var [4, 8]"
    );
    let c: candle::Error = e.into();
    assert_eq!(c.to_string(), text);
    let inner = candle::Error::Msg("inner".into());
    let c: candle::Error = Error::Candle(inner).into();
    assert!(matches!(c, candle::Error::Msg(ref m) if m == "inner"));
    let e = Error::Tensor {
        index: 3,
        name: "w".into(),
        error: came::Error::NonFiniteGradient { index: 9 },
    };
    assert!(std::error::Error::source(&e).is_some());
}
