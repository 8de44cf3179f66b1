//! The storage types' conversions ([`Element`] is defined in `float.rs`, beside [`crate::Float`],
//! the type the update is computed in): `f32`, `f64`, and the 16-bit `half::bf16` and
//! `half::f16`, each computed in a `Float` (16-bit values in `f32`).
//!
//! A 16-bit value widens to `f32` exactly; an `f32` result is written back rounded to nearest,
//! ties to even (what `half` and PyTorch do), or, for parameters and when asked for, rounded
//! stochastically ([`round_stochastic`], with the counter-based [`random_bits`]). The sweeps load
//! and store whole vectors through `Element`'s hidden methods: a plain vector load for `f32` and
//! `f64`, a widening of the vector's elements for the 16-bit types, all in registers.

use half::{bf16, f16};
use pulp::Simd;

use crate::Element;
use crate::float::{MAX_LANES, Vector as V, bf16_to_f32, f32_to_bf16, lanes};

macro_rules! full_precision {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            type Compute = $t;
            const DTYPE: &'static str = $name;
            const ROUNDS: bool = false;

            #[inline(always)]
            fn to_compute(self) -> Self {
                self
            }

            #[inline(always)]
            fn from_compute(x: Self) -> Self {
                x
            }

            type Vectors<'a, S: Simd> = &'a [V<S, $t>];

            #[inline(always)]
            fn vectors<S: Simd>(whole: &[Self]) -> &[V<S, $t>] {
                <$t as crate::float::sealed::Sealed>::as_simd::<S>(whole).0
            }

            #[inline(always)]
            fn at<S: Simd>(v: &[V<S, $t>], i: usize) -> V<S, $t> {
                v[i]
            }

            #[inline(always)]
            fn load<S: Simd>(row: &[Self], i: usize) -> V<S, Self> {
                let l = lanes::<S, $t>();
                <$t as crate::float::sealed::Sealed>::as_simd::<S>(&row[i * l..][..l]).0[0]
            }

            #[inline(always)]
            fn store<S: Simd>(row: &mut [Self], i: usize, v: V<S, Self>) {
                let l = lanes::<S, $t>();
                let chunk = &mut row[i * l..][..l];
                <$t as crate::float::sealed::Sealed>::as_mut_simd::<S>(chunk).0[0] = v;
            }

            #[inline(always)]
            fn round_vec<S: Simd>(v: V<S, Self>) -> V<S, Self> {
                v
            }

            #[inline(always)]
            fn round_stochastic(x: Self, _bits: u32) -> Self {
                x
            }

            #[inline(always)]
            fn all_finite(values: &[Self]) -> bool {
                <$t as crate::float::sealed::Sealed>::abs_max(values).is_finite()
            }
        }
    };
}

full_precision!(f32, "float32");
full_precision!(f64, "float64");

macro_rules! half_precision {
    ($t:ty, $name:literal, $widen:path, $narrow:path) => {
        impl Element for $t {
            type Compute = f32;
            const DTYPE: &'static str = $name;
            const ROUNDS: bool = true;

            #[inline(always)]
            fn to_compute(self) -> f32 {
                $widen(self)
            }

            #[inline(always)]
            fn from_compute(x: f32) -> Self {
                $narrow(x)
            }

            type Vectors<'a, S: Simd> = &'a [$t];

            #[inline(always)]
            fn vectors<S: Simd>(whole: &[Self]) -> &[$t] {
                whole
            }

            #[inline(always)]
            fn at<S: Simd>(v: &[$t], i: usize) -> V<S, f32> {
                Self::load::<S>(v, i)
            }

            #[inline(always)]
            fn load<S: Simd>(row: &[Self], i: usize) -> V<S, f32> {
                let l = lanes::<S, f32>();
                let mut wide = [0.0f32; MAX_LANES];
                for (w, &x) in wide.iter_mut().zip(&row[i * l..(i + 1) * l]) {
                    *w = $widen(x);
                }
                f32::as_simd::<S>(&wide[..l]).0[0]
            }

            #[inline(always)]
            fn store<S: Simd>(row: &mut [Self], i: usize, v: V<S, f32>) {
                let l = lanes::<S, f32>();
                let mut wide = [0.0f32; MAX_LANES];
                f32::as_mut_simd::<S>(&mut wide[..l]).0[0] = v;
                for (x, &w) in row[i * l..(i + 1) * l].iter_mut().zip(&wide) {
                    *x = $narrow(w);
                }
            }

            #[inline(always)]
            fn round_vec<S: Simd>(v: V<S, f32>) -> V<S, f32> {
                let l = lanes::<S, f32>();
                let mut wide = [0.0f32; MAX_LANES];
                let slot = &mut f32::as_mut_simd::<S>(&mut wide[..l]).0[0];
                *slot = v;
                for w in &mut wide[..l] {
                    *w = $widen($narrow(*w));
                }
                f32::as_simd::<S>(&wide[..l]).0[0]
            }

            #[inline(always)]
            fn all_finite(values: &[Self]) -> bool {
                let magnitude = !(-<$t>::ZERO).to_bits();
                let largest = values.iter().fold(0, |m, x| m.max(x.to_bits() & magnitude));
                largest < <$t>::INFINITY.to_bits()
            }

            #[inline(always)]
            fn round_stochastic(x: f32, bits: u32) -> Self {
                let near = $narrow(x);
                let y = $widen(near);
                #[allow(clippy::float_cmp)] // exactly representable: nothing to round
                if y == x || !x.is_finite() || !y.is_finite() {
                    return near;
                }
                // the neighbour on the other side of x: one step of the magnitude's bits
                let other = if y.abs() < x.abs() {
                    <$t>::from_bits(near.to_bits() + 1)
                } else {
                    <$t>::from_bits(near.to_bits() - 1)
                };
                let (lo, hi) = if y.abs() < $widen(other).abs() {
                    (near, other)
                } else {
                    (other, near)
                };
                let (l, h) = ($widen(lo), $widen(hi));
                // exact: x lies between two neighbours, whose gap is a power of two
                let p = (x - l) / (h - l);
                let u = (bits >> 8) as f32 * (1.0 / 16_777_216.0);
                if u < p { hi } else { lo }
            }
        }
    };
}

use crate::float::sealed::Sealed as _;

half_precision!(bf16, "bfloat16", bf16_to_f32, f32_to_bf16);
half_precision!(f16, "float16", f16::to_f32, f16::from_f32);

/// The random bits of element `index` of a tensor stepped with stochastic-rounding key `key`
/// ([`rounding_key`]): a counter-based generator (`SplitMix64`'s finalizer over the key and the
/// index), so the bits depend on nothing else, not on threads, lanes or the instruction set.
#[inline(always)]
pub(crate) fn random_bits(key: u64, index: usize) -> u32 {
    let mut z = key ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

/// The stochastic-rounding key of one tensor at one step: a function of the seed, the tensor's
/// position and the step number only.
#[must_use]
pub(crate) fn rounding_key(seed: u64, tensor: usize, step: u64) -> u64 {
    let mix = |a: u64, b: u64| {
        u64::from(random_bits(a, b as usize)) << 32 | u64::from(random_bits(!a, b as usize))
    };
    mix(mix(seed, tensor as u64), step)
}

/// `x` rounded to a neighbour in `E` at random, with the probability of each neighbour
/// proportional to its closeness: `E[round(x)] = x` for every finite `x` (up to the 2^-24
/// resolution of the random threshold). NaN and infinities round to nearest.
#[inline(always)]
pub fn round_stochastic<E: Element>(x: E::Compute, bits: u32) -> E {
    E::round_stochastic(x, bits)
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_sign_loss)] // exact values, by construction
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_values_widen_exactly_and_round_to_nearest_even() {
        assert_eq!(bf16::from_compute(1.0 + 1.0 / 256.0).to_f32(), 1.0); // tie: to even
        assert_eq!(
            bf16::from_compute(1.0 + 3.0 / 256.0).to_f32(),
            1.0 + 4.0 / 256.0
        );
        assert_eq!(f16::from_compute(1.0 + 1.0 / 2048.0).to_f32(), 1.0);
        assert_eq!(bf16::from_f32(-2.5).to_compute(), -2.5);
    }

    #[test]
    fn branch_free_bf16_conversions_are_halfs() {
        // every bf16 (a sample under the interpreter, which is a thousand times slower)
        let (every, draws) = if cfg!(miri) {
            (97, 2_000)
        } else {
            (1, 200_000)
        };
        for bits in (0..=u16::MAX).step_by(every) {
            let x = bf16::from_bits(bits);
            let (ours, theirs) = (bf16_to_f32(x), x.to_f32());
            assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()));
        }
        let mut b = 1u32;
        for _ in 0..draws {
            b = b.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            for x in [
                f32::from_bits(b),
                f32::from_bits(b & 0xFFFF_8000),
                f32::from_bits(b | 0x7FFF),
            ] {
                assert_eq!(
                    f32_to_bf16(x).to_bits(),
                    bf16::from_f32(x).to_bits(),
                    "{x:e}"
                );
            }
        }
    }

    #[test]
    fn stochastic_rounding_picks_a_neighbour_by_the_random_bits() {
        // 1 + 1/512 lies a quarter of the way from 1 to the next bf16, 1 + 1/128
        let x = 1.0 + 1.0 / 512.0;
        let at = |u: f64| bf16::round_stochastic(x, ((u * 16_777_216.0) as u32) << 8).to_f32();
        assert_eq!(at(0.0), 1.0 + 1.0 / 128.0);
        assert_eq!(at(0.2499), 1.0 + 1.0 / 128.0);
        assert_eq!(at(0.25), 1.0);
        assert_eq!(at(0.9999), 1.0);
        // negative values mirror positive ones
        let y = bf16::round_stochastic(-x, 0).to_f32();
        assert_eq!(y, -(1.0 + 1.0 / 128.0));
        // representable values and non-finite ones are never moved
        assert_eq!(bf16::round_stochastic(1.5, 0).to_f32(), 1.5);
        assert!(f16::round_stochastic(f32::NAN, 0).is_nan());
        assert_eq!(
            f16::round_stochastic(f32::INFINITY, 0).to_f32(),
            f32::INFINITY
        );
        assert_eq!(f32::round_stochastic(0.1, 0), 0.1);
    }

    #[test]
    fn the_random_bits_depend_on_key_and_index_only() {
        assert_eq!(random_bits(7, 3), random_bits(7, 3));
        assert_ne!(random_bits(7, 3), random_bits(7, 4));
        assert_ne!(random_bits(7, 3), random_bits(8, 3));
        assert_ne!(rounding_key(1, 0, 1), rounding_key(1, 1, 1));
        assert_ne!(rounding_key(1, 0, 1), rounding_key(1, 0, 2));
    }
}
