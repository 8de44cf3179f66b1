//! A factored tensor's state buffer cut into its named pieces and its workspace, as
//! [`StateLayout`] lays them out, and what every way of stepping it shares: the statistics
//! check before a step and the commit of new statistics.

use super::packed::Moments;
use crate::check::valid_statistics;
use crate::layout::{SCALE_KEY, StateLayout};
use crate::{Float, Layout, Momentum, Shape};

/// A factored tensor's sizes and its number of lanes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
    pub lanes: usize,
}

/// The four statistics of the state, `batch x rows` or `batch x cols` each.
pub(super) struct Stats<'s, T> {
    pub sq_row: &'s mut [T],
    pub sq_col: &'s mut [T],
    pub res_row: &'s mut [T],
    pub res_col: &'s mut [T],
}

/// The workspace: new statistics and factors of every matrix, per-lane column sums.
pub(super) struct Work<'s, T> {
    pub next_row: &'s mut [T],
    pub next_col: &'s mut [T],
    pub row_factors: &'s mut [T],
    pub col_factors: &'s mut [T],
    pub col_sums: &'s mut [T],
    pub weighted_sums: &'s mut [T],
}

/// The state buffer cut into its pieces.
pub(super) struct Parts<'s, T> {
    pub m: Moments<'s, T>,
    pub stats: Stats<'s, T>,
    pub work: Work<'s, T>,
}

/// A factored tensor's sizes and its state buffer (of `shape.state_len()` elements) cut into
/// its pieces; `None` for a vector, whose state is two plain halves.
pub(super) fn factored<'s, T: Float>(
    shape: &Shape,
    state: &'s mut [T],
) -> Option<(Dims, Parts<'s, T>)> {
    let Layout::Factored { batch, rows, cols } = shape.layout() else {
        return None;
    };
    let lanes = shape.lanes();
    let dims = Dims {
        batch,
        rows,
        cols,
        lanes,
    };
    Some((dims, cut(&shape.state_layout(), state)))
}

/// A factored tensor's state buffer (of `layout.len()` elements) cut into its pieces.
fn cut<'s, T: Float>(layout: &StateLayout, state: &'s mut [T]) -> Parts<'s, T> {
    let w = layout.workspace();
    let numel = layout.numel();
    let (m, rest) = state.split_at_mut(layout.exp_avg().end);
    let scale_len = layout.piece(SCALE_KEY).map_or(0, |p| p.range.len());
    let (scales, rest) = rest.split_at_mut(scale_len);
    let stats = layout
        .pieces()
        .into_iter()
        .rev()
        .take(4)
        .map(|p| p.range.len());
    let mut lens = [0; 10];
    for (len, piece) in lens
        .iter_mut()
        .zip(stats.collect::<heapless::Vec<_, 4>>().into_iter().rev())
    {
        *len = piece;
    }
    let workspace = [
        w.next_row,
        w.next_col,
        w.row_factors,
        w.col_factors,
        w.col_sums,
        w.weighted_sums,
    ];
    for (len, range) in lens[4..].iter_mut().zip(workspace) {
        *len = range.len();
    }
    let [sq_row, sq_col, res_row, res_col, a, b, c, d, e, f] = cut_lens(rest, lens);
    let m = match layout.momentum() {
        Momentum::Bf16 => Moments::Bf16(&mut bytemuck::cast_slice_mut(m)[..numel]),
        Momentum::Int8 { code, block } => Moments::Int8 {
            codes: &mut bytemuck::cast_slice_mut(m)[..numel],
            scales,
            code,
            block: usize::from(block),
        },
        _ => Moments::Full(m),
    };
    Parts::assemble(m, [sq_row, sq_col, res_row, res_col], [a, b, c, d, e, f])
}

/// The first `lens[i]` elements after the ones before, for each `i`: a buffer cut into pieces.
pub(super) fn cut_lens<T, const N: usize>(buf: &mut [T], lens: [usize; N]) -> [&mut [T]; N] {
    let mut rest = buf;
    lens.map(|len| {
        let (piece, tail) = core::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        piece
    })
}

impl<T: Float> Stats<'_, T> {
    /// Whether every statistic is a possible one (finite, not negative).
    pub(super) fn valid(&self) -> bool {
        [&self.sq_row, &self.sq_col, &self.res_row, &self.res_col]
            .into_iter()
            .all(|s| valid_statistics(s))
    }
}

impl<'s, T: Float> Parts<'s, T> {
    /// The momentum, the four statistics (rows and columns of the squared gradient, then of
    /// the instability) and the six pieces of the workspace, in [`Work`]'s order.
    pub(super) fn assemble(
        m: Moments<'s, T>,
        [sq_row, sq_col, res_row, res_col]: [&'s mut [T]; 4],
        [
            next_row,
            next_col,
            row_factors,
            col_factors,
            col_sums,
            weighted_sums,
        ]: [&'s mut [T]; 6],
    ) -> Self {
        Parts {
            m,
            stats: Stats {
                sq_row,
                sq_col,
                res_row,
                res_col,
            },
            work: Work {
                next_row,
                next_col,
                row_factors,
                col_factors,
                col_sums,
                weighted_sums,
            },
        }
    }

    /// Commits the new squared-gradient statistics left in the workspace by sweep 1.
    pub(super) fn commit_sq(&mut self) {
        self.stats.sq_row.copy_from_slice(self.work.next_row);
        self.stats.sq_col.copy_from_slice(self.work.next_col);
    }

    /// Commits the new instability statistics left in the workspace by sweep 2.
    pub(super) fn commit_res(&mut self) {
        self.stats.res_row.copy_from_slice(self.work.next_row);
        self.stats.res_col.copy_from_slice(self.work.next_col);
    }
}
