//! Tensor shapes: which tensors are factored, how big their state is, how work is split.

use crate::exec::lanes::{MAX_LANES, MIN_LANE_ELEMS};
use crate::layout::{Layout, StateLayout};
use crate::{Error, Momentum};

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
    /// The layout, element count and lanes are the state layout's: kept once.
    state: StateLayout,
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
        Self::with_layout(Layout::Vector { len }, len)
    }

    /// `batch` matrices of `rows x cols`, factored over rows and columns.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] if the element count or the state length overflows `usize`.
    pub const fn factored(batch: usize, rows: usize, cols: usize) -> Result<Self, Error> {
        let numel = match batch.checked_mul(rows) {
            Some(br) => br.checked_mul(cols),
            None => None,
        };
        match numel {
            Some(numel) => Self::with_layout(Layout::Factored { batch, rows, cols }, numel),
            None => Err(Error::ShapeOverflow),
        }
    }

    const fn with_layout(layout: Layout, numel: usize) -> Result<Self, Error> {
        match StateLayout::new(layout, lanes_of(layout, numel)) {
            Some(state) => Ok(Self { state }),
            None => Err(Error::ShapeOverflow),
        }
    }

    /// Factored or element-wise, with the sizes involved.
    #[must_use]
    pub const fn layout(&self) -> Layout {
        self.state.layout()
    }

    /// Whether the tensor gets row/column statistics and the confidence term (rank >= 2).
    #[must_use]
    pub const fn is_factored(&self) -> bool {
        matches!(self.state.layout(), Layout::Factored { .. })
    }

    /// Number of elements of the parameter (and of the gradient).
    #[must_use]
    pub const fn numel(&self) -> usize {
        self.state.numel()
    }

    /// Exact length of the CAME state buffer for this shape: the momentum (`numel`), then for a
    /// factored tensor `2 * batch * (rows + cols)` statistics and an O(rows + cols) workspace,
    /// for a vector `numel` second-moment values.
    #[must_use]
    pub const fn state_len(&self) -> usize {
        self.state.len()
    }

    /// Where each piece of this tensor's state lives in its state buffer, and the reference's
    /// names for them.
    #[must_use]
    pub const fn state_layout(&self) -> StateLayout {
        self.state
    }

    /// Number of independent work lanes a step of this tensor is cut into (1 to 16): groups of
    /// rows of a matrix, of matrices of a batch, or of elements of a vector. The cut depends on
    /// the shape alone, so a parallel step uses at most this many threads on the tensor and
    /// gives bit-identical results for any thread count. Tensors under 64 Ki elements are one
    /// lane.
    #[must_use]
    pub const fn lanes(&self) -> usize {
        self.state.lanes()
    }

    /// This shape with its momentum stored as `momentum` where the rule of
    /// [`crate::momentum`] applies (a factored tensor of at least 4096 elements whose rows have
    /// at least 64); other shapes are returned as they are. The state buffer's length follows
    /// ([`Shape::state_len`]).
    ///
    /// ```
    /// use came::{Momentum, Shape};
    /// let full = Shape::new(&[256, 512])?;
    /// let int8 = full.with_momentum(Momentum::INT8)?;
    /// // a byte and a quarter-word scale per block of 256 instead of a word per element
    /// assert_eq!(full.state_len() - int8.state_len(), 256 * 512 - (256 * 512 / 4 + 256 * 2));
    /// assert_eq!(Shape::new(&[100])?.with_momentum(Momentum::INT8)?, Shape::new(&[100])?);
    /// # Ok::<(), came::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidMomentum`] for a block size [`Momentum::is_valid`] refuses;
    /// [`Error::ShapeOverflow`] if the state's length overflows `usize`.
    pub const fn with_momentum(self, momentum: Momentum) -> Result<Self, Error> {
        if !momentum.is_valid() {
            return Err(Error::InvalidMomentum(momentum));
        }
        match self.state.with_momentum(momentum) {
            Some(state) => Ok(Self { state }),
            None => Err(Error::ShapeOverflow),
        }
    }
}

/// The work lanes of a tensor (see [`Shape::lanes`]).
const fn lanes_of(layout: Layout, numel: usize) -> usize {
    let units = match layout {
        Layout::Vector { len } => len,
        Layout::Factored { batch, rows, .. } => {
            if batch == 1 {
                rows
            } else {
                batch
            }
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
