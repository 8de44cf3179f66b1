//! 16-bit storage: parameters in `half::bf16` or `half::f16`, gradients in either or in `f32`,
//! all computed in `f32`. Every value widens to `f32` and rounds back to the same bits;
//! stochastic rounding gives one of the two 16-bit neighbours of its argument (the argument
//! itself where it is representable); a few CAME steps, any shape, hyperparameters and values,
//! rounded to nearest or stochastically, never panic and change nothing on error; a successful
//! step keeps the state an `f32` step of the widened parameters keeps, its parameters are that
//! step's, rounded (to nearest without weight decay, which the reference rounds separately;
//! stochastically, to one of their two neighbours), and it writes no non-finite value over
//! finite parameters and state where that step's value is finite (the 16-bit range is not
//! exceeded silently), nor any from moderate inputs (those `step` checks).
//!
//! An input is the storage types and the rounding ([`Storage`]), then the input of `src/lib.rs`
//! with parameters and gradients in their storage types and the state in `f32`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use came::{CameState, Element, Error, Rounding, Shape};
use came_fuzz::{Input, bits, moderate, moderate_state, pieces};
use half::{bf16, f16};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Storage {
    /// `types % 6`: parameters and gradients in (bf16, bf16), (f16, f16), (bf16, f16),
    /// (f16, bf16), (bf16, f32), (f16, f32)
    types: u8,
    /// the seed of stochastic rounding; `None`: to nearest
    stochastic: Option<u64>,
}

/// The 16-bit storage types: sign and magnitude in 16 bits, computed in `f32`.
trait Half: Element<Compute = f32> {}
impl Half for bf16 {}
impl Half for f16 {}

/// The bits of a 16-bit value.
fn pattern<E: Half>(x: E) -> u16 {
    bytemuck::cast(x)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(storage) = Storage::arbitrary(&mut u) else {
        return;
    };
    let Some(input) = Input::decode(u.take_rest()) else {
        return;
    };
    let rounding = match storage.stochastic {
        Some(seed) => Rounding::Stochastic { seed },
        None => Rounding::Nearest,
    };
    match storage.types % 6 {
        0 => steps::<bf16, bf16>(input, rounding),
        1 => steps::<f16, f16>(input, rounding),
        2 => steps::<bf16, f16>(input, rounding),
        3 => steps::<f16, bf16>(input, rounding),
        4 => steps::<bf16, f32>(input, rounding),
        _ => steps::<f16, f32>(input, rounding),
    }
});

/// The input's steps on parameters in `P` and gradients in `G`, each beside the same step on
/// the parameters widened to `f32`.
fn steps<P: Half, G: Element<Compute = f32>>(mut input: Input, rounding: Rounding) {
    let Ok(shape) = Shape::new(&input.dims) else {
        return;
    };
    let n = shape.numel();
    let config = input.header.config.came().with_rounding(rounding);
    let mut p: Vec<P> = input.take_as(n);
    let mut buf = vec![0.0f32; shape.state_len()];
    if !input.fresh_state() {
        buf.copy_from_slice(&input.take(shape.state_len()));
    }
    let mut state = CameState::from_parts(&mut buf, 0);
    for _ in 0..input.steps() {
        let g: Vec<G> = input.take_as(n);
        check_widening(&p);
        check_widening(&g);
        for x in p
            .iter()
            .map(|x| x.to_compute())
            .chain(g.iter().map(|x| x.to_compute()))
        {
            for random in [0, u32::MAX, x.to_bits()] {
                let rounded = came::round_stochastic::<P>(x, random);
                assert!(
                    is_neighbour(x, rounded),
                    "round_stochastic({x:e}, {random:#x}) = {:#06x}",
                    pattern(rounded)
                );
            }
        }

        let before = (p.clone(), pieces(&shape, &state));
        let mut wide: Vec<f32> = p.iter().map(|x| x.to_compute()).collect();
        let finite = wide.iter().all(|x| x.is_finite())
            && before.1.iter().all(|&b| f32::from_bits(b).is_finite());
        let healthy = input.header.config.moderate()
            && moderate(&wide)
            && moderate(&g.iter().map(|x| x.to_compute()).collect::<Vec<_>>())
            && moderate_state(&shape, &state);
        let mut wide_buf = state.as_slice().to_vec();
        let mut wide_state = CameState::from_parts(&mut wide_buf, state.step_count());
        let wide_result = came::step(&config, &shape, &mut wide, &g, &mut wide_state);
        match came::step(&config, &shape, &mut p, &g, &mut state) {
            Ok(info) => {
                assert_eq!(Ok(info), wide_result, "the f32 step had another outcome");
                assert_eq!(
                    pieces(&shape, &state),
                    pieces(&shape, &wide_state),
                    "the state depends on the parameters' storage type"
                );
                // no non-finite value over finite inputs where the f32 step's is finite, and
                // none at all from moderate inputs
                let expect_finite = |w: f32| healthy || (finite && w.is_finite());
                if let Some(i) =
                    (0..n).find(|&i| expect_finite(wide[i]) && !p[i].to_compute().is_finite())
                {
                    panic!(
                        "non-finite parameter written: element {i} was {:?}, is {:?} (the f32 \
                         step gives {:e}); {config:?}",
                        before.0[i], p[i], wide[i]
                    );
                }
                for (i, (&x, &w)) in p.iter().zip(&wide).enumerate() {
                    let rounded = match rounding {
                        Rounding::Nearest if config.weight_decay == 0.0 => {
                            pattern(x) == pattern(P::from_compute(w))
                        }
                        Rounding::Nearest => true,
                        _ => is_neighbour(w, x),
                    };
                    assert!(
                        rounded,
                        "element {i}: {:#06x}, the f32 step gives {w:e} ({rounding:?})",
                        pattern(x)
                    );
                }
            }
            // found after the step, which the f32 step took too: an f16 beyond its range
            Err(Error::ParameterOverflow { index }) => {
                assert!(wide_result.is_ok(), "the f32 step had another outcome");
                assert!(
                    !p[index].to_compute().is_finite(),
                    "element {index} is finite"
                );
                assert!(
                    (0..index)
                        .all(|i| p[i].to_compute().is_finite()
                            || !before.0[i].to_compute().is_finite()),
                    "an earlier element overflowed first"
                );
                assert_eq!(pieces(&shape, &state), pieces(&shape, &wide_state));
            }
            Err(e) => {
                assert_eq!(Err(e), wide_result, "the f32 step had another outcome");
                assert_eq!(bits(&p), bits(&before.0), "{e}: parameters changed");
                if e != Error::NonFiniteState {
                    assert_eq!(pieces(&shape, &state), before.1, "{e}: state changed");
                }
                return;
            }
        }
    }
}

/// Every value widens to its compute type and rounds back to the same bits (a NaN to a NaN).
fn check_widening<E: Element<Compute = f32>>(values: &[E]) {
    for &x in values {
        let back = E::from_compute(x.to_compute());
        if x.to_compute().is_nan() {
            assert!(
                back.to_compute().is_nan(),
                "{x:?}: a NaN widened and rounded to {back:?}"
            );
        } else {
            assert_eq!(
                bits(&[back]),
                bits(&[x]),
                "{x:?} widened and rounded to {back:?}"
            );
        }
    }
}

/// Whether `rounded` is `x` (where `x` is a value of `E`, a NaN where `x` is one) or one of the
/// two values of `E` around `x` (infinity beyond the largest finite one).
fn is_neighbour<E: Half>(x: f32, rounded: E) -> bool {
    if x.is_nan() {
        return rounded.to_compute().is_nan();
    }
    let nearest = E::from_compute(x);
    let n = pattern(nearest);
    let (down, up) = match nearest.to_compute() {
        y if y == x => (n, n),
        y if y < x => (n, next_up(n)),
        _ => (next_down(n), n),
    };
    let r = pattern(rounded);
    r == down || r == up
}

/// The next 16-bit value toward +infinity (of a value below it).
fn next_up(bits: u16) -> u16 {
    match bits {
        0x8000 => 0x0001,
        b if b & 0x8000 == 0 => b + 1,
        b => b - 1,
    }
}

/// The next 16-bit value toward -infinity (of a value above it).
fn next_down(bits: u16) -> u16 {
    match bits {
        0x0000 => 0x8001,
        b if b & 0x8000 == 0 => b - 1,
        b => b + 1,
    }
}
