//! Helpers shared by the tests: deterministic values, vars and gradient stores.
#![allow(dead_code)]

use candle::backprop::GradStore;
use candle::{Device, Tensor, Var, WithDType};

/// The main job's SplitMix64 (`examples/common/rng.rs`): the same values on every machine.
#[path = "../../../examples/common/rng.rs"]
mod splitmix;

/// Test values drawn from the main job's generator.
pub struct Rng(splitmix::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix::Rng::new(seed))
    }

    /// Uniform in `[-1, 1)`.
    pub fn signed(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// `n` values of type `T`, uniform in `[-scale, scale)`, every seventh zero.
    pub fn values<T: WithDType>(&mut self, n: usize, scale: f64) -> Vec<T> {
        (0..n)
            .map(|i| {
                let x = self.signed() * scale;
                T::from_f64(if i % 7 == 3 { 0.0 } else { x })
            })
            .collect()
    }
}

/// A var of `dims` holding `values`.
pub fn var<T: WithDType>(values: &[T], dims: &[usize]) -> Var {
    Var::from_slice(values, dims, &Device::Cpu).unwrap()
}

/// A tensor of `dims` holding `values`.
pub fn tensor<T: WithDType>(values: &[T], dims: &[usize]) -> Tensor {
    Tensor::from_slice(values, dims, &Device::Cpu).unwrap()
}

/// A var's elements, flat.
pub fn values<T: WithDType>(var: &Var) -> Vec<T> {
    var.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

/// A gradient store of `(var, gradient)` pairs.
pub fn grads(pairs: &[(&Var, &Tensor)]) -> GradStore {
    let mut store = GradStore::default();
    for (var, grad) in pairs {
        store.insert(var.as_tensor(), (*grad).clone());
    }
    store
}

/// The bits of float values, to compare bit for bit (NaN included).
pub fn bits<T: WithDType>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}
