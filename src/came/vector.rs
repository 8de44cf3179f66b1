//! The element-wise step (rank 0 and 1) in two sweeps:
//!
//! 1. read `g`, `v`, `m`: the squared norm of the unclipped update, and a finiteness check of
//!    the new second moment and the momentum;
//! 2. read `g`, `v`, `m`, `p`, write `v`, `m`, `p`: the whole update.
//!
//! Nothing is written before the check passes, so every error leaves the state as it was.

use pulp::Simd;

use super::formula::Clip;
use super::sweeps::{vector_apply, vector_sq_block};
use crate::Element;
use crate::check::{all_finite, gradient_error, valid_statistics};
use crate::config::Coefficients;
use crate::exec::lanes::{LaneItems, lane_range, split, split_mut};
use crate::exec::simd::Ops;
use crate::exec::{Executor, LaneKernel};
use crate::{Error, Float, Shape};

/// Elements summed in `T` before the block's sum is added up in `f64`.
const BLOCK: usize = 1024;

/// Sweep 1: the update's norm and the finiteness check of a lane's elements.
struct Norm<'a, T, G> {
    k: &'a Coefficients<T>,
    g: core::marker::PhantomData<G>,
}

impl<'a, T: Float, G: Element<Compute = T>> LaneKernel for Norm<'a, T, G> {
    /// gradient, second moment, momentum, squared norm, check (0 when all finite)
    type Item = (&'a [G], &'a [T], &'a [T], f64, f64);

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (g, v, m, sum, check): &mut Self::Item) {
        let o = Ops::new(simd);
        let blocks = g.chunks(BLOCK).zip(v.chunks(BLOCK)).zip(m.chunks(BLOCK));
        for ((g, v), m) in blocks {
            let (s, c) = vector_sq_block(o, (g, v, m), self.k);
            *sum += s.as_f64();
            *check += c.as_f64();
        }
    }
}

/// Sweep 2: the whole update of a lane's elements.
struct Update<'a, T, P, G> {
    d: T,
    k: &'a Coefficients<T>,
    types: core::marker::PhantomData<(P, G)>,
}

impl<'a, T: Float, P: Element<Compute = T>, G: Element<Compute = T>> LaneKernel
    for Update<'a, T, P, G>
{
    /// parameters, gradient, momentum, second moment, flat index of the lane's first element
    type Item = (&'a mut [P], &'a [G], &'a mut [T], &'a mut [T], usize);

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, (p, g, m, v, start): &mut Self::Item) {
        let (o, d, k) = (Ops::new(simd), self.d, self.k);
        let data = (&mut **p, &**g, &mut **m, &mut **v);
        let at = (d, *start);
        match (d == T::one(), k.decay.is_some()) {
            (true, false) => vector_apply::<S, T, P, G, false, false>(o, data, at, k),
            (true, true) => vector_apply::<S, T, P, G, false, true>(o, data, at, k),
            (false, false) => vector_apply::<S, T, P, G, true, false>(o, data, at, k),
            (false, true) => vector_apply::<S, T, P, G, true, true>(o, data, at, k),
        }
    }
}

/// Sweep 1: the update's norm and the clip; writes nothing.
pub(super) fn prepare<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    shape: &Shape,
    grad: &[G],
    state: &[T],
) -> Result<Clip<T>, Error> {
    let n = grad.len();
    let (m, rest) = state.split_at(n);
    let v = &rest[..n];
    let sums = norm_lanes(exec, k, shape.lanes(), grad, (v, m));
    clip_from_lanes(k, &sums, n).ok_or_else(|| match gradient_error(grad) {
        Error::NonFiniteUpdate if !(valid_statistics(v) && all_finite(m)) => Error::NonFiniteState,
        e => e,
    })
}

/// Sweep 1 over `lanes` lanes of `grad` and its state `(v, m)`: each lane's squared norm of
/// the unclipped update and its check (0 when every new value is finite).
pub(super) fn norm_lanes<T: Float, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    lanes: usize,
    grad: &[G],
    (v, m): (&[T], &[T]),
) -> LaneItems<(f64, f64)> {
    let n = grad.len();
    let mut items: LaneItems<_> = split(grad, 1, n, lanes)
        .zip(split(v, 1, n, lanes))
        .zip(split(m, 1, n, lanes))
        .map(|((g, v), m)| (g, v, m, 0.0, 0.0))
        .collect();
    let g = core::marker::PhantomData;
    exec.run(&Norm { k, g }, &mut items);
    items.iter().map(|it| (it.3, it.4)).collect()
}

/// The clip of a vector of `numel` elements from every lane's [`norm_lanes`], added up in lane
/// order; `None` if a lane's check failed or the norm is not finite.
pub(super) fn clip_from_lanes<T: Float>(
    k: &Coefficients<T>,
    lanes: &[(f64, f64)],
    numel: usize,
) -> Option<Clip<T>> {
    let sum_sq = lanes.iter().map(|l| l.0).sum::<f64>();
    let check = lanes.iter().map(|l| l.1).sum::<f64>();
    (sum_sq.is_finite() && check == 0.0).then(|| Clip::from_sum_sq(sum_sq, numel, k.clip_threshold))
}

/// Sweep 2: the whole update.
pub(super) fn finish<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    shape: &Shape,
    clip: Clip<T>,
    param: &mut [P],
    grad: &[G],
    state: &mut [T],
) {
    let n = param.len();
    let (m, rest) = state.split_at_mut(n);
    let lanes = (shape.lanes(), 0);
    finish_lanes(exec, k, lanes, clip, (param, grad), (m, &mut rest[..n]));
}

/// Sweep 2 over `lanes.0` lanes of the elements, the first of which has the flat index
/// `lanes.1` in its tensor (for stochastic rounding).
pub(super) fn finish_lanes<
    T: Float,
    P: Element<Compute = T>,
    G: Element<Compute = T>,
    E: Executor,
>(
    exec: &E,
    k: &Coefficients<T>,
    (lanes, offset): (usize, usize),
    clip: Clip<T>,
    (param, grad): (&mut [P], &[G]),
    (m, v): (&mut [T], &mut [T]),
) {
    let n = param.len();
    let mut items: LaneItems<_> = split_mut(param, 1, n, lanes)
        .zip(split(grad, 1, n, lanes))
        .zip(split_mut(m, 1, n, lanes))
        .zip(split_mut(v, 1, n, lanes))
        .enumerate()
        .map(|(lane, (((p, g), m), v))| (p, g, m, v, offset + lane_range(n, lanes, lane).0))
        .collect();
    let types = core::marker::PhantomData;
    exec.run(
        &Update {
            d: clip.d,
            k,
            types,
        },
        &mut items,
    );
}
