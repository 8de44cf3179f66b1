//! 16-bit parameters and gradients (`half::bf16`, `half::f16`, state in `f32`): stochastic
//! rounding is unbiased and reproducible (any thread count, across a checkpoint), mixed types
//! agree with their widened counterparts, checkpoints keep the 16-bit dtype. The reference's own
//! 16-bit trajectories are replayed in `golden.rs`.
#![cfg(feature = "std")]

use crate::support;

use came::optim::TensorId;
use came::{
    Came, CameConfig, CameState, CheckpointError, Element, Optimizer, Pool, Rounding, Shape,
    TensorStep,
};
use half::{bf16, f16};
use support::reference::Rng;

fn widen<P: Element<Compute = f32>>(v: &[P]) -> Vec<f32> {
    v.iter().map(|x| x.to_compute()).collect()
}

fn narrow<P: Element<Compute = f32>>(v: &[f64]) -> Vec<P> {
    v.iter().map(|&x| P::from_compute(x as f32)).collect()
}

fn bits<P: Element<Compute = f32>>(v: &[P]) -> Vec<u32> {
    widen(v).iter().map(|x| x.to_bits()).collect()
}

/// Three steps of a 16-bit tensor, serially or on `pool`; returns the parameters and state.
fn run<P: Element<Compute = f32>>(
    pool: Option<&Pool>,
    dims: &[usize],
    config: &CameConfig,
) -> (Vec<P>, Vec<f32>) {
    let shape = Shape::new(dims).unwrap();
    let n = shape.numel();
    let mut rng = Rng(n as u64 + 7);
    let mut p: Vec<P> = narrow(&rng.vec(n, 1.0));
    let mut buf = vec![0.0f32; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    for _ in 0..3 {
        let g: Vec<P> = narrow(&rng.vec(n, 0.1));
        match pool {
            Some(pool) => pool.step(config, &shape, &mut p, &g, &mut state).unwrap(),
            None => came::step(config, &shape, &mut p, &g, &mut state).unwrap(),
        };
    }
    (p, buf)
}

#[test]
fn sixteen_bit_steps_are_bit_identical_for_any_thread_count() {
    let pools: Vec<Pool> = [1, 2, 3].map(|t| Pool::new(t).unwrap()).into();
    let shapes: [&[usize]; 5] = [
        &[1000, 77],
        &[301, 3001],
        &[300, 100, 3, 3],
        &[300_003],
        &[7, 5],
    ];
    let configs = [
        CameConfig::new(1e-3).with_weight_decay(0.1),
        CameConfig::new(1e-3)
            .with_clip_threshold(0.01)
            .with_rounding(Rounding::Stochastic { seed: 11 }),
    ];
    for dims in shapes {
        for config in &configs {
            let (p0, s0) = run::<bf16>(None, dims, config);
            let (h0, _) = run::<f16>(None, dims, config);
            for pool in &pools {
                let (p, s) = run::<bf16>(Some(pool), dims, config);
                let t = pool.threads();
                assert_eq!(bits(&p), bits(&p0), "{dims:?} bf16 on {t} threads");
                let same = s.iter().zip(&s0).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dims:?} state on {t} threads");
                let (h, _) = run::<f16>(Some(pool), dims, config);
                assert_eq!(bits(&h), bits(&h0), "{dims:?} f16 on {t} threads");
            }
        }
    }
}

/// An update of a tenth of a bf16 ulp: rounding to nearest loses it on every element, and
/// stochastic rounding keeps it on average. All 100,000 elements get the same f32 update
/// (constant gradient), so the mean of their roundings estimates the exact value; one rounding
/// has standard deviation `gap sqrt(q (1 - q))` (`q`: the update in units of the gap), and the
/// mean of `n` independent ones `1/sqrt(n)` of that: the bound is six of those.
#[test]
fn stochastic_rounding_is_unbiased() {
    let dims = [400, 250];
    let shape = Shape::new(&dims).unwrap();
    let n = shape.numel();
    // the first update is about lr (the clipped Adafactor update of a constant gradient)
    let lr = 2e-5;
    let exact = {
        let mut p = vec![1.0f32; n];
        let g = vec![0.5f32; n];
        let mut buf = vec![0.0f32; shape.state_len()];
        came::step(
            &CameConfig::new(lr),
            &shape,
            &mut p,
            &g,
            &mut CameState::new(&mut buf),
        )
        .unwrap();
        assert!(p.iter().all(|&x| x == p[0]), "a uniform update");
        f64::from(p[0])
    };
    let gap =
        f64::from(bf16::from_f32(1.0).to_f32() - bf16::from_bits(bf16::ONE.to_bits() - 1).to_f32());
    let q = (1.0 - exact) / gap;
    assert!(q > 0.01 && q < 0.45, "the update is {q} of a gap");
    let step = |rounding| {
        let mut p = vec![bf16::ONE; n];
        let g = vec![bf16::from_f32(0.5); n];
        let mut buf = vec![0.0f32; shape.state_len()];
        let config = CameConfig::new(lr).with_rounding(rounding);
        came::step(&config, &shape, &mut p, &g, &mut CameState::new(&mut buf)).unwrap();
        p
    };
    assert!(
        step(Rounding::Nearest).iter().all(|&x| x == bf16::ONE),
        "nearest loses it"
    );
    let p = step(Rounding::Stochastic { seed: 3 });
    let below = bf16::from_bits(bf16::ONE.to_bits() - 1);
    assert!(
        p.iter().all(|&x| x == bf16::ONE || x == below),
        "only the two neighbours"
    );
    let mean = p.iter().map(|x| x.to_f64()).sum::<f64>() / n as f64;
    let sigma = gap * (q * (1.0 - q)).sqrt() / (n as f64).sqrt();
    assert!(
        (mean - exact).abs() <= 6.0 * sigma,
        "mean {mean} exact {exact}: {} sigma",
        (mean - exact).abs() / sigma
    );
    // another seed draws other bits
    assert_ne!(p, step(Rounding::Stochastic { seed: 4 }));
}

fn owned(rounding: Rounding) -> Came<bf16> {
    let mut opt = Came::<bf16>::new(CameConfig::new(3e-3).with_rounding(rounding)).unwrap();
    opt.register("w", &[64, 96]).unwrap();
    opt.register("b", &[96]).unwrap();
    opt
}

fn grads(rng: &mut Rng) -> (Vec<bf16>, Vec<bf16>) {
    (narrow(&rng.vec(64 * 96, 0.2)), narrow(&rng.vec(96, 0.2)))
}

#[test]
fn stochastic_rounding_resumes_bit_identically_from_a_checkpoint() {
    let rounding = Rounding::Stochastic { seed: 99 };
    let mut rng = Rng(5);
    let all: Vec<_> = (0..4).map(|_| grads(&mut rng)).collect();
    let start = |rng: &mut Rng| -> (Vec<bf16>, Vec<bf16>) {
        (narrow(&rng.vec(64 * 96, 1.0)), narrow(&rng.vec(96, 1.0)))
    };
    let (mut w, mut b) = start(&mut Rng(1));
    let mut straight = owned(rounding);
    for (gw, gb) in &all {
        straight.step(&mut [(&mut w, gw), (&mut b, gb)]).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("came-lowp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("half.safetensors");
    let (mut w2, mut b2) = start(&mut Rng(1));
    let mut first = owned(rounding);
    for (gw, gb) in &all[..2] {
        first.step(&mut [(&mut w2, gw), (&mut b2, gb)]).unwrap();
    }
    first.save_with_params(&path, &[&w2, &b2]).unwrap();
    let mut resumed = owned(rounding);
    let (mut w3, mut b3) = (vec![bf16::ZERO; w2.len()], vec![bf16::ZERO; b2.len()]);
    resumed
        .load_with_params(&path, &mut [&mut w3, &mut b3])
        .unwrap();
    assert_eq!((bits(&w3), bits(&b3)), (bits(&w2), bits(&b2)));
    for (gw, gb) in &all[2..] {
        resumed.step(&mut [(&mut w3, gw), (&mut b3, gb)]).unwrap();
    }
    assert_eq!((bits(&w3), bits(&b3)), (bits(&w), bits(&b)));
    // the parameters are stored as BF16 in the file, the state as F32
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("param.0").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    assert_eq!(
        file.tensor("state.0.exp_avg").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    // bf16 parameters widen exactly into an f32 optimizer; f32 ones do not fit a bf16 one
    let mut wide = Came::<f32>::new(CameConfig::new(3e-3)).unwrap();
    wide.register("w", &[64, 96]).unwrap();
    wide.register("b", &[96]).unwrap();
    let (mut wf, mut bf) = (vec![0.0f32; w2.len()], vec![0.0f32; b2.len()]);
    wide.load_with_params(&path, &mut [&mut wf, &mut bf])
        .unwrap();
    assert_eq!((wf, bf), (widen(&w2), widen(&b2)));
    let f32_file = dir.join("wide.safetensors");
    wide.save_with_params(&f32_file, &[&widen(&w2), &widen(&b2)])
        .unwrap();
    let err = owned(rounding)
        .load_with_params(&f32_file, &mut [&mut w3, &mut b3])
        .unwrap_err();
    let CheckpointError::File { error, .. } = err else {
        panic!("{err}")
    };
    assert!(
        matches!(&*error, CheckpointError::WrongDtype { key, expected: "BF16", found } if key == "param.0" && found == "F32"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// f32 master weights with bf16 gradients step exactly as with the gradients widened to f32.
#[test]
fn sixteen_bit_gradients_into_f32_weights_equal_the_widened_gradients() {
    let mut rng = Rng(9);
    let g: Vec<bf16> = narrow(&rng.vec(64 * 96, 0.3));
    let gb: Vec<bf16> = narrow(&rng.vec(96, 0.3));
    let mut mixed = Came::<f32, bf16>::new(CameConfig::new(1e-3)).unwrap();
    let mut plain = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    mixed.register("w", &[64, 96]).unwrap();
    mixed.register("b", &[96]).unwrap();
    plain.register("w", &[64, 96]).unwrap();
    plain.register("b", &[96]).unwrap();
    let (mut w1, mut b1) = (vec![0.5f32; 64 * 96], vec![0.1f32; 96]);
    let (mut w2, mut b2) = (w1.clone(), b1.clone());
    for _ in 0..3 {
        mixed.step(&mut [(&mut w1, &g), (&mut b1, &gb)]).unwrap();
        plain
            .step(&mut [(&mut w2, &widen(&g)), (&mut b2, &widen(&gb))])
            .unwrap();
    }
    assert_eq!((bits(&w1), bits(&b1)), (bits(&w2), bits(&b2)));
    let same_state = |i| mixed.state(TensorId(i)).unwrap() == plain.state(TensorId(i)).unwrap();
    assert!(same_state(0) && same_state(1));
}

/// Each tensor of a multi-tensor step draws its own random bits (its position in the slice).
#[test]
fn tensors_of_one_step_draw_different_bits() {
    let shape = Shape::new(&[32, 32]).unwrap();
    let config = CameConfig::new(1e-5).with_rounding(Rounding::Stochastic { seed: 1 });
    let (mut s1, mut s2) = (
        vec![0.0f32; shape.state_len()],
        vec![0.0f32; shape.state_len()],
    );
    let (mut st1, mut st2) = (CameState::new(&mut s1), CameState::new(&mut s2));
    let (mut p1, mut p2) = (vec![bf16::ONE; 1024], vec![bf16::ONE; 1024]);
    let g = vec![bf16::from_f32(0.5); 1024];
    let mut tensors = [
        TensorStep {
            shape,
            param: &mut p1,
            grad: &g,
            state: &mut st1,
        },
        TensorStep {
            shape,
            param: &mut p2,
            grad: &g,
            state: &mut st2,
        },
    ];
    came::step_all(&config, &mut tensors).unwrap();
    assert_ne!(p1, p2);
}

/// An f16 parameter taken beyond 65504 holds an infinity, as the reference writes it, and the
/// step says so (found by fuzzing: it returned `Ok`).
#[test]
fn f16_parameters_that_overflow_are_reported() {
    let shape = Shape::new(&[2, 2]).unwrap();
    let mut p = [65504.0f32, 65504.0, 1.0, 1.0].map(f16::from_f32);
    let g = [-1.0f32, -0.001, 1.0, 0.5].map(f16::from_f32);
    let mut buf = vec![0.0f32; shape.state_len()];
    let err = came::step(
        &CameConfig::new(2.0),
        &shape,
        &mut p,
        &g,
        &mut CameState::new(&mut buf),
    );
    assert_eq!(err, Err(came::Error::ParameterOverflow { index: 0 }));
    assert_eq!(p[0].to_f32(), f32::INFINITY);
    // bf16 holds the same step: its range is f32's
    let mut p = [65504.0f32, 65504.0, 1.0, 1.0].map(bf16::from_f32);
    let g = g.map(|x| bf16::from_f32(x.to_f32()));
    let mut buf = vec![0.0f32; shape.state_len()];
    came::step(
        &CameConfig::new(2.0),
        &shape,
        &mut p,
        &g,
        &mut CameState::new(&mut buf),
    )
    .unwrap();
    assert!(p.iter().all(|x| x.to_f32().is_finite()));
}

/// Parameters that overflow far into a large matrix (past the first rows the step checks
/// together, on any thread count, with the momentum in full precision or in 8 bits): the step
/// reports the first of them and leaves its infinity in place.
#[test]
fn overflows_deep_in_large_matrices_are_reported_with_their_index() {
    let (rows, cols) = (96, 512);
    let (first, second) = (70 * cols + 300, 90 * cols + 5);
    let pools: Vec<Pool> = [2, 3].map(|t| Pool::new(t).unwrap()).into();
    // one matrix, and a batch of two (the same flat indices)
    let shapes = [&[rows, cols][..], &[2, rows / 2, cols]];
    let cases = shapes
        .iter()
        .flat_map(|s| [(s, came::Momentum::Full), (s, came::Momentum::INT8)]);
    for (dims, momentum) in cases {
        let shape = Shape::new(dims).unwrap();
        let shape = shape.with_momentum(momentum).unwrap();
        for pool in [None].into_iter().chain(pools.iter().map(Some)) {
            let mut p = vec![f16::ONE; rows * cols];
            let mut g = vec![f16::from_f32(0.01); rows * cols];
            for at in [first, second] {
                p[at] = f16::MAX;
                g[at] = f16::from_f32(-1.0);
            }
            let mut buf = vec![0.0f32; shape.state_len()];
            let mut state = CameState::new(&mut buf);
            let config = CameConfig::new(1000.0);
            let result = match pool {
                Some(pool) => pool.step(&config, &shape, &mut p, &g, &mut state),
                None => came::step(&config, &shape, &mut p, &g, &mut state),
            };
            let threads = pool.map_or(1, Pool::threads);
            let what = format!("{dims:?}, {momentum:?} on {threads} threads");
            assert_eq!(
                result,
                Err(came::Error::ParameterOverflow { index: first }),
                "{what}"
            );
            assert_eq!(p[first].to_f32(), f32::INFINITY, "{what}");
            assert_eq!(p[second].to_f32(), f32::INFINITY, "{what}");
            assert!(p[first + 1].to_f32().is_finite(), "{what}");
        }
    }
}
