//! Instructions per parameter per step of `came::step` on a 64 x 64 weight matrix (the
//! smallest whose momentum the 8-bit rule stores in 8 bits) in each storage, beside AdamW's.

use came::adamw::{AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Momentum, Shape};
use half::bf16;

use crate::clock::Clock;
use crate::lcg::Lcg;

/// Rows and columns of the measured matrix.
pub const N: usize = 64;
const DIMS: [usize; 2] = [N, N];
const NUMEL: usize = N * N;
/// Steps timed per case, after one untimed.
const STEPS: u64 = 8;

const fn shape(momentum: Momentum) -> Shape {
    match Shape::new(&DIMS) {
        Ok(shape) => match shape.with_momentum(momentum) {
            Ok(shape) => shape,
            Err(_) => panic!("64 x 64 takes every momentum format"),
        },
        Err(_) => panic!("64 x 64 is a valid shape"),
    }
}

const FULL: Shape = shape(Momentum::Full);
const BF16: Shape = shape(Momentum::Bf16);
const INT8: Shape = shape(Momentum::INT8);

/// The matrices, gradients and states of every case, in static memory.
pub struct Buffers {
    p32: [f32; NUMEL],
    g32: [f32; NUMEL],
    p16: [bf16; NUMEL],
    g16: [bf16; NUMEL],
    full: [f32; FULL.state_len()],
    bf16: [f32; BF16.state_len()],
    int8: [f32; INT8.state_len()],
    adamw: [f32; came::adamw::state_len(&DIMS)],
}

impl Buffers {
    /// All zeros.
    pub const ZERO: Self = Self {
        p32: [0.0; NUMEL],
        g32: [0.0; NUMEL],
        p16: [bf16::ZERO; NUMEL],
        g16: [bf16::ZERO; NUMEL],
        full: [0.0; FULL.state_len()],
        bf16: [0.0; BF16.state_len()],
        int8: [0.0; INT8.state_len()],
        adamw: [0.0; came::adamw::state_len(&DIMS)],
    };
}

impl Buffers {
    /// The same weights and gradients for every case (bf16: the `f32` ones rounded).
    fn start(&mut self) {
        let mut rng = Lcg(3);
        for (p, g) in self.p32.iter_mut().zip(self.g32.iter_mut()) {
            *p = rng.between(-0.1, 0.1);
            *g = rng.between(-1e-2, 1e-2);
        }
        let wide = self.p32.iter().zip(&self.g32);
        for ((p, g), (p32, g32)) in self.p16.iter_mut().zip(self.g16.iter_mut()).zip(wide) {
            *p = bf16::from_f32(*p32);
            *g = bf16::from_f32(*g32);
        }
    }
}

/// One measured case.
pub struct Case {
    /// What was stepped.
    pub name: &'static str,
    /// Bytes of the optimizer's buffer: the state and the step's workspace.
    pub state_bytes: usize,
    /// Instructions per parameter per step, in hundredths.
    pub centi_instructions: u64,
}

/// Steps each case [`STEPS`] times and counts the instructions.
///
/// # Errors
/// A step's error (none is expected: the gradients are finite).
pub fn run(clock: &Clock, b: &mut Buffers) -> Result<[Case; 4], came::Error> {
    let config = CameConfig::new(1e-3);
    let per_param = |instructions: u64| instructions * 100 / (STEPS * NUMEL as u64);

    b.start();
    let mut state = CameState::new(&mut b.full);
    let f32_case = time(clock, &mut state, |s| {
        came::step(&config, &FULL, &mut b.p32, &b.g32, s)
    })?;

    b.start();
    let mut state = CameState::new(&mut b.bf16);
    let bf16_case = time(clock, &mut state, |s| {
        came::step(&config, &BF16, &mut b.p16, &b.g16, s)
    })?;

    b.start();
    let mut state = CameState::new(&mut b.int8);
    let int8_case = time(clock, &mut state, |s| {
        came::step(&config, &INT8, &mut b.p16, &b.g16, s)
    })?;

    b.start();
    let adamw_config = AdamWConfig::new(1e-3);
    let mut state = AdamWState::new(&mut b.adamw);
    let adamw_case = time(clock, &mut state, |s| {
        came::adamw::step(&adamw_config, &mut b.p32, &b.g32, s)
    })?;

    // the whole buffer a firmware reserves: the state and the step's workspace
    let bytes = |shape: &Shape| shape.state_len() * 4;
    Ok([
        Case {
            name: "CAME, f32 weights, f32 momentum",
            state_bytes: bytes(&FULL),
            centi_instructions: per_param(f32_case),
        },
        Case {
            name: "CAME, bf16 weights, bf16 momentum",
            state_bytes: bytes(&BF16),
            centi_instructions: per_param(bf16_case),
        },
        Case {
            name: "CAME, bf16 weights, 8-bit momentum",
            state_bytes: bytes(&INT8),
            centi_instructions: per_param(int8_case),
        },
        Case {
            name: "AdamW, f32",
            state_bytes: came::adamw::state_len(&DIMS) * 4,
            centi_instructions: per_param(adamw_case),
        },
    ])
}

/// Instructions of [`STEPS`] steps of `step`, after one untimed.
fn time<S, R>(
    clock: &Clock,
    state: &mut S,
    mut step: impl FnMut(&mut S) -> Result<R, came::Error>,
) -> Result<u64, came::Error> {
    step(state)?;
    let (result, instructions) = clock.instructions(|| {
        for _ in 0..STEPS {
            step(state)?;
        }
        Ok(())
    });
    result.map(|()| instructions)
}
