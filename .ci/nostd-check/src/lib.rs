//! A firmware-shaped user of `came`: fixed-size static buffers, no allocator, no `std`.

#![no_std]

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Shape};

const DIMS: [usize; 2] = [8, 4];
const N: usize = 32;

/// Trains a tiny layer towards zero for `steps` steps with CAME and AdamW; returns the sum of
/// the parameters, or NaN if a step failed.
pub fn train(steps: u32) -> f32 {
    let Ok(shape) = Shape::new(&DIMS) else {
        return f32::NAN;
    };
    let config = CameConfig::new(1e-2);
    let mut weights = [0.5f32; N];
    let mut buf = [0.0f32; came::state_len(&DIMS)];
    let mut state = CameState::new(&mut buf);
    let mut bias = [0.25f32; 4];
    let mut adam_buf = [0.0f32; adamw::state_len(&[4])];
    let mut adam = AdamWState::new(&mut adam_buf);
    for _ in 0..steps {
        let grad = weights;
        if came::step(&config, &shape, &mut weights, &grad, &mut state).is_err() {
            return f32::NAN;
        }
        let grad = bias;
        if adamw::step(&AdamWConfig::default(), &mut bias, &grad, &mut adam).is_err() {
            return f32::NAN;
        }
    }
    weights.iter().chain(&bias).sum()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
