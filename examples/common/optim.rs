//! CAME, AdamW and Adafactor for the model: the crate's owned optimizers with the model's five
//! tensors registered, each driven by the trainer through the `came::Optimizer` trait, the way
//! a trainer written once for every optimizer uses the crate.

use came::adamw::AdamWConfig;
use came::{AdamW, Came, CameConfig, Instability, Optimizer};

use super::model::Config;

/// The optimizers, by the names the example's flags and output use.
pub const NAMES: [&str; 3] = ["came", "adamw", "adafactor"];

/// CAME with the reference's defaults but `beta3` and the start of the instability
/// statistics, no weight decay.
pub fn came(config: &Config, beta3: f64, instability: Instability) -> Came<f32> {
    let came = came_config(beta3).with_instability(instability);
    registered(Came::new(came), config)
}

/// CAME's step without the confidence term: the paper's Adafactor baseline (with momentum).
pub fn adafactor(config: &Config, beta3: f64) -> Came<f32> {
    registered(Came::new(came_config(beta3).with_confidence(false)), config)
}

/// AdamW with `torch.optim.AdamW`'s defaults (weight decay 0.01).
pub fn adamw(config: &Config) -> AdamW<f32> {
    registered(AdamW::new(AdamWConfig::default()), config)
}

fn came_config(beta3: f64) -> CameConfig {
    CameConfig {
        betas: (0.9, 0.999, beta3),
        ..CameConfig::default()
    }
}

/// The optimizer with the model's tensors registered, in the order of the parameter buffer.
fn registered<O: Optimizer>(opt: Result<O, O::Error>, config: &Config) -> O {
    let mut opt = opt.expect("a valid config");
    for (name, dims) in config.tensors() {
        opt.register(name, &dims).expect("small shapes");
    }
    opt
}
