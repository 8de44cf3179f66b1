//! What the sharded runs are checked with (tests/suite/shard.rs, tests/suite/shard_edge.rs,
//! examples/dist_check.rs): tensors of awkward shapes, their gradients and starting values, and
//! one process stepping the whole tensors with `came::step_all`.

use core::ops::Range;

use came::shard::ShardMap;
use came::{CameConfig, CameState, Element, Shape, TensorError, TensorStep};

/// Shapes whose lanes do not divide evenly over the ranks: one-lane matrices, a single row, a
/// single column, rows not divisible by the lanes, batches of matrices (3x3 kernels among
/// them), vectors long and short, a scalar.
#[allow(dead_code)]
pub const AWKWARD: &[&[usize]] = &[
    &[7, 5],
    &[1, 70_001],
    &[70_001, 1],
    &[301, 700],
    &[1000, 517],
    &[8, 3, 130, 70],
    &[256, 256, 3, 3],
    &[5, 2, 3],
    &[100],
    &[150_001],
    &[],
];

/// A reproducible gradient of tensor `t` at step `s`: SplitMix64 to values in [-0.5, 0.5), every
/// 997th forty times larger so that the update is clipped; rounded to the caller's type.
#[allow(dead_code)]
pub fn gradient(t: usize, s: usize, n: usize) -> impl Iterator<Item = f64> {
    let mut x = (t as u64) << 32 | (s as u64) << 8 | 0x5a;
    (0..n).map(move |i| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        if i % 997 == 0 { u * 40.0 } else { u }
    })
}

/// The starting parameters of a tensor of `n` elements.
#[allow(dead_code)]
pub fn start(n: usize) -> impl Iterator<Item = f64> {
    (0..n).map(|i| ((i as f64) * 0.37).cos() * 0.1)
}

/// Every tensor's parameters, state buffer and step count.
pub struct OneProcess<P: Element> {
    pub shapes: Vec<Shape>,
    pub params: Vec<Vec<P>>,
    bufs: Vec<Vec<P::Compute>>,
    steps: Vec<u64>,
}

#[allow(dead_code)]
impl<P: Element> OneProcess<P> {
    /// Fresh states for tensors of `shapes` starting from `params`.
    pub fn new(shapes: &[Shape], params: Vec<Vec<P>>) -> Self {
        Self {
            bufs: shapes
                .iter()
                .map(|s| vec![P::Compute::default(); s.state_len()])
                .collect(),
            steps: vec![0; shapes.len()],
            shapes: shapes.to_vec(),
            params,
        }
    }

    /// One `step_all` of every tensor with `grads`.
    pub fn step<G: Element<Compute = P::Compute>>(
        &mut self,
        config: &CameConfig,
        grads: &[Vec<G>],
    ) -> Result<(), TensorError> {
        let mut states: Vec<CameState<'_, P::Compute>> = self
            .bufs
            .iter_mut()
            .zip(&self.steps)
            .map(|(b, &s)| CameState::from_parts(b, s))
            .collect();
        let mut tensors: Vec<TensorStep<'_, '_, P, G>> = self
            .params
            .iter_mut()
            .zip(grads)
            .zip(states.iter_mut())
            .zip(&self.shapes)
            .map(|(((param, grad), state), shape)| TensorStep {
                shape: *shape,
                param,
                grad,
                state,
            })
            .collect();
        let result = came::step_all(config, &mut tensors);
        drop(tensors);
        self.steps = states.iter().map(CameState::step_count).collect();
        result
    }
}

/// Each tensor's elements that rank `rank` owns ([`ShardMap::elements`]), and their values cut
/// from the whole tensor `whole(t)`.
#[allow(dead_code)]
pub fn rank_part<T: Copy>(
    map: &ShardMap,
    rank: usize,
    whole: impl Fn(usize) -> Vec<T>,
) -> (Vec<Range<usize>>, Vec<Vec<T>>) {
    let ranges: Vec<_> = (0..map.shapes().len())
        .map(|t| map.elements(t, rank))
        .collect();
    let local = ranges
        .iter()
        .enumerate()
        .map(|(t, r)| whole(t)[r.clone()].to_vec())
        .collect();
    (ranges, local)
}
