//! How a tensor is stepped ([`Layout`]: factored or element-wise) and where each piece of its
//! state lives in a state buffer ([`StateLayout`]): the one place that knows the offsets and the
//! reference's names, for the borrowed state views, the sweeps' workspace, the owned optimizer,
//! checkpoints and the GPU plan alike.

use core::ops::Range;

use crate::Momentum;

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

/// The reference's state names of a factored tensor, in buffer order.
pub const FACTORED_KEYS: [&str; 5] = [
    "exp_avg",
    "exp_avg_sq_row",
    "exp_avg_sq_col",
    "exp_avg_res_row",
    "exp_avg_res_col",
];

/// The name of the scales of 8-bit momentum ([`crate::Momentum::Int8`]), after `exp_avg`.
pub const SCALE_KEY: &str = "exp_avg_scale";

/// The reference's state names of a vector (and of AdamW's state), in buffer order.
pub const VECTOR_KEYS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

/// The shape of a named piece of state, relative to the parameter's dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceDims {
    /// The parameter's dims (`exp_avg`, a vector's `exp_avg_sq`).
    Param,
    /// Row statistics: the dims without the last (`dims[..rank-1]`).
    Rows,
    /// Column statistics: the dims without the second-to-last.
    Cols,
    /// The scales of 8-bit momentum ([`crate::Momentum::Int8`]): the dims without the last,
    /// then the blocks per row, then (when more than one) the scales per block.
    Blocks {
        /// Blocks per row.
        blocks: usize,
        /// Scales per block.
        width: usize,
    },
}

impl PieceDims {
    /// The piece's dims for a parameter of `dims`, in order. A factored piece needs rank >= 2;
    /// for a smaller rank the parameter's dims are returned.
    pub fn of(self, dims: &[usize]) -> impl Iterator<Item = usize> + '_ {
        let rank = dims.len();
        let (skip, extra) = match self {
            PieceDims::Rows if rank >= 2 => (Some(rank - 1), None),
            PieceDims::Cols if rank >= 2 => (Some(rank - 2), None),
            PieceDims::Blocks { blocks, width } if rank >= 2 => {
                let width = (width > 1).then_some(width);
                (Some(rank - 1), Some([Some(blocks), width]))
            }
            _ => (None, None),
        };
        dims.iter()
            .enumerate()
            .filter(move |&(i, _)| Some(i) != skip)
            .map(|(_, &d)| d)
            .chain(extra.into_iter().flatten().flatten())
    }
}

/// One named piece of a tensor's state: the reference's name, its place in the state buffer and
/// its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The reference's name (`exp_avg`, `exp_avg_sq_row`, ...).
    pub key: &'static str,
    /// Its elements in the state buffer.
    pub range: Range<usize>,
    /// Its shape relative to the parameter's.
    pub dims: PieceDims,
    /// What its words hold.
    pub dtype: PieceType,
}

/// What the words of a piece of state hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PieceType {
    /// Values of the compute type, one per word.
    Compute,
    /// bfloat16 values, two per 4-byte word ([`crate::Momentum::Bf16`]).
    Bf16,
    /// 8-bit codes, four per 4-byte word ([`crate::Momentum::Int8`]).
    U8,
}

/// Where every piece of one tensor's CAME state lives in its state buffer.
///
/// The buffer holds, in order: `exp_avg` (the momentum, `numel` values); for a factored tensor
/// `exp_avg_sq_row`, `exp_avg_sq_col`, `exp_avg_res_row`, `exp_avg_res_col` (`batch x rows` or
/// `batch x cols` each), then the workspace a step uses instead of allocating (new row and column
/// statistics and row and column factors of every matrix, and per lane a column sum and a
/// weighted column sum, each a block and a compensated total); for a vector `exp_avg_sq` (`numel` values) and no workspace. The named pieces
/// come first and are contiguous: `..named_len()` is what checkpoints and the GPU hold.
///
/// ```
/// use came::Shape;
/// let layout = Shape::new(&[4, 3])?.state_layout();
/// assert_eq!(layout.exp_avg(), 0..12);
/// let keys: Vec<_> = layout.pieces().iter().map(|p| (p.key, p.range.clone())).collect();
/// assert_eq!(keys[1], ("exp_avg_sq_row", 12..16));
/// assert_eq!(keys[4], ("exp_avg_res_col", 23..26));
/// assert_eq!(layout.named_len(), 26);
/// assert_eq!(layout.len(), came::state_len(&[4, 3]));
/// # Ok::<(), came::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateLayout {
    layout: Layout,
    lanes: usize,
    numel: usize,
    named: usize,
    len: usize,
    /// How `exp_avg` is stored, the words it takes and the words of its 8-bit scales.
    momentum: Momentum,
    momentum_words: usize,
    scale_words: usize,
}

/// The workspace of a factored tensor, as ranges of its state buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Workspace {
    /// New row statistics of every matrix (`batch x rows`), checked before they are committed.
    pub next_row: Range<usize>,
    /// New column statistics of every matrix (`batch x cols`).
    pub next_col: Range<usize>,
    /// Row factors of every matrix (`batch x rows`; those of whole groups of a 3x3 batch in
    /// the layout of the lanes of its vector kernel).
    pub row_factors: Range<usize>,
    /// Column factors of every matrix (`batch x cols`; likewise).
    pub col_factors: Range<usize>,
    /// A column sum per lane: block and compensated total (`lanes x 2 x cols`).
    pub col_sums: Range<usize>,
    /// A weighted column sum per lane, likewise (`lanes x 2 x cols`).
    pub weighted_sums: Range<usize>,
}

impl StateLayout {
    /// The layout of a tensor stepped as `layout` in `lanes` lanes ([`crate::Shape::lanes`]);
    /// `None` when a length overflows `usize`. Users get it from
    /// [`crate::Shape::state_layout`].
    #[must_use]
    pub(crate) const fn new(layout: Layout, lanes: usize) -> Option<Self> {
        let (numel, named, workspace) = match layout {
            Layout::Vector { len } => match len.checked_mul(2) {
                Some(named) => (len, named, 0),
                None => return None,
            },
            Layout::Factored { batch, rows, cols } => {
                let (Some(numel), Some(stats), Some(per_lane)) = (
                    checked_mul3(batch, rows, cols),
                    checked_stats(batch, rows, cols),
                    checked_mul3(4, cols, lanes),
                ) else {
                    return None;
                };
                // the statistics, and as much again for the new statistics and the factors
                let (Some(named), Some(workspace)) =
                    (numel.checked_add(stats), stats.checked_add(per_lane))
                else {
                    return None;
                };
                (numel, named, workspace)
            }
        };
        match named.checked_add(workspace) {
            Some(len) => Some(Self {
                layout,
                lanes,
                numel,
                named,
                len,
                momentum: Momentum::Full,
                momentum_words: numel,
                scale_words: 0,
            }),
            None => None,
        }
    }

    /// This layout with `exp_avg` stored as `momentum` where the rule of [`crate::momentum`]
    /// applies (the same layout elsewhere); `None` when a length overflows `usize`.
    #[must_use]
    pub(crate) const fn with_momentum(self, momentum: Momentum) -> Option<Self> {
        let Layout::Factored { batch, rows, cols } = self.layout else {
            return Some(self);
        };
        let momentum = momentum.for_tensor(true, self.numel, cols);
        let Some(all_rows) = batch.checked_mul(rows) else {
            return None;
        };
        let (m, scales) = match momentum.packed_words(self.numel, all_rows, cols) {
            Some(words) => words,
            None => (self.numel, 0),
        };
        // the statistics and the workspace keep their lengths
        let rest = self.named - self.momentum_words - self.scale_words;
        let workspace = self.len - self.named;
        let Some(named) = m.checked_add(scales) else {
            return None;
        };
        let Some(named) = named.checked_add(rest) else {
            return None;
        };
        let Some(len) = named.checked_add(workspace) else {
            return None;
        };
        Some(Self {
            named,
            len,
            momentum,
            momentum_words: m,
            scale_words: scales,
            ..self
        })
    }

    /// How this tensor's momentum is stored.
    #[must_use]
    pub const fn momentum(&self) -> Momentum {
        self.momentum
    }

    /// How the tensor is stepped.
    pub(crate) const fn layout(&self) -> Layout {
        self.layout
    }

    /// Elements of the parameter.
    pub(crate) const fn numel(&self) -> usize {
        self.numel
    }

    /// Work lanes the tensor is cut into.
    pub(crate) const fn lanes(&self) -> usize {
        self.lanes
    }

    /// Elements of the whole state buffer, workspace included.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (a vector of no elements).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements of the named pieces, which come first in the buffer: the state proper, without
    /// the workspace.
    #[must_use]
    pub const fn named_len(&self) -> usize {
        self.named
    }

    /// The momentum `exp_avg`, like the parameter.
    #[must_use]
    pub const fn exp_avg(&self) -> Range<usize> {
        0..self.momentum_words
    }

    /// The named pieces under the reference's names, in buffer order ([`FACTORED_KEYS`] or
    /// [`VECTOR_KEYS`]), with the 8-bit momentum's scales ([`SCALE_KEY`]) after `exp_avg`.
    #[must_use]
    pub fn pieces(&self) -> heapless::Vec<Piece, 6> {
        let mut out = heapless::Vec::new();
        let mut at = 0;
        let mut push = |key, len, dims, dtype| {
            // at most six pieces: capacity 6 suffices
            let _ = out.push(Piece {
                key,
                range: at..at + len,
                dims,
                dtype,
            });
            at += len;
        };
        let compute = PieceType::Compute;
        match self.layout {
            Layout::Vector { len } => {
                push(VECTOR_KEYS[0], len, PieceDims::Param, compute);
                push(VECTOR_KEYS[1], len, PieceDims::Param, compute);
            }
            Layout::Factored { batch, rows, cols } => {
                let (r, c) = (batch * rows, batch * cols);
                let m = (FACTORED_KEYS[0], self.momentum_words, PieceDims::Param);
                match self.momentum {
                    Momentum::Bf16 => push(m.0, m.1, m.2, PieceType::Bf16),
                    Momentum::Int8 { code, block } => {
                        push(m.0, m.1, m.2, PieceType::U8);
                        let blocks = cols.div_ceil(block as usize);
                        let dims = PieceDims::Blocks {
                            blocks,
                            width: code.width(),
                        };
                        push(SCALE_KEY, self.scale_words, dims, compute);
                    }
                    _ => push(m.0, m.1, m.2, compute),
                }
                push(FACTORED_KEYS[1], r, PieceDims::Rows, compute);
                push(FACTORED_KEYS[2], c, PieceDims::Cols, compute);
                push(FACTORED_KEYS[3], r, PieceDims::Rows, compute);
                push(FACTORED_KEYS[4], c, PieceDims::Cols, compute);
            }
        }
        out
    }

    /// The piece named `key`, if this layout has one.
    #[must_use]
    pub fn piece(&self, key: &str) -> Option<Piece> {
        self.pieces().into_iter().find(|p| p.key == key)
    }

    /// The workspace of a factored tensor (empty ranges for a vector, which has none).
    pub(crate) fn workspace(&self) -> Workspace {
        let (r, c, l) = match self.layout {
            Layout::Factored { batch, rows, cols } => {
                (batch * rows, batch * cols, 2 * self.lanes * cols)
            }
            Layout::Vector { .. } => (0, 0, 0),
        };
        let mut at = self.named;
        let mut next = |len| {
            at += len;
            at - len..at
        };
        Workspace {
            next_row: next(r),
            next_col: next(c),
            row_factors: next(r),
            col_factors: next(c),
            col_sums: next(l),
            weighted_sums: next(l),
        }
    }
}

const fn checked_mul3(a: usize, b: usize, c: usize) -> Option<usize> {
    match a.checked_mul(b) {
        Some(ab) => ab.checked_mul(c),
        None => None,
    }
}

/// `2 batch (rows + cols)`: the four statistics of every matrix.
const fn checked_stats(batch: usize, rows: usize, cols: usize) -> Option<usize> {
    match rows.checked_add(cols) {
        Some(rc) => checked_mul3(2, batch, rc),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factored(batch: usize, rows: usize, cols: usize, lanes: usize) -> StateLayout {
        StateLayout::new(Layout::Factored { batch, rows, cols }, lanes).unwrap()
    }

    #[test]
    fn pieces_are_contiguous_and_in_the_reference_order() {
        let l = factored(3, 4, 5, 2);
        let pieces = l.pieces();
        let keys: heapless::Vec<&str, 5> = pieces.iter().map(|p| p.key).collect();
        assert_eq!(keys.as_slice(), &FACTORED_KEYS);
        let lens: heapless::Vec<usize, 5> = pieces.iter().map(|p| p.range.len()).collect();
        assert_eq!(lens.as_slice(), &[60, 12, 15, 12, 15]);
        let mut at = 0;
        for p in &pieces {
            assert_eq!(p.range.start, at);
            at = p.range.end;
        }
        assert_eq!(at, l.named_len());
        assert_eq!(l.piece("exp_avg_res_row").unwrap().range, 87..99);
        assert_eq!(l.piece("exp_avg_sq"), None);
    }

    #[test]
    fn the_workspace_follows_the_named_pieces() {
        let l = factored(3, 4, 5, 2);
        let w = l.workspace();
        assert_eq!(w.next_row, 114..126);
        assert_eq!(w.next_col, 126..141);
        assert_eq!(w.row_factors, 141..153);
        assert_eq!(w.col_factors, 153..168);
        assert_eq!(w.col_sums, 168..188);
        assert_eq!(w.weighted_sums, 188..208);
        assert_eq!(l.len(), 208);
    }

    #[test]
    fn vectors_have_two_pieces_and_no_workspace() {
        let l = StateLayout::new(Layout::Vector { len: 7 }, 1).unwrap();
        let pieces = l.pieces();
        assert_eq!(pieces[0].range, 0..7);
        assert_eq!(
            (pieces[1].key, pieces[1].range.clone()),
            ("exp_avg_sq", 7..14)
        );
        assert_eq!((l.len(), l.named_len()), (14, 14));
        let w = l.workspace();
        assert!(w.next_row.is_empty() && w.weighted_sums.is_empty());
    }

    #[test]
    fn lengths_that_overflow_are_none() {
        let big = usize::MAX / 2 + 1;
        assert!(StateLayout::new(Layout::Vector { len: big }, 1).is_none());
        let f = |b, r, c| {
            StateLayout::new(
                Layout::Factored {
                    batch: b,
                    rows: r,
                    cols: c,
                },
                1,
            )
        };
        assert!(f(1, big, 2).is_none());
        assert!(f(1, big, 0).is_none()); // the statistics still overflow
        assert!(f(3, 1 << 20, 1 << 20).is_some());
        assert!(
            StateLayout::new(
                Layout::Factored {
                    batch: 1,
                    rows: 2,
                    cols: big
                },
                16
            )
            .is_none()
        );
    }

    #[test]
    fn piece_dims_follow_the_reference() {
        let dims = [2, 3, 4, 5];
        let of = |d: PieceDims| d.of(&dims).collect::<heapless::Vec<usize, 4>>();
        assert_eq!(of(PieceDims::Param).as_slice(), &[2, 3, 4, 5]);
        assert_eq!(of(PieceDims::Rows).as_slice(), &[2, 3, 4]);
        assert_eq!(of(PieceDims::Cols).as_slice(), &[2, 3, 5]);
        assert_eq!(PieceDims::Rows.of(&[7]).count(), 1);
    }
}
