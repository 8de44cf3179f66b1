//! On-device fine-tuning the way firmware would do it: every buffer a fixed-size array sized at
//! compile time (`came::state_len` is a `const fn`), the multi-tensor step over borrowed
//! slices, and nothing from `std` inside the training loop: no heap, no `Vec`, no threads.
//!
//! The task: calibrate a 4-output linear sensor model `y = W x + b` (`W` is 4 x 8, factored
//! by CAME; `b` is a vector) to readings from a device whose true response differs from the
//! factory weights. Runs on a PC as an ordinary example:
//!
//! ```text
//! cargo run --release --example no_alloc
//! ```
//!
//! `.ci/nostd-check` builds the same pattern as a `#![no_std]` static library (and for
//! `thumbv7em-none-eabihf` where that target is installed).

use came::{CameConfig, CameState, Shape, TensorStep};

const OUT: usize = 4;
const IN: usize = 8;
const W_DIMS: [usize; 2] = [OUT, IN];
const B_DIMS: [usize; 1] = [OUT];
/// Readings per step.
const BATCH: usize = 16;
const STEPS: usize = 400;

/// A tiny linear congruential generator: readings in [-1, 1) without any library.
struct Lcg(u32);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

/// Mean squared error of `(w, b)` on one batch, and its gradient.
fn loss_and_grad(
    w: &[f32; OUT * IN],
    b: &[f32; OUT],
    xs: &[[f32; IN]; BATCH],
    ys: &[[f32; OUT]; BATCH],
    gw: &mut [f32; OUT * IN],
    gb: &mut [f32; OUT],
) -> f32 {
    *gw = [0.0; OUT * IN];
    *gb = [0.0; OUT];
    let mut loss = 0.0;
    let scale = 1.0 / (BATCH * OUT) as f32;
    for (x, y) in xs.iter().zip(ys) {
        for o in 0..OUT {
            let row = &w[o * IN..(o + 1) * IN];
            let pred = b[o] + row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>();
            let err = pred - y[o];
            loss += err * err * scale;
            let d = 2.0 * err * scale;
            gb[o] += d;
            for (g, &xi) in gw[o * IN..(o + 1) * IN].iter_mut().zip(x) {
                *g += d * xi;
            }
        }
    }
    loss
}

/// The fine-tuning loop: only arrays, slices and the crate.
fn fine_tune(
    w: &mut [f32; OUT * IN],
    b: &mut [f32; OUT],
    true_w: &[f32; OUT * IN],
    true_b: &[f32; OUT],
) -> Result<[f32; 2], came::TensorError> {
    let config = CameConfig::new(2e-2);
    let w_shape = Shape::new(&W_DIMS).expect("a 4 x 8 shape fits");
    let b_shape = Shape::new(&B_DIMS).expect("a 4-vector fits");
    let mut w_buf = [0.0f32; came::state_len(&W_DIMS)];
    let mut b_buf = [0.0f32; came::state_len(&B_DIMS)];
    let mut w_state = CameState::new(&mut w_buf);
    let mut b_state = CameState::new(&mut b_buf);
    let (mut gw, mut gb) = ([0.0f32; OUT * IN], [0.0f32; OUT]);
    let mut rng = Lcg(7);
    let mut first_last = [0.0f32; 2];
    for step in 0..STEPS {
        let mut xs = [[0.0f32; IN]; BATCH];
        let mut ys = [[0.0f32; OUT]; BATCH];
        for (x, y) in xs.iter_mut().zip(&mut ys) {
            x.iter_mut().for_each(|v| *v = rng.next());
            for o in 0..OUT {
                let row = &true_w[o * IN..(o + 1) * IN];
                y[o] = true_b[o]
                    + row.iter().zip(&*x).map(|(w, x)| w * x).sum::<f32>()
                    + 0.01 * rng.next();
            }
        }
        let loss = loss_and_grad(w, b, &xs, &ys, &mut gw, &mut gb);
        if step == 0 {
            first_last[0] = loss;
        }
        first_last[1] = loss;
        let mut tensors = [
            TensorStep {
                shape: w_shape,
                param: w,
                grad: &gw,
                state: &mut w_state,
            },
            TensorStep {
                shape: b_shape,
                param: b,
                grad: &gb,
                state: &mut b_state,
            },
        ];
        came::step_all(&config, &mut tensors)?;
    }
    Ok(first_last)
}

fn main() {
    // factory weights, and the device's true response (a drifted copy)
    let mut rng = Lcg(1);
    let mut w = [0.0f32; OUT * IN];
    w.iter_mut().for_each(|v| *v = rng.next());
    let mut b = [0.0f32; OUT];
    let mut true_w = w;
    true_w.iter_mut().for_each(|v| *v += 0.3 * rng.next());
    let true_b = [0.2, -0.1, 0.05, 0.3];
    match fine_tune(&mut w, &mut b, &true_w, &true_b) {
        Ok([first, last]) => {
            let drift: f32 = w
                .iter()
                .zip(&true_w)
                .map(|(a, t)| (a - t) * (a - t))
                .sum::<f32>()
                / (OUT * IN) as f32;
            println!(
                "{STEPS} CAME steps over fixed-size buffers: batch MSE {first:.4} -> {last:.5}; \
                 mean squared weight error {drift:.2e}"
            );
            println!(
                "state: {} f32 for W ({OUT}x{IN}), {} for b; all on the stack",
                came::state_len(&W_DIMS),
                came::state_len(&B_DIMS)
            );
        }
        Err(e) => {
            eprintln!("step failed: {e}");
            std::process::exit(1);
        }
    }
}
