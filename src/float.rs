//! The sealed traits of the types the optimizer computes in ([`Float`]: `f32`, `f64`, with the
//! SIMD operations the kernels use on them) and stores tensors in ([`Element`]: those two and
//! the 16-bit `half::bf16`, `half::f16`; their conversions are in `element.rs`).

use core::fmt::{Debug, Display};

use half::bf16;

use pulp::Simd;

mod interleave;

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
        /// `L` triples stored in order in three vectors, into the vectors of their first, second
        /// and third elements (`interleave.rs`).
        fn v_deinterleave3<S: Simd>(simd: S, v: [Self::V<S>; 3]) -> [Self::V<S>; 3];
        /// The inverse of [`Sealed::v_deinterleave3`].
        fn v_interleave3<S: Simd>(simd: S, v: [Self::V<S>; 3]) -> [Self::V<S>; 3];
        /// `x` as a float (exact for 8-bit codes).
        fn from_i32(x: i32) -> Self;
        /// Rounded to the nearest integer, ties to even, for `|self| < 2^22`: the integer is
        /// read from the low bits of `self + 1.5 / epsilon`, which vectorises (a conversion
        /// instruction with Rust's saturating semantics does not, on x86-64).
        fn round_to_i32(self) -> i32;
        /// The largest magnitude in `values` (0 for none; NaN if one is NaN), compared as the
        /// integers of the magnitudes' bits, which order like the magnitudes and vectorise.
        fn abs_max(values: &[Self]) -> Self;
        /// Whether every one of `values` is finite and not negative (`-0` included), decided
        /// on the integers of their bits, which vectorises (comparisons of floats folded into
        /// a `bool` did not).
        fn nonnegative_finite(values: &[Self]) -> bool;
    }
}

macro_rules! simd_ops {
    ($t:ty, $v:ident, $as_simd:ident, $as_mut_simd:ident, $splat:ident, $add:ident, $sub:ident,
     $mul:ident, $div:ident, $sqrt:ident, $sum:ident, $deinterleave3:ident,
     $interleave3:ident) => {
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
            fn v_deinterleave3<S: Simd>(simd: S, v: [Self::V<S>; 3]) -> [Self::V<S>; 3] {
                interleave::$deinterleave3(simd, v)
            }
            #[inline(always)]
            fn v_interleave3<S: Simd>(simd: S, v: [Self::V<S>; 3]) -> [Self::V<S>; 3] {
                interleave::$interleave3(simd, v)
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

            #[inline(always)]
            fn nonnegative_finite(values: &[Self]) -> bool {
                // as integers, every negative value but -0 lies above the bits of -0 (the
                // sign bit alone), and every infinite or NaN magnitude at or above the bits of
                // the infinity: two maxima, which vectorise
                let negative_zero = (-0.0 as $t).to_bits();
                let (largest, largest_magnitude) = values.iter().fold((0, 0), |(m, a), x| {
                    let bits = x.to_bits();
                    (m.max(bits), a.max(bits & !negative_zero))
                });
                largest <= negative_zero && largest_magnitude < <$t>::INFINITY.to_bits()
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
    reduce_sum_f32s,
    deinterleave3_f32,
    interleave3_f32
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
    reduce_sum_f64s,
    deinterleave3_f64,
    interleave3_f64
);

/// A vector of `T` under `S` (the kernels' `V<S, T>`).
pub(crate) type Vector<S, T> = <T as sealed::Sealed>::V<S>;

/// Most lanes of a vector of any instruction set the kernels run on.
pub(crate) const MAX_LANES: usize = 16;

/// The number of `T` in a vector of `S`.
#[inline(always)]
pub(crate) const fn lanes<S: Simd, T: Float>() -> usize {
    size_of::<Vector<S, T>>() / size_of::<T>()
}

pub(crate) mod element_sealed {
    /// Only this crate's storage types are [`super::Element`]s.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A type tensors are stored in: `f32`, `f64`, [`half::bf16`] or [`half::f16`].
///
/// All arithmetic runs in [`Element::Compute`] (`f32` for the 16-bit types): a value widens to
/// it exactly when loaded and is rounded back once when stored. The trait is sealed.
pub trait Element:
    element_sealed::Sealed + Copy + Default + PartialEq + Send + Sync + Debug + bytemuck::Pod + 'static
{
    /// The float type the update is computed in.
    type Compute: Float;

    /// The type's name as PyTorch and the reference files spell it (`"float32"`,
    /// `"float64"`, `"bfloat16"`, `"float16"`).
    const DTYPE: &'static str;

    /// Whether values are rounded when written back (a 16-bit type). Their range is narrower
    /// than the compute type's too (`f16` up to 65504, bf16 up to 3.39e38), so a finite
    /// result can round to an infinity ([`crate::Error::ParameterOverflow`]).
    const ROUNDS: bool;

    /// Widens to the compute type (exact).
    fn to_compute(self) -> Self::Compute;

    /// Rounds from the compute type, to nearest, ties to even.
    fn from_compute(x: Self::Compute) -> Self;

    /// Whole vectors of a slice, ready to load: the vectors themselves for `f32` and `f64`,
    /// the elements for the 16-bit types.
    #[doc(hidden)]
    type Vectors<'a, S: Simd>: Copy
    where
        Self: 'a;

    /// The whole vectors of `whole` (a multiple of the vector's lanes long).
    #[doc(hidden)]
    fn vectors<S: Simd>(whole: &[Self]) -> Self::Vectors<'_, S>;

    /// Vector `i` of `v`, widened.
    #[doc(hidden)]
    fn at<S: Simd>(v: Self::Vectors<'_, S>, i: usize) -> Vector<S, Self::Compute>;

    /// The `i`-th whole vector of `row`, widened.
    #[doc(hidden)]
    fn load<S: Simd>(row: &[Self], i: usize) -> Vector<S, Self::Compute>;

    /// Writes `v` over the `i`-th whole vector of `row`, rounded to nearest.
    #[doc(hidden)]
    fn store<S: Simd>(row: &mut [Self], i: usize, v: Vector<S, Self::Compute>);

    /// `v` rounded to `Self` (to nearest) and widened back.
    #[doc(hidden)]
    fn round_vec<S: Simd>(v: Vector<S, Self::Compute>) -> Vector<S, Self::Compute>;

    /// Whether every one of `values` is finite, decided on the integers of their bits (every
    /// infinite or NaN magnitude at or above the bits of the infinity), which vectorises.
    #[doc(hidden)]
    fn all_finite(values: &[Self]) -> bool;

    /// `x` rounded to one of its two neighbours in `Self`, up with probability equal to its
    /// distance from the lower one (in units of the gap), the uniform random `bits` deciding;
    /// `x` itself where it is representable (full-precision types always). See
    /// `came::round_stochastic`.
    #[doc(hidden)]
    fn round_stochastic(x: Self::Compute, bits: u32) -> Self;
}

/// bfloat16 widened to `f32`: its bits are the upper half of the `f32`'s (NaNs stay NaNs).
/// Branch-free, so that the sweeps' per-lane loops vectorise.
#[inline(always)]
pub(crate) fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits(u32::from(x.to_bits()) << 16)
}

/// `f32` rounded to bfloat16, to nearest, ties to even: the value `half` gives
/// (`bf16::from_f32`), computed branch-free so that the sweeps' per-lane loops vectorise.
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> bf16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    // a NaN keeps its upper bits with the quiet bit set, as `half` does (tested as a float: one
    // unordered comparison in vectors)
    let bits = if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    };
    bf16::from_bits(bits as u16)
}

/// A floating-point element type the optimizer runs on: `f32` or `f64`.
///
/// The trait is sealed: the kernels rely on IEEE-754 binary32/binary64 semantics, and the
/// reference trajectories exist for exactly these two types. One element is its own vector under
/// pulp's `Scalar` instruction set, so the update's formulas run on elements and on vectors
/// alike. Square roots come from the hardware with the `std` feature and from `libm` without
/// it; both are correctly rounded.
pub trait Float:
    sealed::Sealed<V<pulp::Scalar> = Self>
    + Element<Compute = Self>
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
        f32_to_bf16(self)
    }

    #[inline(always)]
    fn from_bf16(x: half::bf16) -> Self {
        bf16_to_f32(x)
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
