//! The adapter's step is the core crate's step, bit for bit, on candle's own buffers.

use crate::common;

use came::{CameConfig, CameState, Element, Optimizer as _, Rounding, Shape, TensorStep};
use came_candle::{Came, GroupId, ParamGroup, ParamsCame};
use candle::{DType, Device, Storage, Tensor, Var, WithDType};
use candle_nn::Optimizer as _;
use common::{Rng, bits, grads, tensor, values, var};
use half::{bf16, f16};

/// 1-D, 2-D and 4-D vars; the 2-D and 4-D ones are factored (the 4-D one a batch of six
/// matrices), the 1-D one is a vector; the second matrix is wide enough for the SIMD sweeps.
const SHAPES: [&[usize]; 4] = [&[37], &[24, 40], &[2, 3, 16, 20], &[70, 130]];

const STEPS: usize = 6;

fn params() -> ParamsCame {
    ParamsCame {
        lr: 1e-2,
        weight_decay: 0.05,
        ..Default::default()
    }
}

/// Steps vars of type `T` with the adapter and the same values with `came::step`, comparing
/// every element's bits after every step.
fn matches_core<T: WithDType + Element>() {
    let mut rng = Rng::new(7);
    let config = params().config();
    let mut reference: Vec<(Vec<T>, Vec<T::Compute>, Shape)> = Vec::new();
    let mut vars = Vec::new();
    for (i, dims) in SHAPES.iter().enumerate() {
        let n: usize = dims.iter().product();
        let init = rng.values::<T>(n, 0.5);
        vars.push((format!("t{i}"), var(&init, dims)));
        let state = vec![T::Compute::default(); came::state_len(dims)];
        reference.push((init, state, Shape::new(dims).unwrap()));
    }
    let mut opt = Came::from_groups([ParamGroup::named(vars.clone(), params())]).unwrap();
    for step in 0..STEPS {
        let gs: Vec<Vec<T>> = SHAPES
            .iter()
            .map(|d| rng.values::<T>(d.iter().product(), 0.1 * (step + 1) as f64))
            .collect();
        let tensors: Vec<Tensor> = gs.iter().zip(SHAPES).map(|(g, d)| tensor(g, d)).collect();
        let pairs: Vec<(&Var, &Tensor)> = vars.iter().map(|(_, v)| v).zip(&tensors).collect();
        let report = opt.step_report(&grads(&pairs)).unwrap();
        assert_eq!(report.stepped, SHAPES.len());
        for ((param, state, shape), g) in reference.iter_mut().zip(&gs) {
            let mut state = CameState::from_parts(state, step as u64);
            came::step(&config, shape, param, g, &mut state).unwrap();
        }
        for ((name, v), (param, _, _)) in vars.iter().zip(&reference) {
            assert_eq!(
                bits(&values::<T>(v)),
                bits(param),
                "{} var {name} after step {}",
                <T as Element>::DTYPE,
                step + 1
            );
        }
    }
    for i in 0..SHAPES.len() {
        assert_eq!(opt.step_count(i), Some(STEPS as u64));
    }
}

#[test]
fn f32_vars_match_the_core_step_bit_for_bit() {
    matches_core::<f32>();
}

#[test]
fn f64_vars_match_the_core_step_bit_for_bit() {
    matches_core::<f64>();
}

#[test]
fn bf16_vars_match_the_core_step_bit_for_bit() {
    matches_core::<bf16>();
}

#[test]
fn f16_vars_match_the_core_step_bit_for_bit() {
    matches_core::<f16>();
}

#[test]
fn vars_move_and_the_loss_falls() {
    let mut rng = Rng::new(3);
    let w = var(&rng.values::<f32>(24 * 40, 0.5), &[24, 40]);
    let before = values::<f32>(&w);
    let mut opt = Came::new(vec![w.clone()], params()).unwrap();
    let loss = |w: &Var| w.sqr().unwrap().sum_all().unwrap();
    let first = loss(&w).to_scalar::<f32>().unwrap();
    for _ in 0..20 {
        opt.backward_step(&loss(&w)).unwrap();
    }
    let last = loss(&w).to_scalar::<f32>().unwrap();
    assert!(last < 0.8 * first, "{first} -> {last}");
    let after = values::<f32>(&w);
    // every element moved but the zeros, whose gradient and decay are zero
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a == b, *a == 0.0, "{a} -> {b}");
    }
}

/// Stochastic rounding draws its bits from the tensor's registration position: the adapter's
/// step is `came::step_all` over the vars in registration order.
#[test]
fn stochastic_rounding_matches_step_all() {
    let mut rng = Rng::new(11);
    let p = ParamsCame {
        rounding: Rounding::Stochastic { seed: 42 },
        ..params()
    };
    let dims: [&[usize]; 2] = [&[24, 40], &[40]];
    let inits: Vec<Vec<bf16>> = dims
        .iter()
        .map(|d| rng.values(d.iter().product(), 0.5))
        .collect();
    let vars: Vec<Var> = inits.iter().zip(dims).map(|(v, d)| var(v, d)).collect();
    let mut opt = Came::new(vars.clone(), p).unwrap();
    let mut params_ref = inits.clone();
    let mut bufs: Vec<Vec<f32>> = dims.iter().map(|d| vec![0.0; came::state_len(d)]).collect();
    for step in 0..4u64 {
        let gs: Vec<Vec<bf16>> = dims
            .iter()
            .map(|d| rng.values(d.iter().product(), 0.05))
            .collect();
        let ts: Vec<Tensor> = gs.iter().zip(dims).map(|(g, d)| tensor(g, d)).collect();
        opt.step(&grads(&[(&vars[0], &ts[0]), (&vars[1], &ts[1])]))
            .unwrap();
        let mut states: Vec<CameState<'_, f32>> = bufs
            .iter_mut()
            .map(|b| CameState::from_parts(b, step))
            .collect();
        let mut tensors: Vec<TensorStep<'_, '_, bf16>> = Vec::new();
        for (((p, g), s), d) in params_ref.iter_mut().zip(&gs).zip(&mut states).zip(dims) {
            tensors.push(TensorStep {
                shape: Shape::new(d).unwrap(),
                param: p,
                grad: g,
                state: s,
            });
        }
        came::step_all(&p.config(), &mut tensors).unwrap();
        for (v, r) in vars.iter().zip(&params_ref) {
            assert_eq!(bits(&values::<bf16>(v)), bits(r), "step {}", step + 1);
        }
    }
}

/// Two groups (decay for matrices, none for vectors) step as the core optimizer with the same
/// groups does; a learning-rate change reaches every group.
#[test]
fn groups_match_the_core_optimizer() {
    let mut rng = Rng::new(5);
    let (wv, bv) = (rng.values::<f32>(32 * 48, 0.5), rng.values::<f32>(48, 0.5));
    let (w, b) = (var(&wv, &[32, 48]), var(&bv, &[48]));
    let decay = ParamsCame {
        weight_decay: 0.1,
        ..params()
    };
    let no_decay = ParamsCame {
        weight_decay: 0.0,
        ..params()
    };
    let mut opt = Came::from_groups([
        ParamGroup::named([("w", w.clone())], decay),
        ParamGroup::named([("b", b.clone())], no_decay),
    ])
    .unwrap();
    assert_eq!(opt.groups().len(), 2);
    assert_eq!(opt.groups()[1].weight_decay, 0.0);

    let mut core = came::Came::<f32>::new(decay.config()).unwrap();
    let g1 = core.add_group(no_decay.config()).unwrap();
    core.register("w", &[32, 48]).unwrap();
    core.register_in(g1, "b", &[48]).unwrap();
    let (mut cw, mut cb) = (wv, bv);
    for step in 0..5 {
        let lr = 1e-2 * (1.0 - step as f64 / 10.0);
        opt.set_learning_rate(lr);
        core.set_learning_rate(lr).unwrap();
        assert_eq!(opt.learning_rate(), lr);
        let (gw, gb) = (rng.values::<f32>(32 * 48, 0.2), rng.values::<f32>(48, 0.2));
        let (tw, tb) = (tensor(&gw, &[32, 48]), tensor(&gb, &[48]));
        opt.step(&grads(&[(&w, &tw), (&b, &tb)])).unwrap();
        core.step(&mut [(&mut cw, &gw), (&mut cb, &gb)]).unwrap();
        assert_eq!(bits(&values::<f32>(&w)), bits(&cw));
        assert_eq!(bits(&values::<f32>(&b)), bits(&cb));
    }
    opt.set_group_lr(GroupId(1), 5e-3).unwrap();
    assert_eq!(opt.groups()[1].lr, 5e-3);
    assert_eq!(opt.learning_rate(), opt.groups()[0].lr);
    opt.scale_learning_rate(0.5).unwrap();
    assert_eq!(opt.groups()[1].lr, 2.5e-3);
}

/// A var without a gradient keeps its value, state and step count (the frozen-tensor rule),
/// exactly as the core's `step_some` leaves out a `None` gradient.
#[test]
fn vars_without_a_gradient_are_left_out() {
    let mut rng = Rng::new(9);
    let (av, bv) = (rng.values::<f32>(16 * 24, 0.5), rng.values::<f32>(24, 0.5));
    let (a, b) = (var(&av, &[16, 24]), var(&bv, &[24]));
    let mut opt = Came::from_groups([ParamGroup::named(
        [("a", a.clone()), ("b", b.clone())],
        params(),
    )])
    .unwrap();
    let mut core = came::Came::<f32>::new(params().config()).unwrap();
    core.register("a", &[16, 24]).unwrap();
    core.register("b", &[24]).unwrap();
    let (mut ca, mut cb) = (av, bv.clone());
    for step in 0..4 {
        let ga = rng.values::<f32>(16 * 24, 0.2);
        let gb = rng.values::<f32>(24, 0.2);
        let ta = tensor(&ga, &[16, 24]);
        let tb = tensor(&gb, &[24]);
        // b is frozen on the first two steps
        let frozen = step < 2;
        let store = if frozen {
            grads(&[(&a, &ta)])
        } else {
            grads(&[(&a, &ta), (&b, &tb)])
        };
        let report = opt.step_report(&store).unwrap();
        assert_eq!(report.stepped, if frozen { 1 } else { 2 });
        let gb_opt = if frozen { None } else { Some(&gb[..]) };
        core.step_some(&mut [(&mut ca, Some(&ga[..])), (&mut cb, gb_opt)])
            .unwrap();
        assert_eq!(bits(&values::<f32>(&a)), bits(&ca));
        assert_eq!(bits(&values::<f32>(&b)), bits(&cb));
        if frozen {
            assert_eq!(values::<f32>(&b), bv);
        }
    }
    assert_eq!(opt.step_count(0), Some(4));
    assert_eq!(opt.step_count(1), Some(2));
    // no gradient at all: nothing to do
    let report = opt.step_report(&grads(&[])).unwrap();
    assert_eq!(report.stepped, 0);
    assert_eq!(opt.step_count(0), Some(4));
}

/// Integer vars are left out when registered, as candle's optimizers leave them out.
#[test]
fn integer_vars_are_left_out() {
    let w = Var::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
    let ids = Var::zeros(5, DType::U32, &Device::Cpu).unwrap();
    let opt = Came::new(vec![ids, w], params()).unwrap();
    assert_eq!(opt.len(), 1);
    let (name, _) = opt.vars().next().unwrap();
    assert_eq!(name, "var.0");
}

/// The step writes into the var's own buffer: its address, the var's identity and the
/// tensors sharing it all see the new values.
#[test]
fn the_step_writes_in_place() {
    let mut rng = Rng::new(1);
    let w = var(&rng.values::<f32>(64 * 96, 0.5), &[64, 96]);
    let address = |v: &Var| {
        let (storage, _) = v.storage_and_layout();
        match &*storage {
            Storage::Cpu(candle::CpuStorage::F32(data)) => data.as_ptr() as usize,
            _ => unreachable!(),
        }
    };
    let before = address(&w);
    let id = w.id();
    let view = w.as_tensor().clone(); // shares the buffer
    let mut opt = Came::new(vec![w.clone()], params()).unwrap();
    let g = tensor(&rng.values::<f32>(64 * 96, 0.3), &[64, 96]);
    opt.step(&grads(&[(&w, &g)])).unwrap();
    assert_eq!(address(&w), before);
    assert_eq!(w.id(), id);
    assert_eq!(
        bits(&values::<f32>(&w)),
        bits(&view.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    );
}

/// Threads change nothing in the results.
#[test]
fn threads_give_the_same_bits() {
    let run = |threads: Option<usize>| {
        let mut rng = Rng::new(21);
        let w = var(&rng.values::<f32>(256 * 320, 0.5), &[256, 320]);
        let b = var(&rng.values::<bf16>(320, 0.5), &[320]);
        let mut opt = Came::new(vec![w.clone(), b.clone()], params()).unwrap();
        if let Some(t) = threads {
            opt.set_threads(t).unwrap();
        }
        for _ in 0..3 {
            let gw = tensor(&rng.values::<f32>(256 * 320, 0.2), &[256, 320]);
            let gb = tensor(&rng.values::<bf16>(320, 0.2), &[320]);
            opt.step(&grads(&[(&w, &gw), (&b, &gb)])).unwrap();
        }
        (bits(&values::<f32>(&w)), bits(&values::<bf16>(&b)))
    };
    assert_eq!(run(None), run(Some(3)));
}

/// Vars of several dtypes in one optimizer: each steps as its own core optimizer would.
#[test]
fn mixed_dtypes_step_each_as_the_core() {
    let mut rng = Rng::new(13);
    let wv = rng.values::<bf16>(32 * 40, 0.5);
    let nv = rng.values::<f32>(40, 0.5);
    let (w, n) = (var(&wv, &[32, 40]), var(&nv, &[40]));
    let mut opt = Came::new(vec![w.clone(), n.clone()], params()).unwrap();
    let mut cw = came::Came::<bf16>::new(params().config()).unwrap();
    cw.register("w", &[32, 40]).unwrap();
    let mut cn = came::Came::<f32>::new(params().config()).unwrap();
    cn.register("n", &[40]).unwrap();
    let (mut rw, mut rn) = (wv, nv);
    for _ in 0..3 {
        let gw = rng.values::<bf16>(32 * 40, 0.2);
        let gn = rng.values::<f32>(40, 0.2);
        let (tw, tn) = (tensor(&gw, &[32, 40]), tensor(&gn, &[40]));
        let report = opt.step_report(&grads(&[(&w, &tw), (&n, &tn)])).unwrap();
        assert_eq!(report.stepped, 2);
        cw.step(&mut [(&mut rw, &gw)]).unwrap();
        cn.step(&mut [(&mut rn, &gn)]).unwrap();
        assert_eq!(bits(&values::<bf16>(&w)), bits(&rw));
        assert_eq!(bits(&values::<f32>(&n)), bits(&rn));
    }
    assert_eq!(opt.state_bytes(), cw.state_bytes() + cn.state_bytes());
}

/// A strided gradient (a transpose) is read as the contiguous one it equals.
#[test]
fn a_strided_gradient_steps_like_its_contiguous_copy() {
    let mut rng = Rng::new(17);
    let init = rng.values::<f32>(12 * 20, 0.5);
    let (a, b) = (var(&init, &[12, 20]), var(&init, &[12, 20]));
    let g = tensor(&rng.values::<f32>(20 * 12, 0.2), &[20, 12]);
    let strided = g.t().unwrap();
    assert!(!strided.is_contiguous());
    let mut oa = Came::new(vec![a.clone()], params()).unwrap();
    let mut ob = Came::new(vec![b.clone()], params()).unwrap();
    oa.step(&grads(&[(&a, &strided)])).unwrap();
    ob.step(&grads(&[(&b, &strided.contiguous().unwrap())]))
        .unwrap();
    assert_eq!(bits(&values::<f32>(&a)), bits(&values::<f32>(&b)));
    assert_ne!(values::<f32>(&a), init);
}

/// `state_bytes` is the core's: one momentum plus row and column statistics per matrix, far
/// under AdamW's two moments.
#[test]
fn state_bytes_are_the_cores() {
    let w = Var::zeros((512, 256), DType::F32, &Device::Cpu).unwrap();
    let b = Var::zeros(256, DType::F32, &Device::Cpu).unwrap();
    let opt = Came::new(vec![w, b], params()).unwrap();
    let mut core = came::Came::<f32>::new(params().config()).unwrap();
    core.register("w", &[512, 256]).unwrap();
    core.register("b", &[256]).unwrap();
    assert_eq!(opt.state_bytes(), core.state_bytes());
    let adamw = 2 * 4 * (512 * 256 + 256);
    assert!(
        opt.state_bytes() < adamw * 6 / 10,
        "{} of {adamw}",
        opt.state_bytes()
    );
}

/// The params struct holds the reference defaults.
#[test]
fn params_default_to_the_reference() {
    let p = ParamsCame::default();
    assert_eq!((p.beta1, p.beta2, p.beta3), (0.9, 0.999, 0.9999));
    assert_eq!((p.eps1, p.eps2), (1e-30, 1e-16));
    assert_eq!(p.clip_threshold, 1.0);
    assert_eq!(p.weight_decay, 0.0);
    assert!(p.confidence);
    assert_eq!(p.instability, came::Instability::Reference);
    assert_eq!(p.rounding, Rounding::Nearest);
    assert_eq!(p.momentum, came::Momentum::Full);
    assert_eq!(p.config(), CameConfig::default());
    let core = CameConfig::new(3e-3)
        .with_confidence(false)
        .with_instability(came::Instability::BiasCorrected)
        .with_rounding(Rounding::Stochastic { seed: 5 });
    assert_eq!(ParamsCame::from(core).config(), core);
}

/// Every var of a step is held at once (one level of candle's in-place ops per var): a model
/// of a thousand vars steps on a test thread's stack, as the core steps it.
#[test]
fn a_thousand_vars_step_together() {
    let mut rng = Rng::new(31);
    let dims: &[usize] = &[3, 4];
    let inits: Vec<Vec<f32>> = (0..1000).map(|_| rng.values(12, 0.5)).collect();
    let vars: Vec<Var> = inits.iter().map(|v| var(v, dims)).collect();
    let mut opt = Came::new(vars.clone(), params()).unwrap();
    let gs: Vec<Vec<f32>> = (0..1000).map(|_| rng.values(12, 0.1)).collect();
    let ts: Vec<Tensor> = gs.iter().map(|g| tensor(g, dims)).collect();
    let pairs: Vec<(&Var, &Tensor)> = vars.iter().zip(&ts).collect();
    assert_eq!(opt.step_report(&grads(&pairs)).unwrap().stepped, 1000);
    let mut core = came::Came::<f32>::new(params().config()).unwrap();
    for i in 0..1000 {
        core.register(&format!("var.{i}"), dims).unwrap();
    }
    let mut refs = inits;
    let mut step: Vec<(&mut [f32], &[f32])> = refs
        .iter_mut()
        .zip(&gs)
        .map(|(p, g)| (&mut p[..], &g[..]))
        .collect();
    core.step(&mut step).unwrap();
    for (v, r) in vars.iter().zip(&refs) {
        assert_eq!(bits(&values::<f32>(v)), bits(r));
    }
}
