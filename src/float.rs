//! The sealed float trait the optimizer is generic over.

use core::fmt::{Debug, Display};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type the optimizer runs on: `f32` or `f64`.
///
/// The trait is sealed: the kernels rely on IEEE-754 binary32/binary64 semantics, and the
/// reference trajectories exist for exactly these two types. Square roots come from the hardware
/// with the `std` feature and from `libm` without it; both are correctly rounded.
pub trait Float:
    sealed::Sealed
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
}
