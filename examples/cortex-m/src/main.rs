//! On-device fine-tuning on a Cortex-M4F: an activity classifier (a two-layer perceptron over
//! the features of a window of a 3-axis accelerometer) is trained at the factory, the device is
//! remounted (the sensor turned and less sensitive, so the classifier misreads it), and the
//! device fine-tunes the classifier on its own readings with `came::step`. The weights, their
//! gradients, CAME's state and the batch are static buffers; nothing is allocated. Prints the
//! loss as it trains over semihosting and the instructions a fine-tuning step takes, and exits
//! with success if, after the last step, the held-out loss is below [`TARGET_LOSS`].
//! `src/bin/cost/` counts the instructions of `came::step` alone.
//!
//! ```text
//! cd examples/cortex-m && cargo run --release
//! ```
//!
//! (`.cargo/config.toml` runs it under `qemu-system-arm -machine mps2-an386`.)

#![no_std]
#![no_main]

mod clock;
mod lcg;
mod model;
mod sensor;

use came::{CameConfig, CameState, Shape};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;

use model::{B1_DIMS, B2_DIMS, BATCH, States, W1_DIMS, W2_DIMS, Weights};
use sensor::{FACTORY, FEATURES, Lcg, Mount, READINGS, REMOUNTED};

/// Steps of training at the factory.
const FACTORY_STEPS: u32 = 300;
/// Steps of fine-tuning on the device.
const FINE_TUNE_STEPS: u32 = 400;
/// The fine-tuned loss (mean cross-entropy over the held-out windows, nats) must end below this.
const TARGET_LOSS: f32 = 0.2;
/// Held-out windows for the loss and accuracy.
const EVAL_WINDOWS: usize = 128;

/// The parameters, their gradients and CAME's state, each a static buffer.
struct Trainer {
    weights: &'static mut Weights,
    grads: &'static mut Weights,
    states: [CameState<'static, f32>; 4],
    batch: &'static mut [[f32; FEATURES]; BATCH],
    window: &'static mut [f32; READINGS],
    twiddles: sensor::Twiddles,
}

impl Trainer {
    /// `steps` CAME steps on windows read through `mount`; prints the batch loss every 50.
    fn train(
        &mut self,
        config: &CameConfig,
        mount: &Mount,
        rng: &mut Lcg,
        steps: u32,
    ) -> Result<(), came::Error> {
        let shapes = [
            Shape::new(&W1_DIMS)?,
            Shape::new(&B1_DIMS)?,
            Shape::new(&W2_DIMS)?,
            Shape::new(&B2_DIMS)?,
        ];
        let mut labels = [0; BATCH];
        for step in 1..=steps {
            for (x, label) in self.batch.iter_mut().zip(&mut labels) {
                *label = sensor::class(rng);
                sensor::window(rng, *label, mount, self.window);
                self.twiddles.features(self.window, x);
            }
            let loss = self.weights.loss_and_grad(self.batch, &labels, self.grads);
            let w = &mut *self.weights;
            let g = &*self.grads;
            let [s_w1, s_b1, s_w2, s_b2] = &mut self.states;
            came::step(config, &shapes[0], &mut w.w1, &g.w1, s_w1)?;
            came::step(config, &shapes[1], &mut w.b1, &g.b1, s_b1)?;
            came::step(config, &shapes[2], &mut w.w2, &g.w2, s_w2)?;
            came::step(config, &shapes[3], &mut w.b2, &g.b2, s_b2)?;
            if step % 50 == 0 {
                hprintln!("  step {:>3}: batch loss {:.4}", step, loss);
            }
        }
        Ok(())
    }

    /// Mean loss (nats) and accuracy on [`EVAL_WINDOWS`] held-out windows read through `mount`.
    fn evaluate(&mut self, mount: &Mount) -> (f32, f32) {
        let mut rng = Lcg(0xE7A1);
        let (mut loss, mut right) = (0.0, 0);
        let mut labels = [0; BATCH];
        for _ in 0..EVAL_WINDOWS / BATCH {
            for (x, label) in self.batch.iter_mut().zip(&mut labels) {
                *label = sensor::class(&mut rng);
                sensor::window(&mut rng, *label, mount, self.window);
                self.twiddles.features(self.window, x);
            }
            loss += self.weights.loss_and_grad(self.batch, &labels, self.grads);
            right += self
                .batch
                .iter()
                .zip(&labels)
                .filter(|(x, l)| self.weights.predict(x) == **l)
                .count();
        }
        (
            loss / (EVAL_WINDOWS / BATCH) as f32,
            right as f32 / EVAL_WINDOWS as f32,
        )
    }

    /// Forgets CAME's statistics (a fine-tuning run starts from none).
    fn reset_states(&mut self) {
        self.states.iter_mut().for_each(CameState::reset);
    }
}

#[entry]
fn main() -> ! {
    let ok = match run() {
        Ok(ok) => ok,
        Err(e) => {
            hprintln!("came::step failed: {}", e);
            false
        }
    };
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

fn run() -> Result<bool, came::Error> {
    let core = cortex_m::Peripherals::take().expect("taken once");
    let clock = clock::Clock::start(core.SYST);

    let weights = cortex_m::singleton!(: Weights = Weights::ZERO).expect("taken once");
    let grads = cortex_m::singleton!(: Weights = Weights::ZERO).expect("taken once");
    let batch = cortex_m::singleton!(: [[f32; FEATURES]; BATCH] = [[0.0; FEATURES]; BATCH])
        .expect("taken once");
    let window = cortex_m::singleton!(: [f32; READINGS] = [0.0; READINGS]).expect("taken once");
    let States { w1, b1, w2, b2 } =
        cortex_m::singleton!(: States = States::ZERO).expect("taken once");
    let mut trainer = Trainer {
        weights,
        grads,
        states: [
            CameState::new(w1),
            CameState::new(b1),
            CameState::new(w2),
            CameState::new(b2),
        ],
        batch,
        window,
        twiddles: sensor::Twiddles::new(),
    };
    let mut rng = Lcg(1);
    trainer.weights.init(&mut rng);
    hprintln!(
        "activity classifier: {} parameters ({}x{}, {}, {}x{}, {}), batch {}",
        Weights::LEN,
        W1_DIMS[0],
        W1_DIMS[1],
        B1_DIMS[0],
        W2_DIMS[0],
        W2_DIMS[1],
        B2_DIMS[0],
        BATCH
    );

    hprintln!("factory training ({} steps):", FACTORY_STEPS);
    trainer.train(&CameConfig::new(1e-2), &FACTORY, &mut rng, FACTORY_STEPS)?;
    let (loss, accuracy) = trainer.evaluate(&FACTORY);
    hprintln!("factory mount: loss {:.4}, accuracy {:.3}", loss, accuracy);
    let (loss, accuracy) = trainer.evaluate(&REMOUNTED);
    hprintln!(
        "remounted, before fine-tuning: loss {:.4}, accuracy {:.3}",
        loss,
        accuracy
    );

    hprintln!("fine-tuning on the device ({} steps):", FINE_TUNE_STEPS);
    trainer.reset_states();
    let mut device_rng = Lcg(0xD1CE);
    let (result, instructions) = clock.instructions(|| {
        trainer.train(
            &CameConfig::new(5e-3),
            &REMOUNTED,
            &mut device_rng,
            FINE_TUNE_STEPS,
        )
    });
    result?;
    let (loss, accuracy) = trainer.evaluate(&REMOUNTED);
    hprintln!(
        "remounted, fine-tuned: loss {:.4}, accuracy {:.3}",
        loss,
        accuracy
    );
    hprintln!(
        "fine-tuning: {} instructions per step (data, forward, backward and the four CAME steps)",
        instructions / u64::from(FINE_TUNE_STEPS)
    );

    let ok = loss < TARGET_LOSS;
    hprintln!(
        "result loss={:.4} accuracy={:.3} target={} {}",
        loss,
        accuracy,
        TARGET_LOSS,
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}
