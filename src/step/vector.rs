//! The element-wise step (rank 0 and 1) in two sweeps:
//!
//! 1. read `g`, `v`, `m`: the squared norm of the unclipped update, and a finiteness check of
//!    the new second moment and the momentum;
//! 2. read `g`, `v`, `m`, `p`, write `v`, `m`, `p`: the whole update.
//!
//! Nothing is written before the check passes, so every error leaves the state as it was.

use super::{all_finite, clip_divisor, gradient_error};
use crate::config::Coefficients;
use crate::kernels::{vector_apply, vector_sq_block};
use crate::lanes::{Executor, LaneItems, split, split_mut};
use crate::{Error, Float, Shape};

/// Elements summed in `T` before the block's sum is added up in `f64`.
const BLOCK: usize = 1024;

pub(super) fn step<T: Float, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    shape: &Shape,
    param: &mut [T],
    grad: &[T],
    state: &mut [T],
) -> Result<f64, Error> {
    let n = param.len();
    let lanes = shape.lanes();
    let (m, rest) = state.split_at_mut(n);
    let v = &mut rest[..n];

    let (sum_sq, check) = {
        let mut items: LaneItems<_> = split(grad, 1, n, lanes)
            .zip(split(v, 1, n, lanes))
            .zip(split(m, 1, n, lanes))
            .map(|it| (it, 0.0, 0.0))
            .collect();
        exec.for_each(&mut items, |(((g, v), m), sum, check)| {
            for ((g, v), m) in g.chunks(BLOCK).zip(v.chunks(BLOCK)).zip(m.chunks(BLOCK)) {
                let (s, c) = vector_sq_block(g, v, m, k);
                *sum += s.as_f64();
                *check += c.as_f64();
            }
        });
        let sum = items.iter().map(|it| it.1).sum::<f64>();
        (sum, items.iter().map(|it| it.2).sum::<f64>())
    };
    if !(sum_sq.is_finite() && check == 0.0) {
        return Err(match gradient_error(grad) {
            Error::NonFiniteUpdate if !(all_finite(v) && all_finite(m)) => Error::NonFiniteState,
            e => e,
        });
    }
    let (d, rms) = clip_divisor(sum_sq, n, k.clip_threshold);

    let mut items: LaneItems<_> = split_mut(param, 1, n, lanes)
        .zip(split(grad, 1, n, lanes))
        .zip(split_mut(m, 1, n, lanes))
        .zip(split_mut(v, 1, n, lanes))
        .collect();
    exec.for_each(&mut items, |(((p, g), m), v)| {
        if d == T::one() {
            vector_apply::<T, false>(p, g, m, v, d, k);
        } else {
            vector_apply::<T, true>(p, g, m, v, d, k);
        }
    });
    Ok(rms)
}
