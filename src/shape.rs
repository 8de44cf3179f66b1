//! Tensor shapes: which tensors are factored, how big their state is, how work is split.

use crate::Error;

use crate::lanes::{MAX_LANES, MIN_LANE_ELEMS};

/// How a tensor is stepped: factored over its last two dims, or element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Rank 0 and 1: one second-moment value per element, no confidence term.
    Vector {
        /// Number of elements (1 for a 0-d scalar).
        len: usize,
    },
    /// Rank >= 2: `batch` independent `rows x cols` matrices (the leading dims multiplied out),
    /// each with row and column statistics.
    Factored {
        /// Product of the leading dims (1 for a matrix).
        batch: usize,
        /// Second-to-last dim.
        rows: usize,
        /// Last dim.
        cols: usize,
    },
}

/// A tensor's shape as the optimizer sees it, with every size checked to fit in `usize`.
///
/// ```
/// use came::{Layout, Shape};
/// let conv = Shape::new(&[64, 32, 3, 3])?;
/// assert_eq!(conv.layout(), Layout::Factored { batch: 2048, rows: 3, cols: 3 });
/// assert_eq!(Shape::new(&[])?.layout(), Layout::Vector { len: 1 });
/// # Ok::<(), came::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    layout: Layout,
    numel: usize,
    state_len: usize,
}

impl Shape {
    /// Builds a shape from its dims, row-major, any rank (`&[]` is a 0-d scalar).
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] if the element count or the state length overflows `usize`.
    pub const fn new(dims: &[usize]) -> Result<Self, Error> {
        let rank = dims.len();
        if rank < 2 {
            let len = if rank == 0 { 1 } else { dims[0] };
            return Self::vector(len);
        }
        let mut batch = 1usize;
        let mut i = 0;
        while i < rank - 2 {
            batch = match batch.checked_mul(dims[i]) {
                Some(b) => b,
                None => return Err(Error::ShapeOverflow),
            };
            i += 1;
        }
        Self::factored(batch, dims[rank - 2], dims[rank - 1])
    }

    /// A rank-1 tensor of `len` elements.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] if the state length (`2 * len`) overflows `usize`.
    pub const fn vector(len: usize) -> Result<Self, Error> {
        match len.checked_mul(2) {
            Some(state_len) => Ok(Self {
                layout: Layout::Vector { len },
                numel: len,
                state_len,
            }),
            None => Err(Error::ShapeOverflow),
        }
    }

    /// `batch` matrices of `rows x cols`, factored over rows and columns.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] if the element count or the state length overflows `usize`.
    pub const fn factored(batch: usize, rows: usize, cols: usize) -> Result<Self, Error> {
        let Some(numel) = checked_product(batch, rows, cols) else {
            return Err(Error::ShapeOverflow);
        };
        let mut shape = Self {
            layout: Layout::Factored { batch, rows, cols },
            numel,
            state_len: 0,
        };
        // momentum + two pairs of row/column statistics + workspace
        let stats = match checked_sum(rows, cols) {
            Some(rc) => match rc.checked_mul(batch) {
                Some(s) => s.checked_mul(2),
                None => None,
            },
            None => None,
        };
        let total = match (stats, shape.workspace_len()) {
            (Some(s), Some(w)) => match numel.checked_add(s) {
                Some(t) => t.checked_add(w),
                None => None,
            },
            _ => None,
        };
        match total {
            Some(t) => {
                shape.state_len = t;
                Ok(shape)
            }
            None => Err(Error::ShapeOverflow),
        }
    }

    /// Factored or element-wise, with the sizes involved.
    #[must_use]
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether the tensor gets row/column statistics and the confidence term (rank >= 2).
    #[must_use]
    pub const fn is_factored(&self) -> bool {
        matches!(self.layout, Layout::Factored { .. })
    }

    /// Number of elements of the parameter (and of the gradient).
    #[must_use]
    pub const fn numel(&self) -> usize {
        self.numel
    }

    /// Exact length of the CAME state buffer for this shape: the momentum (`numel`), then for a
    /// factored tensor `2 * batch * (rows + cols)` statistics and an O(rows + cols) workspace,
    /// for a vector `numel` second-moment values.
    #[must_use]
    pub const fn state_len(&self) -> usize {
        self.state_len
    }

    /// Number of independent work lanes a step of this tensor is cut into (1 to 16): groups of
    /// rows of a matrix, of matrices of a batch, or of elements of a vector. The cut depends on
    /// the shape alone, so a parallel step uses at most this many threads on the tensor and
    /// gives bit-identical results for any thread count. Tensors under 64 Ki elements are one
    /// lane.
    #[must_use]
    pub const fn lanes(&self) -> usize {
        let (units, numel) = match self.layout {
            Layout::Vector { len } => (len, len),
            Layout::Factored { batch, rows, .. } => {
                (if batch == 1 { rows } else { batch }, self.numel)
            }
        };
        let by_size = numel / MIN_LANE_ELEMS;
        let lanes = if units < by_size { units } else { by_size };
        if lanes == 0 {
            1
        } else if lanes > MAX_LANES {
            MAX_LANES
        } else {
            lanes
        }
    }

    /// Workspace elements at the end of the state; `None` on overflow.
    const fn workspace_len(&self) -> Option<usize> {
        match self.layout {
            Layout::Vector { .. } => Some(0),
            Layout::Factored { batch, rows, cols } => {
                // new statistics and their factors for every matrix (committed or used only
                // once checked), and two column partial sums per lane
                let per_batch = match checked_sum(rows, cols) {
                    Some(rc) => match rc.checked_mul(batch) {
                        Some(x) => x.checked_mul(2),
                        None => None,
                    },
                    None => None,
                };
                let per_lane = match cols.checked_mul(self.lanes()) {
                    Some(x) => x.checked_mul(2),
                    None => None,
                };
                match (per_batch, per_lane) {
                    (Some(a), Some(b)) => a.checked_add(b),
                    _ => None,
                }
            }
        }
    }
}

const fn checked_product(a: usize, b: usize, c: usize) -> Option<usize> {
    match a.checked_mul(b) {
        Some(ab) => ab.checked_mul(c),
        None => None,
    }
}

const fn checked_sum(a: usize, b: usize) -> Option<usize> {
    a.checked_add(b)
}

/// Length of the CAME state buffer for `dims`, usable in const context to size static arrays.
///
/// ```
/// static mut STATE: [f32; came::state_len(&[16, 8])] = [0.0; came::state_len(&[16, 8])];
/// ```
///
/// # Panics
/// If the size overflows `usize` (at compile time in a const context); [`Shape::new`] is the
/// fallible form.
#[must_use]
pub const fn state_len(dims: &[usize]) -> usize {
    match Shape::new(dims) {
        Ok(shape) => shape.state_len(),
        Err(_) => panic!("shape size overflows usize"),
    }
}
