//! Finiteness checks: of gradients before a step, and of statistics and state within one.

use core::marker::PhantomData;

use crate::Element;
use crate::came::formula;
use crate::exec::LaneKernel;
use crate::exec::prefetch;
use crate::exec::simd::{self, Ops, Scalar};
use crate::float::lanes;
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
pub fn check_gradient<G: Element>(grad: &[G]) -> Result<(), Error> {
    scan_gradient(grad).map(|_| ())
}

/// [`check_gradient`], and whether the square of some (finite) element overflows `T`.
pub(crate) fn scan_gradient<G: Element>(grad: &[G]) -> Result<SquaresOverflow, Error> {
    let mut check = (grad, false);
    simd::run(&SquareCheck(PhantomData), &mut check);
    if !check.1 {
        return Ok(SquaresOverflow(false));
    }
    match grad
        .iter()
        .position(|g| !num_traits::Float::is_finite(g.to_compute()))
    {
        Some(index) => Err(Error::NonFiniteGradient { index }),
        None => Ok(SquaresOverflow(true)),
    }
}

/// Whether the square of a gradient element overflows the float type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SquaresOverflow(pub bool);

/// Sums `x² - x²` over a slice: 0 when every element and its square are finite, NaN otherwise.
struct SquareCheck<'a, G>(PhantomData<&'a G>);

impl<'a, G: Element> LaneKernel for SquareCheck<'a, G> {
    /// the values, and whether any is NaN or infinite or has an infinite square
    type Item = (&'a [G], bool);

    #[inline(always)]
    fn run<S: pulp::Simd>(&self, simd: S, (x, bad): &mut Self::Item) {
        let o = Ops::<S, G::Compute>::new(simd);
        let n = x.len() / lanes::<S, G::Compute>();
        let (xv, xt) = x.split_at(n * lanes::<S, G::Compute>());
        let mut acc = o.splat(num_traits::Zero::zero());
        for i in 0..n {
            prefetch::ahead(xv, i * lanes::<S, G::Compute>());
            let v = G::load::<S>(xv, i);
            acc = o.add(acc, formula::finite_or_nan(o, formula::square(o, v)));
        }
        let mut sum = o.sum(acc);
        let s = Ops::<Scalar, G::Compute>::new(Scalar);
        for &v in xt {
            let v = v.to_compute();
            sum = sum + formula::finite_or_nan(s, formula::square(s, v));
        }
        *bad = sum != num_traits::Zero::zero();
    }
}

/// Which error explains a non-finite statistic: a bad gradient element, or an overflow of an
/// update from finite inputs (the state was checked before).
pub(crate) fn gradient_error<G: Element>(grad: &[G]) -> Error {
    match grad
        .iter()
        .position(|g| !num_traits::Float::is_finite(g.to_compute()))
    {
        Some(index) => Error::NonFiniteGradient { index },
        None => Error::NonFiniteUpdate,
    }
}

/// Values checked between early exits: within a chunk the checks have no branch per value
/// (the statistics of a batch of small matrices are as long as its data).
const CHECK_CHUNK: usize = 256;

/// Whether `check` holds for every chunk of `values`, in the caller's instruction set (inside
/// the kernels: their vectors). Within a chunk the checks have no branch per value.
#[inline(always)]
fn every_chunk<E>(values: &[E], check: impl Fn(&[E]) -> bool) -> bool {
    values.chunks(CHECK_CHUNK).enumerate().all(|(c, chunk)| {
        prefetch::ahead_span(values, c * CHECK_CHUNK, chunk.len());
        check(chunk)
    })
}

/// [`every_chunk`] compiled for the CPU's vector instructions, for callers outside the kernels.
fn every_chunk_vectorised<E>(values: &[E], check: impl Fn(&[E]) -> bool) -> bool {
    struct Every<'a, E, F>(&'a [E], F);

    impl<E, F: Fn(&[E]) -> bool> pulp::WithSimd for Every<'_, E, F> {
        type Output = bool;

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> bool {
            every_chunk(self.0, self.1)
        }
    }

    simd::dispatch(Every(values, check))
}

/// Whether every value is finite (any [`Element`]), in the caller's instruction set.
#[inline(always)]
pub(crate) fn all_finite<E: Element>(values: &[E]) -> bool {
    every_chunk(values, E::all_finite)
}

/// [`all_finite`] compiled for the CPU's vector instructions (a whole tensor of 16-bit
/// parameters, checked after each step).
pub(crate) fn all_finite_vectorised<E: Element>(values: &[E]) -> bool {
    every_chunk_vectorised(values, E::all_finite)
}

/// Whether every value is a possible second-moment statistic: finite and not negative (an
/// average of squares), compiled for the CPU's vector instructions (a batch of small matrices
/// has as many statistics as elements, and each step checks them).
pub(crate) fn valid_statistics<T: Float>(values: &[T]) -> bool {
    every_chunk_vectorised(values, T::nonnegative_finite)
}

#[cfg(test)]
mod tests {
    use super::{all_finite, all_finite_vectorised, valid_statistics};
    use crate::Float;

    /// Every special value, alone and in a run long enough for vectors, against the
    /// definition: finite and `>= 0`.
    fn agrees_with_the_definition<T: Float>(specials: &[T]) {
        for &x in specials {
            let expected = x.is_finite() && x >= T::zero();
            assert_eq!(valid_statistics(&[x]), expected, "{x:?}");
            for at in [0, 17, 300, 511] {
                let mut run = [T::one(); 512];
                run[at] = x;
                assert_eq!(valid_statistics(&run), expected, "{x:?} at {at}");
            }
        }
        assert!(valid_statistics::<T>(&[]));
    }

    /// Every special value of `E`, alone and in runs, against `is_finite` of its compute type.
    fn finite_agrees_with_is_finite<E: crate::Element>(specials: &[E]) {
        for &x in specials {
            let expected = num_traits::Float::is_finite(x.to_compute());
            assert_eq!(all_finite(&[x]), expected, "{x:?}");
            for at in [0, 17, 300, 511] {
                let mut run = [E::from_compute(num_traits::One::one()); 512];
                run[at] = x;
                assert_eq!(all_finite(&run), expected, "{x:?} at {at}");
                assert_eq!(all_finite_vectorised(&run), expected, "{x:?} at {at}");
            }
        }
    }

    #[test]
    fn finite_values_are_told_from_infinities_and_nans_in_every_type() {
        use half::{bf16, f16};
        finite_agrees_with_is_finite::<f32>(&[
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::from_bits(1),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ]);
        finite_agrees_with_is_finite::<f64>(&[
            -0.0,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
        ]);
        for t in [
            bf16::MAX,
            bf16::MIN,
            bf16::NEG_ZERO,
            bf16::INFINITY,
            bf16::NEG_INFINITY,
        ] {
            finite_agrees_with_is_finite(&[t, bf16::NAN, -bf16::NAN, bf16::from_bits(0x7F81)]);
        }
        for t in [
            f16::MAX,
            f16::MIN,
            f16::NEG_ZERO,
            f16::INFINITY,
            f16::NEG_INFINITY,
        ] {
            finite_agrees_with_is_finite(&[t, f16::NAN, -f16::NAN, f16::from_bits(0x7C01)]);
        }
    }

    #[test]
    fn statistics_are_finite_and_not_negative() {
        agrees_with_the_definition::<f32>(&[
            0.0,
            -0.0,
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            -f32::from_bits(1),
            -1.0,
            f32::MIN,
        ]);
        agrees_with_the_definition::<f64>(&[
            0.0,
            -0.0,
            f64::from_bits(1),
            1.0,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            -f64::from_bits(1),
            f64::MIN,
        ]);
    }
}
