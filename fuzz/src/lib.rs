//! Inputs and checks shared by the fuzz targets.
//!
//! An input is a fixed header (`arbitrary`-derived: shape, hyperparameters, step count, state
//! mode) followed by raw little-endian values (`f32`, or the element type a target stores),
//! used in order for parameters, state and gradients and padded with zeros. The layout is
//! simple on purpose: `seed_corpus.py` turns the reference trajectories into inputs of exactly
//! this form.

use arbitrary::{Arbitrary, Unstructured};
use bytemuck::Pod;
use came::{CameConfig, CameState, Shape};

/// Largest tensor the targets build (keeps each run fast).
pub const MAX_NUMEL: usize = 4096;

/// Hyperparameters as raw `f64`s: anything, invalid values included.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RawConfig {
    pub lr: f64,
    pub betas: [f64; 3],
    pub eps: [f64; 2],
    pub clip_threshold: f64,
    pub weight_decay: f64,
    pub confidence: bool,
    /// the instability statistics bias-corrected (odd) or the reference's (even)
    pub instability: u8,
}

impl RawConfig {
    pub fn came(&self) -> CameConfig {
        CameConfig {
            lr: self.lr,
            betas: (self.betas[0], self.betas[1], self.betas[2]),
            eps: (self.eps[0], self.eps[1]),
            clip_threshold: self.clip_threshold,
            weight_decay: self.weight_decay,
            confidence: self.confidence,
            instability: if self.instability % 2 == 1 {
                came::Instability::BiasCorrected
            } else {
                came::Instability::Reference
            },
            // only 16-bit parameters are rounded: the `lowp` target sets its own
            rounding: came::Rounding::Nearest,
        }
    }

    pub fn adamw(&self) -> came::adamw::AdamWConfig {
        came::adamw::AdamWConfig {
            lr: self.lr,
            betas: (self.betas[0], self.betas[1]),
            eps: self.eps[0],
            weight_decay: self.weight_decay,
        }
    }

    /// Hyperparameters for which the step's arithmetic stays well inside `f32`.
    pub fn moderate(&self) -> bool {
        moderate_config(&self.came())
    }
}

/// Hyperparameters for which the step's arithmetic stays well inside `f32`.
pub fn moderate_config(c: &CameConfig) -> bool {
    c.validate().is_ok()
        && c.lr <= 10.0
        && (0.01..=0.9999).contains(&c.betas.0)
        && c.betas.1 <= 0.9999
        && c.betas.2 <= 0.9999
        && (c.eps.0 == 0.0 || (1e-30..=1e-3).contains(&c.eps.0))
        && (1e-20..=1e-3).contains(&c.eps.1)
        && (1e-3..=1e3).contains(&c.clip_threshold)
        && c.weight_decay <= 1.0
}

/// The fixed part of an input.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Header {
    /// rank is `rank % 5`
    pub rank: u8,
    /// each dim is `dim % 65`
    pub dims: [u8; 4],
    pub config: RawConfig,
    /// steps are `1 + steps % 4`
    pub steps: u8,
    /// bit 0: start from state values in the input rather than a fresh state
    pub state: u8,
}

/// A decoded input: header, dims, and the bytes of the values that follow.
#[derive(Debug, Clone)]
pub struct Input {
    pub header: Header,
    pub dims: Vec<usize>,
    bytes: Vec<u8>,
    /// the first byte not yet taken
    next: usize,
}

impl Input {
    pub fn decode(data: &[u8]) -> Option<Self> {
        let mut u = Unstructured::new(data);
        let header = Header::arbitrary(&mut u).ok()?;
        let rank = usize::from(header.rank % 5);
        let dims: Vec<usize> = header.dims[..rank]
            .iter()
            .map(|&d| usize::from(d % 65))
            .collect();
        if dims.iter().product::<usize>() > MAX_NUMEL {
            return None;
        }
        Some(Self {
            header,
            dims,
            bytes: u.take_rest().to_vec(),
            next: 0,
        })
    }

    pub fn steps(&self) -> usize {
        1 + usize::from(self.header.steps % 4)
    }

    pub fn fresh_state(&self) -> bool {
        self.header.state & 1 == 0
    }

    /// The next `n` `f32` values, zeros past the end of the input.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        self.take_as(n)
    }

    /// The next `n` values of type `E` (any bit pattern), zeros past the end of the input.
    /// Values are read in the machine's byte order: little-endian on every fuzzing host.
    pub fn take_as<E: Pod>(&mut self, n: usize) -> Vec<E> {
        let size = size_of::<E>();
        (0..n)
            .map(|_| {
                let value = self
                    .bytes
                    .get(self.next..self.next + size)
                    .map_or_else(E::zeroed, bytemuck::pod_read_unaligned);
                self.next += size;
                value
            })
            .collect()
    }
}

/// Finite, not huge, and not so small that squares underflow: values whose step stays well
/// inside `f32`.
pub fn moderate(values: &[f32]) -> bool {
    values
        .iter()
        .all(|&x| x == 0.0 || (1e-6..=1e6).contains(&x.abs()))
}

/// A state whose statistics are fresh or moderate and non-negative, and whose momentum is
/// moderate.
pub fn moderate_state(shape: &Shape, state: &CameState<'_, f32>) -> bool {
    let parts = state.parts(shape).expect("state length checked").named();
    parts.iter().all(|(name, values)| {
        if *name == "exp_avg" {
            moderate(values)
        } else {
            values
                .iter()
                .all(|&x| x == 0.0 || (1e-12..=1e6).contains(&x))
        }
    })
}

/// The named state pieces (without the workspace), for before/after comparisons.
pub fn pieces(shape: &Shape, state: &CameState<'_, f32>) -> Vec<u32> {
    state
        .parts(shape)
        .expect("state length checked")
        .named()
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.to_bits()))
        .collect()
}

/// The bytes of `values`, for bit-for-bit before/after comparisons.
pub fn bits<E: Pod>(values: &[E]) -> Vec<u8> {
    bytemuck::cast_slice(values).to_vec()
}
