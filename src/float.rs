//! The sealed float trait the optimizer is generic over, with the SIMD operations the kernels
//! use on it.

use core::fmt::{Debug, Display};

use pulp::Simd;

pub(crate) mod sealed {
    use pulp::Simd;

    /// SIMD vectors of the element type under instruction set `S`, and the few operations the
    /// kernels need. Every operation is IEEE-754 correctly rounded, lane by lane.
    pub trait Sealed: Copy {
        /// A vector of `Self` under `S`.
        type V<S: Simd>: Copy;

        /// Splits a slice into whole vectors and the remaining elements.
        fn as_simd<S: Simd>(s: &[Self]) -> (&[Self::V<S>], &[Self]);
        /// Splits a writable slice into whole vectors and the remaining elements.
        fn as_mut_simd<S: Simd>(s: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]);
        /// Every lane `x`.
        fn v_splat<S: Simd>(simd: S, x: Self) -> Self::V<S>;
        /// Lane-wise `a + b`.
        fn v_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
        /// Lane-wise `a - b`.
        fn v_sub<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
        /// Lane-wise `a * b`.
        fn v_mul<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
        /// Lane-wise `a / b`.
        fn v_div<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
        /// Lane-wise square root.
        fn v_sqrt<S: Simd>(simd: S, a: Self::V<S>) -> Self::V<S>;
        /// The sum of the lanes, in a fixed order.
        fn v_sum<S: Simd>(simd: S, a: Self::V<S>) -> Self;
        /// `x` as a float (exact for 8-bit codes).
        fn from_i32(x: i32) -> Self;
        /// Rounded to the nearest integer, ties to even, for `|self| < 2^22`: the integer is
        /// read from the low bits of `self + 1.5 / epsilon`, which vectorises (a conversion
        /// instruction with Rust's saturating semantics does not, on x86-64).
        fn round_to_i32(self) -> i32;
        /// The largest magnitude in `values` (0 for none; NaN if one is NaN), compared as the
        /// integers of the magnitudes' bits, which order like the magnitudes and vectorise.
        fn abs_max(values: &[Self]) -> Self;
    }
}

macro_rules! simd_ops {
    ($t:ty, $v:ident, $as_simd:ident, $as_mut_simd:ident, $splat:ident, $add:ident, $sub:ident,
     $mul:ident, $div:ident, $sqrt:ident, $sum:ident) => {
        impl sealed::Sealed for $t {
            type V<S: Simd> = S::$v;

            #[inline(always)]
            fn as_simd<S: Simd>(s: &[Self]) -> (&[Self::V<S>], &[Self]) {
                S::$as_simd(s)
            }
            #[inline(always)]
            fn as_mut_simd<S: Simd>(s: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]) {
                S::$as_mut_simd(s)
            }
            #[inline(always)]
            fn v_splat<S: Simd>(simd: S, x: Self) -> Self::V<S> {
                simd.$splat(x)
            }
            #[inline(always)]
            fn v_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                simd.$add(a, b)
            }
            #[inline(always)]
            fn v_sub<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                simd.$sub(a, b)
            }
            #[inline(always)]
            fn v_mul<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                simd.$mul(a, b)
            }
            #[inline(always)]
            fn v_div<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                simd.$div(a, b)
            }
            #[inline(always)]
            fn v_sqrt<S: Simd>(simd: S, a: Self::V<S>) -> Self::V<S> {
                simd.$sqrt(a)
            }
            #[inline(always)]
            fn v_sum<S: Simd>(simd: S, a: Self::V<S>) -> Self {
                simd.$sum(a)
            }

            #[inline(always)]
            fn from_i32(x: i32) -> Self {
                x as $t
            }

            #[inline(always)]
            fn round_to_i32(self) -> i32 {
                let magic: $t = 1.5 / <$t>::EPSILON;
                // the difference of the bits is the integer, exactly
                #[allow(clippy::cast_possible_wrap)]
                let n = (self + magic).to_bits().wrapping_sub(magic.to_bits()) as i32;
                n
            }

            #[inline(always)]
            fn abs_max(values: &[Self]) -> Self {
                let magnitude = <$t>::MAX.to_bits() | <$t>::INFINITY.to_bits();
                let bits = values.iter().fold(0, |m, x| m.max(x.to_bits() & magnitude));
                <$t>::from_bits(bits)
            }
        }
    };
}

simd_ops!(
    f32,
    f32s,
    as_simd_f32s,
    as_mut_simd_f32s,
    splat_f32s,
    add_f32s,
    sub_f32s,
    mul_f32s,
    div_f32s,
    sqrt_f32s,
    reduce_sum_f32s
);
simd_ops!(
    f64,
    f64s,
    as_simd_f64s,
    as_mut_simd_f64s,
    splat_f64s,
    add_f64s,
    sub_f64s,
    mul_f64s,
    div_f64s,
    sqrt_f64s,
    reduce_sum_f64s
);

/// A floating-point element type the optimizer runs on: `f32` or `f64`.
///
/// The trait is sealed: the kernels rely on IEEE-754 binary32/binary64 semantics, and the
/// reference trajectories exist for exactly these two types. One element is its own vector under
/// pulp's `Scalar` instruction set, so the update's formulas run on elements and on vectors
/// alike. Square roots come from the hardware with the `std` feature and from `libm` without
/// it; both are correctly rounded.
pub trait Float:
    sealed::Sealed<V<pulp::Scalar> = Self>
    + crate::Element<Compute = Self>
    + num_traits::Float
    + Copy
    + Default
    + Send
    + Sync
    + Debug
    + Display
    + PartialOrd
    + 'static
{
    /// The type's name as the reference files spell it (`"float32"`, `"float64"`).
    const DTYPE: &'static str;

    /// Rounds an `f64` to this type (round to nearest, ties to even).
    #[must_use]
    fn from_f64(x: f64) -> Self;

    /// Widens this value to `f64` (exact).
    #[must_use]
    fn as_f64(self) -> f64;

    /// Rounds to bfloat16, to nearest, ties to even (in one rounding).
    #[doc(hidden)]
    #[must_use]
    fn to_bf16(self) -> half::bf16;

    /// Widens a bfloat16 (exact).
    #[doc(hidden)]
    #[must_use]
    fn from_bf16(x: half::bf16) -> Self;
}

impl Float for f32 {
    const DTYPE: &'static str = "float32";

    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }

    #[inline(always)]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn to_bf16(self) -> half::bf16 {
        crate::element::f32_to_bf16(self)
    }

    #[inline(always)]
    fn from_bf16(x: half::bf16) -> Self {
        crate::element::bf16_to_f32(x)
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "float64";

    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }

    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn to_bf16(self) -> half::bf16 {
        half::bf16::from_f64(self)
    }

    #[inline(always)]
    fn from_bf16(x: half::bf16) -> Self {
        x.to_f64()
    }
}
