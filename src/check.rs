//! Finiteness checks: of gradients before a step, and of statistics and state within one.

use core::marker::PhantomData;

use crate::came::formula;
use crate::exec::LaneKernel;
use crate::exec::simd::{self, Ops, Scalar};
use crate::{Error, Float};

/// Checks a gradient for NaN and infinities, cheaply (one vectorised read).
///
/// A step finds these by itself and refuses to run; this is for trainers that want to know
/// before doing anything else with a gradient (clipping it, accumulating it, stepping AdamW).
///
/// ```
/// assert!(came::check_gradient(&[0.5f32, -1.0]).is_ok());
/// assert_eq!(
///     came::check_gradient(&[0.5f32, f32::NAN]),
///     Err(came::Error::NonFiniteGradient { index: 1 })
/// );
/// ```
///
/// # Errors
/// [`Error::NonFiniteGradient`] with the flat position of the first bad element.
pub fn check_gradient<T: Float>(grad: &[T]) -> Result<(), Error> {
    scan_gradient(grad).map(|_| ())
}

/// [`check_gradient`], and whether the square of some (finite) element overflows `T`.
pub(crate) fn scan_gradient<T: Float>(grad: &[T]) -> Result<SquaresOverflow, Error> {
    let mut check = (grad, false);
    simd::run(&SquareCheck(PhantomData), &mut check);
    if !check.1 {
        return Ok(SquaresOverflow(false));
    }
    match grad.iter().position(|g| !g.is_finite()) {
        Some(index) => Err(Error::NonFiniteGradient { index }),
        None => Ok(SquaresOverflow(true)),
    }
}

/// Whether the square of a gradient element overflows the float type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SquaresOverflow(pub bool);

/// Sums `x² - x²` over a slice: 0 when every element and its square are finite, NaN otherwise.
struct SquareCheck<'a, T>(PhantomData<&'a T>);

impl<'a, T: Float> LaneKernel for SquareCheck<'a, T> {
    /// the values, and whether any is NaN or infinite or has an infinite square
    type Item = (&'a [T], bool);

    #[inline(always)]
    fn run<S: pulp::Simd>(&self, simd: S, (x, bad): &mut Self::Item) {
        let o = Ops::<S, T>::new(simd);
        let (xv, xt) = T::as_simd::<S>(x);
        let mut acc = o.splat(T::zero());
        for &v in xv {
            acc = o.add(acc, formula::finite_or_nan(o, formula::square(o, v)));
        }
        let mut sum = o.sum(acc);
        let s = Ops::<Scalar, T>::new(Scalar);
        for &v in xt {
            sum = sum + formula::finite_or_nan(s, formula::square(s, v));
        }
        *bad = sum != T::zero();
    }
}

/// Which error explains a non-finite statistic: a bad gradient element, or an overflow of an
/// update from finite inputs (the state was checked before).
pub(crate) fn gradient_error<T: Float>(grad: &[T]) -> Error {
    match grad.iter().position(|g| !g.is_finite()) {
        Some(index) => Error::NonFiniteGradient { index },
        None => Error::NonFiniteUpdate,
    }
}

/// Values checked between early exits: within a chunk the checks have no branch per value
/// (the statistics of a batch of small matrices are as long as its data).
const CHECK_CHUNK: usize = 256;

/// Whether every value is finite.
pub(crate) fn all_finite<T: Float>(values: &[T]) -> bool {
    let finite = |ok, v: &T| ok & v.is_finite();
    values
        .chunks(CHECK_CHUNK)
        .all(|c| c.iter().fold(true, finite))
}

/// Whether every value is a possible second-moment statistic: finite and not negative (an
/// average of squares).
pub(crate) fn valid_statistics<T: Float>(values: &[T]) -> bool {
    let zero = T::zero();
    // bitwise, not lazy: no branch per value
    #[allow(clippy::needless_bitwise_bool)]
    let valid = |ok, &v: &T| ok & v.is_finite() & (v >= zero);
    values
        .chunks(CHECK_CHUNK)
        .all(|c| c.iter().fold(true, valid))
}
