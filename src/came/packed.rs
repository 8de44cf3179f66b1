//! Sweeps 2 and 3 over momentum stored in bfloat16 or in 8 bits ([`crate::momentum`]).
//!
//! A row is taken a block at a time: the block's momentum is decoded into a buffer on the
//! stack (at most [`MAX_BLOCK`] values, in L1), goes through the very loops of full-precision
//! momentum (`sweeps.rs`: the same formulas, vector by vector) and, in sweep 2, is encoded back
//! in place. Nothing is allocated and no full-size temporary exists: the tensor is still read
//! and written once per sweep, with 2 bytes (bf16) or 1 byte and a scale per block (8 bits) of
//! momentum per element instead of 4.

use core::ops::Range;

use half::bf16;
use pulp::Simd;

use super::formula::average;
use super::sweeps::{Factors, apply_rows, momentum_rows, nothing_follows, written_finite};
use crate::Element;
use crate::Float;
use crate::config::Coefficients;
use crate::exec::lanes::lane_range;
use crate::exec::prefetch;
use crate::exec::simd::Ops;
use crate::momentum::{Code8, MAX_BLOCK, decode, encode};

/// Elements of a bf16 row decoded at a time.
const BF16_BLOCK: usize = 256;

/// A tensor's momentum (or some whole rows of it), as its state layout stores it.
pub(crate) enum Moments<'s, T> {
    /// In the compute type.
    Full(&'s mut [T]),
    /// One bfloat16 per element.
    Bf16(&'s mut [bf16]),
    /// One code per element and the scales of each block of each row.
    Int8 {
        codes: &'s mut [u8],
        scales: &'s mut [T],
        code: Code8,
        block: usize,
    },
}

impl<T> Moments<'_, T> {
    /// The same momentum, borrowed for a shorter time.
    pub(crate) fn reborrow(&mut self) -> Moments<'_, T> {
        match self {
            Moments::Full(m) => Moments::Full(m),
            Moments::Bf16(m) => Moments::Bf16(m),
            Moments::Int8 {
                codes,
                scales,
                code,
                block,
            } => Moments::Int8 {
                codes,
                scales,
                code: *code,
                block: *block,
            },
        }
    }

    /// The first `rows` rows (of `cols` elements) and the rest.
    pub(crate) fn split_rows(self, rows: usize, cols: usize) -> (Self, Self) {
        let n = rows * cols;
        match self {
            Moments::Full(m) => {
                let (a, b) = m.split_at_mut(n);
                (Moments::Full(a), Moments::Full(b))
            }
            Moments::Bf16(m) => {
                let (a, b) = m.split_at_mut(n);
                (Moments::Bf16(a), Moments::Bf16(b))
            }
            Moments::Int8 {
                codes,
                scales,
                code,
                block,
            } => {
                let (ca, cb) = codes.split_at_mut(n);
                // the scales of the first `rows` rows end where row `rows`'s begin
                let end = scale_range(code, block, cols, (rows, 0)).start;
                let (sa, sb) = scales.split_at_mut(end);
                let head = Moments::Int8 {
                    codes: ca,
                    scales: sa,
                    code,
                    block,
                };
                let tail = Moments::Int8 {
                    codes: cb,
                    scales: sb,
                    code,
                    block,
                };
                (head, tail)
            }
        }
    }

    /// Consecutive pieces of `rows` rows (of `cols`) each, the last with what is left.
    pub(crate) fn chunks(self, rows: usize, cols: usize) -> impl Iterator<Item = Self> {
        let mut rest = Some(self);
        core::iter::from_fn(move || {
            let m = rest.take().filter(|m| m.len() > 0)?;
            let left = m.len() / cols.max(1);
            let (head, tail) = m.split_rows(rows.min(left), cols);
            rest = Some(tail);
            Some(head)
        })
    }

    /// The momentum of `units` units of `unit_rows` rows (of `cols`) each, cut into the
    /// pieces of `lanes` lanes as [`lane_range`] cuts the units.
    pub(crate) fn lanes(
        self,
        (units, lanes): (usize, usize),
        unit_rows: usize,
        cols: usize,
    ) -> impl Iterator<Item = Self> {
        let mut rest = Some(self);
        (0..lanes).map_while(move |lane| {
            let (start, end) = lane_range(units, lanes, lane);
            let (head, tail) = rest.take()?.split_rows((end - start) * unit_rows, cols);
            rest = Some(tail);
            Some(head)
        })
    }

    /// Whether the momentum is stored packed (bf16 or 8 bits): its sweeps run with the widest
    /// vectors the CPU has ([`crate::exec::LaneKernel::widest`]).
    pub(crate) fn is_packed(&self) -> bool {
        !matches!(self, Moments::Full(_))
    }

    /// Elements of momentum.
    fn len(&self) -> usize {
        match self {
            Moments::Full(m) => m.len(),
            Moments::Bf16(m) => m.len(),
            Moments::Int8 { codes, .. } => codes.len(),
        }
    }
}

impl<T: Float> Moments<'_, T> {
    /// Decodes elements `range` of row `r` (of `cols`) into `out`; `b` is the range's block.
    #[inline(always)]
    fn load(&self, (r, cols): (usize, usize), (b, at): (usize, usize), out: &mut [T]) {
        let start = r * cols + at;
        match self {
            Moments::Full(m) => out.copy_from_slice(&m[start..start + out.len()]),
            Moments::Bf16(m) => {
                for (x, v) in out.iter_mut().zip(&m[start..]) {
                    *x = T::from_bf16(*v);
                }
            }
            Moments::Int8 {
                codes,
                scales,
                code,
                block,
            } => {
                let s = scale_range(*code, *block, cols, (r, b));
                decode(*code, &codes[start..start + out.len()], &scales[s], out);
            }
        }
    }

    /// Encodes `values` over elements of row `r` (of `cols`) from `at`, block `b`.
    #[inline(always)]
    fn store(&mut self, (r, cols): (usize, usize), (b, at): (usize, usize), values: &[T]) {
        let start = r * cols + at;
        match self {
            Moments::Full(m) => m[start..start + values.len()].copy_from_slice(values),
            Moments::Bf16(m) => {
                for (v, &x) in m[start..].iter_mut().zip(values) {
                    *v = x.to_bf16();
                }
            }
            Moments::Int8 {
                codes,
                scales,
                code,
                block,
            } => {
                let s = scale_range(*code, *block, cols, (r, b));
                let codes = &mut codes[start..start + values.len()];
                encode(*code, values, codes, &mut scales[s]);
            }
        }
    }

    /// Requests the lines of elements `at..at + len` ahead ([`prefetch::ahead_span`]).
    #[inline(always)]
    fn prefetch(&self, at: usize, len: usize) {
        match self {
            Moments::Full(m) => prefetch::ahead_span(m, at, len),
            Moments::Bf16(m) => prefetch::ahead_span(m, at, len),
            Moments::Int8 { codes, .. } => prefetch::ahead_span(codes, at, len),
        }
    }

    /// Elements per block of a row.
    fn block(&self) -> usize {
        match self {
            Moments::Int8 { block, .. } => *block,
            _ => BF16_BLOCK,
        }
    }
}

/// Where the scales of block `b` of row `r` (of `cols`) are among a tensor's scales.
#[inline(always)]
fn scale_range(code: Code8, block: usize, cols: usize, (r, b): (usize, usize)) -> Range<usize> {
    let w = code.width();
    let start = (r * cols.div_ceil(block) + b) * w;
    start..start + w
}

/// Sweep 2 of some whole rows with packed momentum: each row's momentum and instability sum,
/// block by block, `next` row statistics, column terms added to `sums`.
#[inline(always)]
pub(super) fn momentum<S: Simd, T: Float, G: Element<Compute = T>>(
    o: Ops<S, T>,
    (g, mut m): (&[G], Moments<'_, T>),
    cols: usize,
    f: Factors<'_, T>,
    (old, next): (&[T], &mut [T]),
    sums: &mut [T],
    k: &Coefficients<T>,
) {
    let n = T::from_f64(cols as f64);
    let block = m.block();
    let mut stash = [T::zero(); MAX_BLOCK];
    let g_all = g;
    for (r, (g, (&old, next))) in g.chunks_exact(cols).zip(old.iter().zip(next)).enumerate() {
        let rf_d = f.rf[r] / f.d;
        let mut s = T::zero();
        for (b, at) in (0..cols).step_by(block).enumerate() {
            let end = cols.min(at + block);
            let buf = &mut stash[..end - at];
            prefetch::ahead_span(g_all, r * cols + at, end - at);
            m.prefetch(r * cols + at, end - at);
            m.load((r, cols), (b, at), buf);
            let (cf, col) = (&f.cf[at..end], &mut sums[at..end]);
            let [sum] = momentum_rows::<S, T, G, 1, false>(
                o,
                ([&g[at..end]], [&mut *buf]),
                nothing_follows(),
                [rf_d],
                cf,
                k,
                col,
            );
            s = s + sum;
            m.store((r, cols), (b, at), buf);
        }
        *next = average(old, s, n, k.beta3, k.one_minus_beta3);
    }
}

/// Sweep 3 of some whole rows with packed momentum: the parameters (`start`: the flat index of
/// `p[0]` in its tensor). Returns whether every parameter written is finite (16-bit ones
/// checked a row at a time, as `rows::apply` does).
#[inline(always)]
pub(super) fn apply<S: Simd, T: Float, P: Element<Compute = T>>(
    o: Ops<S, T>,
    (p, m): (&mut [P], Moments<'_, T>),
    cols: usize,
    (rf, cf): (&[T], &[T]),
    start: usize,
    k: &Coefficients<T>,
) -> bool {
    let block = m.block();
    let mut stash = [T::zero(); MAX_BLOCK];
    let mut finite = true;
    for (r, &rf) in rf.iter().enumerate().take(p.len() / cols.max(1)) {
        for (b, at) in (0..cols).step_by(block).enumerate() {
            let end = cols.min(at + block);
            let buf = &mut stash[..end - at];
            let flat = r * cols + at;
            prefetch::ahead_span(&*p, flat, end - at);
            m.prefetch(flat, end - at);
            m.load((r, cols), (b, at), buf);
            let rows = ([&mut p[flat..r * cols + end]], [&*buf]);
            let f = ([rf], &cf[at..end]);
            apply_rows::<S, T, P, 1, false>(o, rows, nothing_follows(), f, start + flat, k);
        }
        finite &= written_finite(&p[r * cols..(r + 1) * cols]);
    }
    finite
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_with_their_scales() {
        let (mut codes, mut scales) = ([0u8; 3 * 70], [0.0f32; 3 * 3 * 2]);
        let m = Moments::Int8 {
            codes: &mut codes,
            scales: &mut scales,
            code: Code8::MinMax,
            block: 32,
        };
        // 70 columns: 3 blocks of 32 per row, two scales each
        let pieces: heapless::Vec<usize, 4> = m
            .chunks(2, 70)
            .map(|p| match p {
                Moments::Int8 { codes, scales, .. } => codes.len() * 100 + scales.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(pieces, [140 * 100 + 12, 70 * 100 + 6]);
    }
}
