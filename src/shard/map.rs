//! Which lanes, and so which elements, of each tensor each rank owns.

use core::ops::Range;
use std::vec::Vec;

use crate::exec::lanes::lane_range;
use crate::{Layout, Shape};

/// Which part of each tensor each of `ranks()` ranks owns (the rule: [`crate::shard`]).
///
/// ```
/// use came::Shape;
/// use came::shard::ShardMap;
/// let shapes = [Shape::new(&[1000, 512])?, Shape::new(&[512])?];
/// let map = ShardMap::new(&shapes, 3)?;
/// // the matrix has 15 lanes of rows: 5 per rank
/// assert_eq!(map.elements(0, 0), 0..335 * 512);
/// // the vector has one lane: rank 1 owns it all (the runs turn by one per tensor)
/// assert_eq!(map.elements(1, 1), 0..512);
/// assert!(map.elements(1, 0).is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    ranks: usize,
    shapes: Vec<Shape>,
    /// per tensor, per rank: the lanes it owns (the columns, for a tensor split by columns)
    lanes: Vec<Vec<Range<usize>>>,
    split: Vec<Split>,
}

/// How a tensor is cut over the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Split {
    /// Runs of its lanes: rows of a matrix, matrices of a batch, elements of a vector
    /// ([`ShardMap::elements`]); bit for bit one process's step.
    Rows,
    /// Columns of a matrix (a tensor-parallel layer's weight, [`ShardMap::columns`]); the row
    /// statistics and the norm are combined from `f64` sums, equal to one process's within
    /// rounding.
    Columns,
}

impl ShardMap {
    /// The map of `shapes` over `ranks` ranks.
    ///
    /// # Errors
    /// [`super::ShardError::NoRanks`] for `ranks == 0`; [`super::ShardError::PackedMomentum`]
    /// for a shape with bf16 or 8-bit momentum (sharding takes full-precision momentum).
    pub fn new(shapes: &[Shape], ranks: usize) -> Result<Self, super::ShardError> {
        if ranks == 0 {
            return Err(super::ShardError::NoRanks);
        }
        if let Some(tensor) = shapes
            .iter()
            .position(|s| s.state_layout().momentum() != crate::Momentum::Full)
        {
            return Err(super::ShardError::PackedMomentum { tensor });
        }
        let mut map = Self {
            ranks,
            shapes: Vec::new(),
            lanes: Vec::new(),
            split: Vec::new(),
        };
        for &shape in shapes {
            map.push(shape);
        }
        Ok(map)
    }

    /// Adds a tensor (its ownership does not depend on the others'); returns its position.
    pub(crate) fn push(&mut self, shape: Shape) -> usize {
        let (t, ranks) = (self.shapes.len(), self.ranks);
        let lanes = if shape.numel() == 0 { 0 } else { shape.lanes() };
        self.lanes.push(
            (0..ranks)
                .map(|rank| {
                    let run = (rank + ranks - t % ranks) % ranks;
                    let (start, end) = lane_range(lanes, ranks, run);
                    start..end
                })
                .collect(),
        );
        self.shapes.push(shape);
        self.split.push(Split::Rows);
        t
    }

    /// Adds a matrix split by columns: rank `r` owns the `r`-th of `ranks` runs of columns
    /// whose lengths differ by at most one (the longer first), as a tensor-parallel layer
    /// splits its weight; returns its position.
    pub(crate) fn push_columns(&mut self, shape: Shape, cols: usize) -> usize {
        let (t, ranks) = (self.shapes.len(), self.ranks);
        self.lanes.push(
            (0..ranks)
                .map(|rank| {
                    let (start, end) = lane_range(cols, ranks, rank);
                    start..end
                })
                .collect(),
        );
        self.shapes.push(shape);
        self.split.push(Split::Columns);
        t
    }

    /// How tensor `tensor` is cut.
    ///
    /// # Panics
    /// If `tensor` is out of range.
    pub fn split(&self, tensor: usize) -> Split {
        self.split[tensor]
    }

    /// The columns of tensor `tensor` that rank `rank` owns, for a matrix split by columns
    /// (the rank holds every row of them, `rows x columns.len()` row-major); `None` for a
    /// tensor split by rows.
    ///
    /// # Panics
    /// If `tensor` or `rank` is out of range.
    pub fn columns(&self, tensor: usize, rank: usize) -> Option<Range<usize>> {
        (self.split[tensor] == Split::Columns).then(|| self.lanes[tensor][rank].clone())
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The tensors' shapes.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The lanes of tensor `tensor` that rank `rank` owns (none of a matrix split by
    /// columns).
    ///
    /// # Panics
    /// If `tensor` or `rank` is out of range.
    pub fn lanes(&self, tensor: usize, rank: usize) -> Range<usize> {
        match self.split[tensor] {
            Split::Rows => self.lanes[tensor][rank].clone(),
            Split::Columns => 0..0,
        }
    }

    /// Every rank's lanes of tensor `tensor`, in rank order.
    pub(crate) fn owners(&self, tensor: usize) -> Vec<Range<usize>> {
        self.lanes[tensor].clone()
    }

    /// The flat (row-major) elements of tensor `tensor` that rank `rank` owns and steps: whole
    /// rows of a matrix, whole matrices of a batch, a run of a vector's elements. Empty for a
    /// matrix split by columns, whose elements are no run ([`ShardMap::columns`]).
    ///
    /// # Panics
    /// If `tensor` or `rank` is out of range.
    pub fn elements(&self, tensor: usize, rank: usize) -> Range<usize> {
        let shape = &self.shapes[tensor];
        let lanes = &self.lanes[tensor][rank];
        if lanes.is_empty() || self.split[tensor] == Split::Columns {
            return 0..0;
        }
        let (units, unit) = match shape.layout() {
            Layout::Factored {
                batch: 1,
                rows,
                cols,
            } => (rows, cols),
            Layout::Factored { batch, rows, cols } => (batch, rows * cols),
            Layout::Vector { len } => (len, 1),
        };
        let all = shape.lanes();
        let start = lane_range(units, all, lanes.start).0;
        let end = lane_range(units, all, lanes.end - 1).1;
        start * unit..end * unit
    }
}
