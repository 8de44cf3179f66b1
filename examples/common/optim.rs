//! The optimizers for the model: the crate's owned ones with the model's five tensors
//! registered, each driven by the trainer through the `came::Optimizer` trait, the way a trainer
//! written once for every optimizer uses the crate.

use came::adamw::AdamWConfig;
use came::{AdamW, Came, CameConfig, Instability, Momentum, Optimizer, Rounding};
use half::bf16;

use super::model::Config;

/// The optimizers, by the names the example's flags and output use: CAME, AdamW, Adafactor
/// (`f32` weights), then CAME with the weights stored in bf16, rounded to nearest (`-rn`) or
/// stochastically (`-sr`), then CAME with its momentum stored in bf16 (`-bf16m`) or in 8 bits
/// (`-q8`).
pub const NAMES: [&str; 7] = [
    "came",
    "adamw",
    "adafactor",
    "came-bf16w-rn",
    "came-bf16w-sr",
    "came-bf16m",
    "came-q8",
];

/// CAME with the reference's defaults but `beta3` and the start of the instability
/// statistics, no weight decay.
pub fn came(config: &Config, beta3: f64, instability: Instability) -> Came<f32> {
    registered(Came::new(came_config(beta3, instability)), config)
}

/// [`came`] over weights stored in bf16 (the master copy; `f32` gradients and state), the
/// updated weights rounded as `rounding` says.
pub fn came_bf16_weights(
    config: &Config,
    beta3: f64,
    instability: Instability,
    rounding: Rounding,
) -> Came<bf16, f32> {
    let came = came_config(beta3, instability).with_rounding(rounding);
    registered(Came::new(came), config)
}

/// [`came`] with the momentum of the large matrices stored as `momentum` (the rule of
/// `came::momentum`: here the hidden layer's 384 x 512 and the output's 512 x 76).
pub fn came_momentum(
    config: &Config,
    beta3: f64,
    instability: Instability,
    momentum: Momentum,
) -> Came<f32> {
    let mut came = Came::new(came_config(beta3, instability)).expect("a valid config");
    came.set_momentum(momentum)
        .expect("a valid momentum format");
    registered(Ok(came), config)
}

/// CAME's step without the confidence term: the paper's Adafactor baseline (with momentum).
pub fn adafactor(config: &Config, beta3: f64) -> Came<f32> {
    let adafactor = came_config(beta3, Instability::Reference).with_confidence(false);
    registered(Came::new(adafactor), config)
}

/// AdamW with `torch.optim.AdamW`'s defaults (weight decay 0.01).
pub fn adamw(config: &Config) -> AdamW<f32> {
    registered(AdamW::new(AdamWConfig::default()), config)
}

/// The main job's CAME config: the reference's defaults but `beta3` and the instability start.
pub fn came_config(beta3: f64, instability: Instability) -> CameConfig {
    CameConfig::default()
        .with_betas(0.9, 0.999, beta3)
        .with_instability(instability)
}

/// The optimizer with the model's tensors registered, in the order of the parameter buffer.
pub fn registered<O: Optimizer>(opt: Result<O, O::Error>, config: &Config) -> O {
    let mut opt = opt.expect("a valid config");
    for (name, dims) in config.tensors() {
        opt.register(name, &dims).expect("small shapes");
    }
    opt
}
