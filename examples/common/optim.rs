//! CAME, AdamW and Adafactor on the model's flat buffers. Each optimizer's state is a few
//! plain `Vec<f32>`s allocated once, stepped through the crate's allocation-free API: the way a
//! custom trainer that owns its buffers uses the crate.

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Shape, TensorStep};

use super::model::{self, Config, TENSORS};

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Came,
    AdamW,
    /// CAME's step without the confidence term: the paper's Adafactor baseline (with momentum).
    Adafactor,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Came, Kind::AdamW, Kind::Adafactor];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Came => "came",
            Kind::AdamW => "adamw",
            Kind::Adafactor => "adafactor",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// State elements this optimizer keeps for a tensor of `dims`: CAME and Adafactor the
    /// crate's exact state length (momentum, factored statistics, O(rows + cols) workspace;
    /// vectors: momentum and second moment), AdamW two full-size moments.
    pub fn state_len(self, dims: &[usize]) -> usize {
        match self {
            Kind::AdamW => adamw::state_len(dims.iter().product()),
            Kind::Came | Kind::Adafactor => came::state_len(dims),
        }
    }
}

/// One optimizer and its state for a whole model.
pub struct Optimizer {
    kind: Kind,
    shapes: [Shape; TENSORS],
    states: [Vec<f32>; TENSORS],
    steps: u64,
    came: CameConfig,
    adamw: AdamWConfig,
}

impl Optimizer {
    /// A fresh optimizer with the reference defaults of each method but CAME's `beta3`, no
    /// weight decay.
    pub fn new(kind: Kind, config: &Config, beta3: f64) -> Self {
        let tensors = config.tensors();
        let shapes = tensors
            .each_ref()
            .map(|(_, dims)| Shape::new(dims).expect("small shapes"));
        let states = tensors
            .each_ref()
            .map(|(_, dims)| vec![0.0f32; kind.state_len(dims)]);
        Self {
            kind,
            shapes,
            states,
            steps: 0,
            came: CameConfig {
                betas: (0.9, 0.999, beta3),
                ..CameConfig::default()
            }
            .with_confidence(kind != Kind::Adafactor),
            adamw: AdamWConfig::default(),
        }
    }

    /// Bytes of optimizer state, workspace included.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.len() * size_of::<f32>()).sum()
    }

    /// One step of every tensor at learning rate `lr`.
    ///
    /// # Errors
    /// The crate's error for the first tensor that failed; then nothing has changed.
    pub fn step(
        &mut self,
        config: &Config,
        lr: f64,
        params: &mut [f32],
        grad: &[f32],
    ) -> Result<(), came::Error> {
        let params = model::split_mut(config, params);
        let grads = model::split(config, grad);
        match self.kind {
            Kind::Came | Kind::Adafactor => {
                let steps = self.steps;
                let mut states = self
                    .states
                    .each_mut()
                    .map(|s| CameState::from_parts(s, steps));
                let mut params = params.into_iter();
                let mut states_iter = states.iter_mut();
                let mut tensors: [TensorStep<'_, '_, f32>; TENSORS] =
                    std::array::from_fn(|i| TensorStep {
                        shape: self.shapes[i],
                        param: params.next().expect("five tensors"),
                        grad: grads[i],
                        state: states_iter.next().expect("five tensors"),
                    });
                came::step_all(&self.came.with_lr(lr), &mut tensors).map_err(|e| e.error)?;
            }
            Kind::AdamW => {
                // all or nothing: check every gradient before the first tensor moves
                for g in grads {
                    came::check_gradient(g)?;
                }
                let config = AdamWConfig { lr, ..self.adamw };
                for ((p, g), s) in params.into_iter().zip(grads).zip(&mut self.states) {
                    adamw::step(&config, p, g, &mut AdamWState::from_parts(s, self.steps))?;
                }
            }
        }
        self.steps += 1;
        Ok(())
    }
}
