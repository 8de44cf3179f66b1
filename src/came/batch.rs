//! A batch of matrices (a tensor of rank > 2): the three sweeps of `factored.rs`, with the
//! tensor cut into lanes of whole matrices.
//!
//! Per sweep, a lane first does its per-matrix statistics, then computes the factors of all its
//! matrices in one vectorised pass (for small matrices, the square roots and divisions of the
//! factors cost more than the sweeps themselves), then uses them. A batch of 3x3 matrices (the
//! kernels of a convolution) computes them group by group instead, while a vector's width of
//! matrices is in registers (`small_batch.rs`).

use pulp::Simd;

use super::formula::{Clip, norm_from_quotients, quotients};
use super::packed::Moments;
use super::parts::{Dims, Parts, Work};
use super::rows::{self, batch_factors, finish_cols};
use super::small::SMALL_COLS;
use super::small_batch;
use super::sum::{BLOCK_ROWS, ColSums};
use super::sweeps::Factors;
use crate::Element;
use crate::check::{all_finite, gradient_error};
use crate::config::Coefficients;
use crate::exec::lanes::{LaneItems, lane_range, split, split_mut};
use crate::exec::simd::Ops;
use crate::exec::{Executor, LaneKernel};
use crate::{Error, Float};

// Sweep 1 of small matrices always takes `small_batch.rs`, which may leave factors in its
// lanes' layout; sweeps 2 and 3 take it only with full-precision momentum. Packed momentum is
// only for rows too wide to be small, so they always agree.
const _: () = assert!(crate::momentum::MIN_COLS >= SMALL_COLS);

/// Sweep 1 of every matrix: new squared-gradient statistics and factors, and the clip.
pub(super) fn prepare<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> Result<Clip<T>, Error> {
    let (finite, sums) = sq_lanes(exec, k, dims, param, grad, parts);
    let sum_sq = sums.iter().sum::<f64>();
    if !(finite && sum_sq.is_finite()) {
        return Err(gradient_error(grad));
    }
    Ok(Clip::from_sum_sq(sum_sq, grad.len(), k.clip_threshold))
}

/// Sweep 1 over the lanes: every matrix's new squared-gradient statistics and factors;
/// whether they are all finite, and each lane's squared norm of the unclipped update.
pub(super) fn sq_lanes<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> (bool, LaneItems<f64>) {
    run(
        exec,
        k,
        dims,
        (Sweep::Norm, T::one(), 0),
        param,
        grad,
        parts,
    )
}

/// Sweeps 2 and 3 of every matrix, after the squared-gradient statistics were committed;
/// returns whether every parameter written is known to be finite ([`apply_lanes`]).
pub(super) fn update<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    d: T,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> Result<bool, Error> {
    if !momentum_lanes(exec, k, dims, d, param, grad, parts) {
        return Err(Error::NonFiniteState);
    }
    Ok(apply_lanes(exec, k, dims, param, grad, parts, 0))
}

/// Sweep 2 over the lanes with clip divisor `d`: the momentum and every matrix's new
/// instability statistics and factors; whether those statistics are all finite.
pub(super) fn momentum_lanes<
    T: Float,
    P: Element<Compute = T>,
    G: Element<Compute = T>,
    E: Executor,
>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    d: T,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> bool {
    run(exec, k, dims, (Sweep::Momentum, d, 0), param, grad, parts).0
}

/// Commits the new instability statistics (with the confidence term), then sweep 3 over the
/// lanes; `offset` is the flat index of `param[0]` in its tensor (for stochastic rounding).
/// Returns whether every parameter written is known to be finite: 16-bit parameters of rows
/// wide enough for `rows::apply` are checked as they are written, those of the small-matrix
/// kernels are not (`false`).
pub(super) fn apply_lanes<
    T: Float,
    P: Element<Compute = T>,
    G: Element<Compute = T>,
    E: Executor,
>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
    offset: usize,
) -> bool {
    if k.confidence {
        parts.commit_res();
    }
    run(
        exec,
        k,
        dims,
        (Sweep::Apply, T::one(), offset),
        param,
        grad,
        parts,
    )
    .0
}

/// One lane of a batch: its share of the matrices' data and statistics.
struct Lane<'a, T, P, G> {
    /// gradients
    g: &'a [G],
    /// momentum (written in sweep 2)
    m: Moments<'a, T>,
    /// parameters (written in sweep 3)
    p: &'a mut [P],
    /// flat index of the lane's first parameter
    start: usize,
    /// committed statistics: squared gradient rows, columns; instability rows, columns
    stats: [&'a [T]; 4],
    /// new row and column statistics, checked before they are committed
    next: (&'a mut [T], &'a mut [T]),
    /// row and column factors of every matrix of the lane (those of whole groups of 3x3
    /// matrices in the layout of `small_batch.rs`'s lanes)
    factors: (&'a mut [T], &'a mut [T]),
    /// one matrix's column sums and weighted column sums (see [`ColSums`])
    sums: (&'a mut [T], &'a mut [T]),
    /// all new statistics finite (sweep 3: every parameter written known to be finite)
    finite: bool,
    /// squared norm of the unclipped update
    sum_sq: f64,
}

/// Which sweep of a batch a lane runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// sweep 1: squared-gradient statistics, the update's norm, factors
    Norm,
    /// sweep 2: momentum and instability statistics, then their factors
    Momentum,
    /// sweep 3: the parameters
    Apply,
}

struct Batch<'a, T, P, G> {
    rows: usize,
    cols: usize,
    d: T,
    k: &'a Coefficients<T>,
    sweep: Sweep,
    types: core::marker::PhantomData<(P, G)>,
}

impl<'a, T: Float, P: Element<Compute = T>, G: Element<Compute = T>> LaneKernel
    for Batch<'a, T, P, G>
{
    type Item = Lane<'a, T, P, G>;

    #[inline(always)]
    fn run<S: Simd>(&self, simd: S, lane: &mut Self::Item) {
        let (rows, cols, k, o) = (self.rows, self.cols, self.k, Ops::new(simd));
        let size = rows * cols;
        let (fr, fc) = (&mut *lane.factors.0, &mut *lane.factors.1);
        let (nr, nc) = (&mut *lane.next.0, &mut *lane.next.1);
        let [sq_row, sq_col, res_row, res_col] = lane.stats;
        let mut sums = ColSums::new(&mut *lane.sums.0, cols);
        let mut weighted = ColSums::new(&mut *lane.sums.1, cols);
        // small matrices take passes over the whole lane, whose column sums are plain: only
        // while their rows fit in one block of a compensated sum
        let small = cols < SMALL_COLS && rows <= BLOCK_ROWS;
        match self.sweep {
            Sweep::Norm if small => {
                let stats = (sq_row, sq_col);
                (lane.sum_sq, lane.finite) = small_batch::batch_sq_stats(
                    simd,
                    lane.g,
                    (rows, cols),
                    stats,
                    (nr, nc),
                    (fr, fc),
                    k,
                );
            }
            Sweep::Norm => {
                let mats = lane.g.chunks_exact(size);
                let old = sq_row.chunks_exact(rows).zip(sq_col.chunks_exact(cols));
                let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
                for ((g, (r, c)), (nr, nc)) in mats.zip(old).zip(next) {
                    sums.clear();
                    weighted.clear();
                    rows::sq_stats(o, g, cols, (r, nr), (&mut sums, &mut weighted), k);
                    finish_cols(sums.total, rows, c, nc, k.beta2, k.one_minus_beta2);
                    quotients(weighted.total, nc);
                    lane.sum_sq += norm_from_quotients(nr, weighted.total);
                }
                lane.finite = all_finite(nr) && all_finite(nc);
                batch_factors(o, rows, (nr, nc), (fr, fc), None);
            }
            Sweep::Momentum => {
                if let (true, Moments::Full(m)) = (small, &mut lane.m) {
                    lane.finite = small_batch::batch_momentum(
                        simd,
                        (lane.g, &mut **m),
                        (rows, cols),
                        (fr, fc),
                        self.d,
                        (res_row, res_col),
                        (nr, nc),
                        k,
                    );
                    return;
                }
                let m = lane.m.reborrow().chunks(rows, cols);
                let mats = lane.g.chunks_exact(size).zip(m);
                let f = fr.chunks_exact(rows).zip(fc.chunks_exact(cols));
                let old = res_row.chunks_exact(rows).zip(res_col.chunks_exact(cols));
                let next = nr.chunks_exact_mut(rows).zip(nc.chunks_exact_mut(cols));
                for ((((g, m), (rf, cf)), (rr, rc)), (nr, nc)) in mats.zip(f).zip(old).zip(next) {
                    sums.clear();
                    let f = Factors { rf, cf, d: self.d };
                    rows::momentum(o, (g, m), cols, f, (rr, nr), &mut sums, k);
                    finish_cols(sums.total, rows, rc, nc, k.beta3, k.one_minus_beta3);
                }
                lane.finite = all_finite(nr) && all_finite(nc);
                if k.confidence {
                    batch_factors(o, rows, (nr, nc), (fr, fc), k.bias_correction3);
                } else {
                    fr.fill(T::one());
                    fc.fill(T::one());
                }
            }
            Sweep::Apply => {
                if let (true, Moments::Full(m)) = (small, &lane.m) {
                    let pm = (&mut *lane.p, &**m);
                    let f = (&*fr, &*fc);
                    small_batch::batch_apply(simd, pm, (rows, cols), f, lane.start, k);
                    lane.finite = !P::ROUNDS;
                    return;
                }
                let m = lane.m.reborrow().chunks(rows, cols);
                let mats = lane.p.chunks_exact_mut(size).zip(m);
                let f = fr.chunks_exact(rows).zip(fc.chunks_exact(cols));
                for (i, ((p, m), f)) in mats.zip(f).enumerate() {
                    lane.finite &= rows::apply(o, (p, m), cols, f, lane.start + i * size, k);
                }
            }
        }
    }

    #[inline(always)]
    fn widest(&self, lane: &Self::Item) -> bool {
        !matches!(self.sweep, Sweep::Norm) && lane.m.is_packed()
    }
}

/// Runs one sweep of a batch over all lanes, with clip divisor `d`, the first parameter at the
/// flat index `offset` of its tensor; returns whether all new statistics (sweep 3: parameters)
/// are finite and each lane's squared norm of the update (sweep [`Sweep::Norm`]).
fn run<T: Float, P: Element<Compute = T>, G: Element<Compute = T>, E: Executor>(
    exec: &E,
    k: &Coefficients<T>,
    dims: Dims,
    (sweep, d, offset): (Sweep, T, usize),
    param: &mut [P],
    grad: &[G],
    parts: &mut Parts<'_, T>,
) -> (bool, LaneItems<f64>) {
    let Dims {
        batch,
        rows,
        cols,
        lanes,
    } = dims;
    let size = rows * cols;
    let Work {
        next_row,
        next_col,
        row_factors: fac_row,
        col_factors: fac_col,
        col_sums,
        weighted_sums: weighted,
    } = &mut parts.work;
    let stats = &parts.stats;
    let mut items: LaneItems<_> = split(grad, size, batch, lanes)
        .zip(parts.m.reborrow().lanes((batch, lanes), rows, cols))
        .zip(split_mut(param, size, batch, lanes))
        .zip(split(stats.sq_row, rows, batch, lanes).zip(split(stats.sq_col, cols, batch, lanes)))
        .zip(split(stats.res_row, rows, batch, lanes).zip(split(stats.res_col, cols, batch, lanes)))
        .zip(split_mut(next_row, rows, batch, lanes).zip(split_mut(next_col, cols, batch, lanes)))
        .zip(split_mut(fac_row, rows, batch, lanes).zip(split_mut(fac_col, cols, batch, lanes)))
        .zip(
            col_sums
                .chunks_exact_mut(ColSums::<T>::PARTS * cols)
                .zip(weighted.chunks_exact_mut(ColSums::<T>::PARTS * cols)),
        )
        .enumerate()
        .map(
            |(lane, (((((((g, m), p), (sr, sc)), (rr, rc)), next), factors), sums))| Lane {
                g,
                m,
                p,
                start: offset + lane_range(batch, lanes, lane).0 * size,
                stats: [sr, sc, rr, rc],
                next,
                factors,
                sums,
                finite: true,
                sum_sq: 0.0,
            },
        )
        .collect();
    exec.run(
        &Batch {
            rows,
            cols,
            d,
            k,
            sweep,
            types: core::marker::PhantomData,
        },
        &mut items,
    );
    let finite = items.iter().all(|it| it.finite);
    (finite, items.iter().map(|it| it.sum_sq).collect())
}
