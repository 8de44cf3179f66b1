//! How the momentum `exp_avg` (`m` of Algorithm 1, the one full-size piece of CAME's state) is
//! stored: in the compute type as the reference stores it, in bfloat16, or block-wise in 8 bits
//! as SANA 1.5 trains ("CAME-8bit", Xie et al., arXiv:2501.18427, section 2.3).
//!
//! # Which tensors
//! Only the momentum of large matrices: a factored tensor (rank >= 2) with at least
//! [`MIN_NUMEL`] elements and a last dim of at least [`MIN_COLS`]. Every other tensor (vectors,
//! small matrices, the 3x3 kernels of a convolution) keeps its momentum in the compute type,
//! and the factored statistics always stay there: they are a few numbers per row and column.
//!
//! # Formats
//! The momentum lives in the tensor's state buffer (of `f32`; packed formats need `f32` compute)
//! in the place of the full-precision `exp_avg`, its bytes little-endian on little-endian
//! machines, row-major like the parameter:
//!
//! - [`Momentum::Bf16`]: one bfloat16 per element (rounded to nearest, ties to even); the piece
//!   takes `ceil(numel / 2)` words. Checkpoint: `exp_avg` as safetensors `BF16`.
//! - [`Momentum::Int8`]: each row (the last dim) is cut into blocks of `block` elements (the last
//!   block of a row may be shorter; a block never spans two rows), and each block stores one
//!   byte per element and its scale in `f32`. The codes take `ceil(numel / 4)` words, then the
//!   scales follow as the piece `exp_avg_scale`, shape `[..., rows, blocks_per_row]` for
//!   [`Code8::Absmax`] and `[..., rows, blocks_per_row, 2]` for [`Code8::MinMax`]. Checkpoint:
//!   `exp_avg` as `U8` (the parameter's shape) and `exp_avg_scale` as `F32`.
//!
//! The two 8-bit codes ([`Code8`]), with `x` a block's values, `round` to nearest with ties to
//! even, and every operation in `f32`:
//!
//! | code | stored | encode | decode |
//! |---|---|---|---|
//! | `Absmax` | `s = max|x| / 127` | `q = clamp(round(x * (1 / s)), -127, 127)` as `i8` | `q * s` |
//! | `MinMax` | `lo = min x`, `s = (max x - lo) / 255` | `q = clamp(round((x - lo) * (1 / s)), 0, 255)` as `u8` | `lo + q * s` |
//!
//! A block of zeros (or of one repeated value, for `MinMax`) has `s = 0` and codes 0.

use crate::Float;

/// Tensors with fewer elements keep their momentum in the compute type.
pub const MIN_NUMEL: usize = 4096;

/// Tensors whose last dim is shorter keep their momentum in the compute type.
pub const MIN_COLS: usize = 64;

/// The largest 8-bit block, in elements (a block is staged in a buffer of this size on the
/// stack while it is updated).
pub const MAX_BLOCK: usize = 1024;

/// How the momentum `exp_avg` of the tensors it applies to ([`MIN_NUMEL`], [`MIN_COLS`]) is
/// stored. Give it to a [`crate::Shape`] with [`crate::Shape::with_momentum`], or to the owned
/// optimizer with `Came::set_momentum`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Momentum {
    /// In the compute type (`f32` or `f64`), as the reference stores it (the default).
    #[default]
    Full,
    /// bfloat16, rounded to nearest: half the bytes of `f32`.
    Bf16,
    /// Block-wise 8-bit quantization: a quarter of the bytes of `f32`, plus a scale per block.
    Int8 {
        /// The code of every block.
        code: Code8,
        /// Elements per block along a row: a multiple of 32 from 32 to [`MAX_BLOCK`].
        block: u16,
    },
}

impl Momentum {
    /// The default 8-bit format: [`Code8::Absmax`] in blocks of 256 (measured against
    /// [`Code8::MinMax`] on the main job; README, "16-bit weights and 8-bit momentum").
    pub const INT8: Momentum = Momentum::Int8 {
        code: Code8::Absmax,
        block: 256,
    };

    /// The format a tensor of `rows x cols` matrices (`numel` elements in all, `factored`
    /// or not) stores its momentum in: `self` where the rule of the module applies, else
    /// [`Momentum::Full`].
    #[must_use]
    pub const fn for_tensor(self, factored: bool, numel: usize, cols: usize) -> Momentum {
        if factored && numel >= MIN_NUMEL && cols >= MIN_COLS {
            self
        } else {
            Momentum::Full
        }
    }

    /// Whether the block size is one the format allows.
    #[must_use]
    pub const fn is_valid(self) -> bool {
        match self {
            Momentum::Int8 { block, .. } => {
                let b = block as usize;
                b >= 32 && b <= MAX_BLOCK && b.is_multiple_of(32)
            }
            Momentum::Full | Momentum::Bf16 => true,
        }
    }

    /// Words (of 4 bytes) the momentum of `numel` elements takes in the state buffer, and the
    /// scales of `rows` rows of `cols` (`None`: the compute type's own length, `numel`).
    #[must_use]
    pub(crate) const fn packed_words(
        self,
        numel: usize,
        rows: usize,
        cols: usize,
    ) -> Option<(usize, usize)> {
        match self {
            Momentum::Full => None,
            Momentum::Bf16 => Some((numel.div_ceil(2), 0)),
            Momentum::Int8 { code, block } => {
                let blocks = cols.div_ceil(block as usize);
                Some((numel.div_ceil(4), rows * blocks * code.width()))
            }
        }
    }
}

/// The 8-bit code of a block (see the module's table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code8 {
    /// Signed, symmetric: `q * absmax / 127`, one scale per block.
    #[default]
    Absmax,
    /// Unsigned, between the block's minimum and maximum (the linear code of SANA 1.5):
    /// two numbers per block.
    MinMax,
}

impl Code8 {
    /// Scales stored per block.
    #[must_use]
    pub const fn width(self) -> usize {
        match self {
            Code8::Absmax => 1,
            Code8::MinMax => 2,
        }
    }
}

/// Decodes one block's `codes` into `out` (of the same length) with its `scales`.
#[inline(always)]
pub(crate) fn decode<T: Float>(code: Code8, codes: &[u8], scales: &[T], out: &mut [T]) {
    match code {
        Code8::Absmax => {
            let s = scales[0];
            for (x, &q) in out.iter_mut().zip(codes) {
                *x = T::from_i32(i32::from(q.cast_signed())) * s;
            }
        }
        Code8::MinMax => {
            let (lo, s) = (scales[0], scales[1]);
            for (x, &q) in out.iter_mut().zip(codes) {
                *x = lo + T::from_i32(i32::from(q)) * s;
            }
        }
    }
}

/// Encodes one block of `values` into `codes` and `scales`.
#[inline(always)]
pub(crate) fn encode<T: Float>(code: Code8, values: &[T], codes: &mut [u8], scales: &mut [T]) {
    let zero = T::zero();
    match code {
        Code8::Absmax => {
            let s = T::abs_max(values) / T::from_i32(127);
            let inv = if s > zero { T::one() / s } else { zero };
            let (lo, hi) = (T::from_i32(-127), T::from_i32(127));
            for (q, &x) in codes.iter_mut().zip(values) {
                let c = clamp(x * inv, lo, hi).round_to_i32();
                // within [-127, 127]: the byte of an i8
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let byte = c as u8;
                *q = byte;
            }
            scales[0] = s;
        }
        Code8::MinMax => {
            let (lo, hi) = values
                .iter()
                .fold((T::infinity(), T::neg_infinity()), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let s = (hi - lo) / T::from_i32(255);
            let inv = if s > zero { T::one() / s } else { zero };
            let top = T::from_i32(255);
            for (q, &x) in codes.iter_mut().zip(values) {
                // within [0, 255] after the clamp
                #[allow(clippy::cast_sign_loss)]
                let c = clamp((x - lo) * inv, zero, top).round_to_i32() as u8;
                *q = c;
            }
            scales[0] = lo;
            scales[1] = s;
        }
    }
}

/// `x` within `[lo, hi]`, by comparisons that vectorise (NaN gives `hi`).
#[inline(always)]
fn clamp<T: Float>(x: T, lo: T, hi: T) -> T {
    let x = if x > lo { x } else { lo };
    if x < hi { x } else { hi }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact by construction
mod tests {
    use super::*;

    #[test]
    fn the_rule_quantizes_large_matrices_only() {
        let m = Momentum::INT8;
        assert_eq!(m.for_tensor(true, 64 * 64, 64), m);
        assert_eq!(m.for_tensor(true, 64 * 63, 63), Momentum::Full);
        assert_eq!(m.for_tensor(true, 4095, 4095), Momentum::Full);
        assert_eq!(m.for_tensor(false, 1 << 20, 1 << 20), Momentum::Full);
    }

    #[test]
    fn block_sizes_are_checked() {
        let with = |block| {
            Momentum::Int8 {
                code: Code8::Absmax,
                block,
            }
            .is_valid()
        };
        assert!(with(32) && with(256) && with(1024));
        assert!(!with(0) && !with(16) && !with(100) && !with(2048));
    }

    #[test]
    fn absmax_codes_round_to_nearest_and_keep_the_extremes() {
        let x = [1.0f32, -0.5, 0.25, 0.0, -1.0, 0.004];
        let (mut q, mut s) = ([0u8; 6], [0.0f32; 1]);
        encode(Code8::Absmax, &x, &mut q, &mut s);
        assert_eq!(s[0], 1.0 / 127.0);
        let signed: heapless::Vec<i8, 6> = q.iter().map(|&c| c.cast_signed()).collect();
        // -0.5 * 127 = -63.5: a tie, to even (-64); 0.25 * 127 = 31.75
        assert_eq!(signed, [127, -64, 32, 0, -127, 1]);
        let mut back = [0.0f32; 6];
        decode(Code8::Absmax, &q, &s, &mut back);
        assert_eq!(back[0], 1.0);
        assert_eq!(back[4], -1.0);
        for (b, v) in back.iter().zip(x) {
            assert!((b - v).abs() <= 0.5 / 127.0 + 1e-7, "{b} {v}");
        }
    }

    #[test]
    fn min_max_codes_span_the_block() {
        let x = [2.0f32, 3.0, 2.5, 2.0 + 1.0 / 255.0];
        let (mut q, mut s) = ([0u8; 4], [0.0f32; 2]);
        encode(Code8::MinMax, &x, &mut q, &mut s);
        // 0.5 * (1 / s) is 127.49999 in f32: below the tie
        assert_eq!(q, [0, 255, 127, 1]);
        assert_eq!((s[0], s[1]), (2.0, 1.0 / 255.0));
        let mut back = [0.0f32; 4];
        decode(Code8::MinMax, &q, &s, &mut back);
        assert_eq!(back[0], 2.0);
        for (b, v) in back.iter().zip(x) {
            assert!((b - v).abs() <= 0.5 / 255.0 + 1e-6, "{b} {v}");
        }
    }

    #[test]
    fn constant_blocks_have_scale_zero() {
        for code in [Code8::Absmax, Code8::MinMax] {
            let x = [0.0f32; 8];
            let (mut q, mut s) = ([9u8; 8], [1.0f32; 2]);
            encode(code, &x, &mut q, &mut s);
            let mut back = [5.0f32; 8];
            decode(code, &q, &s, &mut back);
            assert_eq!(back, x, "{code:?}");
        }
        let x = [0.75f32; 5];
        let (mut q, mut s) = ([0u8; 5], [0.0f32; 2]);
        encode(Code8::MinMax, &x, &mut q, &mut s);
        let mut back = [0.0f32; 5];
        decode(Code8::MinMax, &q, &s, &mut back);
        assert_eq!(back, x);
    }
}
