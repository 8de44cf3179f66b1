//! A factored tensor's state buffer cut into its named pieces and its workspace, as
//! [`StateLayout`] lays them out, and what every way of stepping it shares: the statistics
//! check before a step and the commit of new statistics.

use crate::check::valid_statistics;
use crate::layout::StateLayout;
use crate::{Float, Layout, Shape};

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
    pub m: &'s mut [T],
    pub stats: Stats<'s, T>,
    pub work: Work<'s, T>,
}

/// A factored tensor's sizes and its state buffer (of `shape.state_len()` elements) cut into
/// its pieces; `None` for a vector, whose state is two plain halves.
pub(super) fn factored<'s, T>(shape: &Shape, state: &'s mut [T]) -> Option<(Dims, Parts<'s, T>)> {
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
fn cut<'s, T>(layout: &StateLayout, state: &'s mut [T]) -> Parts<'s, T> {
    let w = layout.workspace();
    let mut lens = [0; 11];
    for (len, piece) in lens.iter_mut().zip(layout.pieces()) {
        *len = piece.range.len();
    }
    let workspace = [
        w.next_row,
        w.next_col,
        w.row_factors,
        w.col_factors,
        w.col_sums,
        w.weighted_sums,
    ];
    for (len, range) in lens[5..].iter_mut().zip(workspace) {
        *len = range.len();
    }
    let mut rest = state;
    let [m, sq_row, sq_col, res_row, res_col, a, b, c, d, e, f] = lens.map(|len| {
        let (piece, tail) = core::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        piece
    });
    Parts {
        m,
        stats: Stats {
            sq_row,
            sq_col,
            res_row,
            res_col,
        },
        work: Work {
            next_row: a,
            next_col: b,
            row_factors: c,
            col_factors: d,
            col_sums: e,
            weighted_sums: f,
        },
    }
}

impl<T: Float> Stats<'_, T> {
    /// Whether every statistic is a possible one (finite, not negative).
    pub(super) fn valid(&self) -> bool {
        [&self.sq_row, &self.sq_col, &self.res_row, &self.res_col]
            .into_iter()
            .all(|s| valid_statistics(s))
    }
}

impl<T: Float> Parts<'_, T> {
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
