//! The cost of `came::step` on a Cortex-M4F: instructions per parameter per step on a 64 x 64
//! weight matrix with `f32` weights and momentum, bf16 weights with bf16 momentum and bf16
//! weights with 8-bit momentum, beside AdamW's, counted by QEMU (`-icount`, read through
//! SysTick; see `clock.rs`).
//!
//! ```text
//! cd examples/cortex-m && cargo run --release --bin cost
//! ```

#![no_std]
#![no_main]

#[path = "../../clock.rs"]
mod clock;
#[path = "../../lcg.rs"]
mod lcg;
mod measure;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    let core = cortex_m::Peripherals::take().expect("taken once");
    let clock = clock::Clock::start(core.SYST);
    let buffers =
        cortex_m::singleton!(: measure::Buffers = measure::Buffers::ZERO).expect("taken once");
    hprintln!(
        "instructions per parameter per step, {}x{} matrix:",
        measure::N,
        measure::N
    );
    let status = match measure::run(&clock, buffers) {
        Ok(cases) => {
            for case in cases {
                hprintln!(
                    "cost {}: {}.{:02} instructions per parameter per step, state {} B",
                    case.name,
                    case.centi_instructions / 100,
                    case.centi_instructions % 100,
                    case.state_bytes
                );
            }
            debug::EXIT_SUCCESS
        }
        Err(e) => {
            hprintln!("step failed: {}", e);
            debug::EXIT_FAILURE
        }
    };
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}
