//! Counting the core's clock with SysTick, and from it the instructions QEMU ran.
//!
//! SysTick counts down at the core clock (25 MHz on the MPS2 board) from a 24-bit reload value;
//! its exception counts the wraps. Under QEMU with `-icount shift=0` each instruction takes one
//! nanosecond of the board's time, so one tick is [`INSTRUCTIONS_PER_TICK`] instructions. On a
//! real part a tick is one cycle instead, and [`Clock::instructions`] would report 40 times
//! the cycles: read [`Clock::ticks`] there.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

/// The MPS2 board's core clock.
pub const CORE_HZ: u64 = 25_000_000;
/// Instructions per tick under `-icount shift=0` (1 ns each).
pub const INSTRUCTIONS_PER_TICK: u64 = 1_000_000_000 / CORE_HZ;

const RELOAD: u32 = 0x00FF_FFFF;

static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// The running core clock.
pub struct Clock {
    syst: SYST,
}

impl Clock {
    /// Starts SysTick on the core clock, wrapping every 2^24 ticks.
    pub fn start(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        // the counter reads 0 until it first loads the reload value, one tick after the start
        while SYST::get_current() == 0 {}
        Self { syst }
    }

    /// Ticks since [`Clock::start`].
    pub fn ticks(&self) -> u64 {
        let _ = &self.syst;
        loop {
            let wraps = WRAPS.load(Ordering::Relaxed);
            let left = SYST::get_current();
            if WRAPS.load(Ordering::Relaxed) == wraps {
                return (u64::from(wraps) << 24) + u64::from(RELOAD - left);
            }
        }
    }

    /// Instructions (under QEMU's `-icount shift=0`) that `f` takes.
    pub fn instructions<R>(&self, f: impl FnOnce() -> R) -> (R, u64) {
        let start = self.ticks();
        let out = f();
        let ticks = self.ticks() - start;
        (out, ticks * INSTRUCTIONS_PER_TICK)
    }
}
