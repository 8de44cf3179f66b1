//! One tensor, a few CAME steps, any shape (rank 0-4, dims 0-64), any hyperparameters, any
//! values. Never panics; an error changes nothing; with moderate inputs a successful step
//! leaves everything finite, and the first step from a fresh state agrees with an `f64` run.
#![no_main]

use came::{CameState, Error, Float, Shape};
use came_fuzz::{Input, bits, moderate, moderate_state, pieces};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut input) = Input::decode(data) else {
        return;
    };
    let Ok(shape) = Shape::new(&input.dims) else {
        return;
    };
    let n = shape.numel();
    let config = input.header.config.came();
    let moderate_config = input.header.config.moderate();
    let p0 = input.take(n);
    let mut p = p0.clone();
    let mut buf = vec![0.0f32; shape.state_len()];
    if !input.fresh_state() {
        let values = input.take(shape.state_len());
        buf.copy_from_slice(&values);
    }
    let fresh = input.fresh_state();
    let mut state = CameState::from_parts(&mut buf, 0);
    for step in 0..input.steps() {
        let g = input.take(n);
        let before = (bits(&p), pieces(&shape, &state));
        let healthy =
            moderate_config && moderate(&p) && moderate(&g) && moderate_state(&shape, &state);
        match came::step(&config, &shape, &mut p, &g, &mut state) {
            Ok(info) => {
                assert_eq!(info.step, step as u64 + 1);
                if healthy {
                    assert!(p.iter().all(|x| x.is_finite()), "non-finite parameters");
                    let s = pieces(&shape, &state);
                    assert!(
                        s.iter().all(|&b| f32::from_bits(b).is_finite()),
                        "non-finite state"
                    );
                }
            }
            Err(e) => {
                assert_eq!(bits(&p), before.0, "{e}: parameters changed");
                if e != Error::NonFiniteState {
                    assert_eq!(pieces(&shape, &state), before.1, "{e}: state changed");
                }
                assert!(!e.to_string().is_empty());
                return;
            }
        }
        if step == 0 && healthy && fresh {
            compare_with_f64(&config, &shape, &p0, &g, &p);
        }
    }
});

/// The first step from a fresh state in `f64`, against the `f32` result: no cancellation
/// happens in it, so the two agree to a small multiple of `f32`'s precision.
fn compare_with_f64(config: &came::CameConfig, shape: &Shape, p0: &[f32], g: &[f32], p32: &[f32]) {
    let mut p: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
    let mut buf = vec![0.0f64; shape.state_len()];
    let mut state = CameState::new(&mut buf);
    came::step(config, shape, &mut p, &g, &mut state).expect("the f64 step succeeds where f32 did");
    let moved: Vec<f64> = p
        .iter()
        .zip(p0)
        .map(|(a, &b)| (a - f64::from(b)).abs())
        .collect();
    let most = moved.iter().fold(0.0f64, |a, &b| a.max(b));
    for (i, ((&a, &b), &d)) in p32.iter().zip(&p).zip(&moved).enumerate() {
        let bound = 1e-6 * b.abs() + 1e-3 * (d + 1e-3 * most) + 1e-35;
        assert!(
            (a.as_f64() - b).abs() <= bound,
            "element {i}: f32 {a} vs f64 {b} (moved {d}, bound {bound})"
        );
    }
}
