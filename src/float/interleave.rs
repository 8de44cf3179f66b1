//! Three-way interleaving of vectors: `L` triples stored one after another (three vectors of
//! `L` lanes) into the vector of their first elements, of their second and of their third, and
//! back. This is how a batch of 3x3 matrices (`came/small_batch.rs`) is moved into and out of
//! its one-matrix-per-lane layout, without a store and a load per element.
//!
//! `pulp` provides both directions for any instruction set (one `vld3q`/`vst3q` on NEON, a
//! copy through memory elsewhere). Under AVX2 (`pulp`'s `V3`) they are done here in registers:
//! per vector two blends and one cross-lane permute (`vblendps`, `vpermps`; `vblendpd`,
//! `vpermpd` for `f64`). Only values move, so every instruction set gives the same bits.

use pulp::Simd;

/// Defines `$name`: the AVX2 function of the same name under `pulp`'s `V3`, else `pulp`'s
/// `$fallback`, on three vectors of `S::$v`.
macro_rules! three_vectors {
    ($(#[$doc:meta])* $name:ident, $v:ident, $fallback:ident) => {
        $(#[$doc])*
        #[inline(always)]
        pub(super) fn $name<S: Simd>(simd: S, v: [S::$v; 3]) -> [S::$v; 3] {
            #[cfg(target_arch = "x86_64")]
            if let Some(&v3) = (&simd as &dyn core::any::Any).downcast_ref::<pulp::x86::V3>() {
                return bytemuck::cast(avx2::$name(v3, bytemuck::cast(v)));
            }
            simd.$fallback(v)
        }
    };
}

three_vectors!(
    /// `[a, b, c]`, the `L` triples `(x_k, y_k, z_k)` stored in order (`a` holds the first `L`
    /// values), into `[x, y, z]`.
    deinterleave3_f32,
    f32s,
    deinterleave_shfl_f32s
);
three_vectors!(
    /// The inverse of [`deinterleave3_f32`]: `[x, y, z]` into the triples `(x_k, y_k, z_k)` in
    /// order.
    interleave3_f32,
    f32s,
    interleave_shfl_f32s
);
three_vectors!(
    /// [`deinterleave3_f32`] for `f64`.
    deinterleave3_f64,
    f64s,
    deinterleave_shfl_f64s
);
three_vectors!(
    /// [`interleave3_f32`] for `f64`.
    interleave3_f64,
    f64s,
    interleave_shfl_f64s
);

/// The AVX2 versions. With 8 lanes, element `x_k` of the triples sits at position `3k`, which
/// puts `x_0, x_1, x_2` in lanes 0, 3, 6 of `a`, `x_3, x_4, x_5` in lanes 1, 4, 7 of `b` and
/// `x_6, x_7` in lanes 2, 5 of `c`, each in a lane of its own (`3k mod 8` runs through all
/// lanes): two blends gather them into one vector, in the order `x_0 x_3 x_6 x_1 x_4 x_7 x_2
/// x_5`, and one permute sorts them. Likewise for `y` and `z`, and backwards. With 4 lanes
/// (`f64`) the same with positions `3k mod 4`.
///
/// The other instruction sets take `pulp`'s functions for three vectors, whose lanes come out
/// in this order too (its functions for two and four vectors on x86-64 shuffle them); the test
/// below checks every lane on the instruction set it runs on.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{__m256, __m256d, __m256i};

    use pulp::x86::V3;

    // The blend masks (lane `i` from the second operand where bit `i` is set) of 8 lanes.
    /// Lanes 0, 3 and 6.
    const LANES_0_3_6: i32 = 0b0100_1001;
    /// Lanes 1, 4 and 7.
    const LANES_1_4_7: i32 = 0b1001_0010;
    /// Lanes 2 and 5.
    const LANES_2_5: i32 = 0b0010_0100;

    /// `permutevar8x32` indices: lane `k` of the result is lane `lanes[k]` of the operand.
    #[inline(always)]
    fn index(lanes: [i32; 8]) -> __m256i {
        bytemuck::cast(lanes)
    }

    #[inline(always)]
    pub(super) fn deinterleave3_f32(simd: V3, [a, b, c]: [__m256; 3]) -> [__m256; 3] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        // x' = x0 x3 x6 x1 x4 x7 x2 x5, y' = y5 y0 y3 y6 y1 y4 y7 y2, z' = z2 z5 z0 z3 z6 z1 z4 z7
        let x = avx._mm256_blend_ps::<LANES_2_5>(avx._mm256_blend_ps::<LANES_1_4_7>(a, b), c);
        let y = avx._mm256_blend_ps::<LANES_0_3_6>(avx._mm256_blend_ps::<LANES_2_5>(a, b), c);
        let z = avx._mm256_blend_ps::<LANES_1_4_7>(avx._mm256_blend_ps::<LANES_0_3_6>(a, b), c);
        [
            avx2._mm256_permutevar8x32_ps(x, index([0, 3, 6, 1, 4, 7, 2, 5])),
            avx2._mm256_permutevar8x32_ps(y, index([1, 4, 7, 2, 5, 0, 3, 6])),
            avx2._mm256_permutevar8x32_ps(z, index([2, 5, 0, 3, 6, 1, 4, 7])),
        ]
    }

    #[inline(always)]
    pub(super) fn interleave3_f32(simd: V3, [x, y, z]: [__m256; 3]) -> [__m256; 3] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        // back to x', y', z' (the inverse permutations), then each of a, b, c in two blends
        let x = avx2._mm256_permutevar8x32_ps(x, index([0, 3, 6, 1, 4, 7, 2, 5]));
        let y = avx2._mm256_permutevar8x32_ps(y, index([5, 0, 3, 6, 1, 4, 7, 2]));
        let z = avx2._mm256_permutevar8x32_ps(z, index([2, 5, 0, 3, 6, 1, 4, 7]));
        [
            avx._mm256_blend_ps::<LANES_2_5>(avx._mm256_blend_ps::<LANES_1_4_7>(x, y), z),
            avx._mm256_blend_ps::<LANES_0_3_6>(avx._mm256_blend_ps::<LANES_2_5>(x, y), z),
            avx._mm256_blend_ps::<LANES_1_4_7>(avx._mm256_blend_ps::<LANES_0_3_6>(x, y), z),
        ]
    }

    /// `permute4x64` immediates: lane `k` of the result is lane `lanes[k]` of the operand.
    const fn order(lanes: [i32; 4]) -> i32 {
        lanes[0] | (lanes[1] << 2) | (lanes[2] << 4) | (lanes[3] << 6)
    }
    // x' = x0 x3 x2 x1, y' = y1 y0 y3 y2, z' = z2 z1 z0 z3: each order its own inverse
    /// `x'` to `x` and back.
    const X_ORDER: i32 = order([0, 3, 2, 1]);
    /// `y'` to `y` and back.
    const Y_ORDER: i32 = order([1, 0, 3, 2]);
    /// `z'` to `z` and back.
    const Z_ORDER: i32 = order([2, 1, 0, 3]);

    #[inline(always)]
    pub(super) fn deinterleave3_f64(simd: V3, [a, b, c]: [__m256d; 3]) -> [__m256d; 3] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let x = avx._mm256_blend_pd::<0b0010>(avx._mm256_blend_pd::<0b0100>(a, b), c);
        let y = avx._mm256_blend_pd::<0b0100>(avx._mm256_blend_pd::<0b1001>(a, b), c);
        let z = avx._mm256_blend_pd::<0b1001>(avx._mm256_blend_pd::<0b0010>(a, b), c);
        [
            avx2._mm256_permute4x64_pd::<X_ORDER>(x),
            avx2._mm256_permute4x64_pd::<Y_ORDER>(y),
            avx2._mm256_permute4x64_pd::<Z_ORDER>(z),
        ]
    }

    #[inline(always)]
    pub(super) fn interleave3_f64(simd: V3, [x, y, z]: [__m256d; 3]) -> [__m256d; 3] {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let x = avx2._mm256_permute4x64_pd::<X_ORDER>(x);
        let y = avx2._mm256_permute4x64_pd::<Y_ORDER>(y);
        let z = avx2._mm256_permute4x64_pd::<Z_ORDER>(z);
        [
            avx._mm256_blend_pd::<0b0100>(avx._mm256_blend_pd::<0b0010>(x, y), z),
            avx._mm256_blend_pd::<0b0010>(avx._mm256_blend_pd::<0b1001>(x, y), z),
            avx._mm256_blend_pd::<0b1001>(avx._mm256_blend_pd::<0b0100>(x, y), z),
        ]
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use pulp::Simd;

    use crate::Float;
    use crate::exec::simd::V;
    use crate::float::lanes;

    /// Under the best instruction set: the triples `(3k, 3k + 1, 3k + 2)` split into the
    /// vectors of their elements, and back to where they were.
    #[allow(clippy::float_cmp)] // values moved, never computed
    fn round_trip<T: Float>() -> usize {
        struct Check<T>(core::marker::PhantomData<T>);
        impl<T: Float> pulp::WithSimd for Check<T> {
            type Output = usize;
            #[inline(always)]
            fn with_simd<S: Simd>(self, simd: S) -> usize {
                let l = lanes::<S, T>();
                let stored: std::vec::Vec<T> = (0..3 * l).map(|i| T::from_f64(i as f64)).collect();
                let v: &[V<S, T>] = T::as_simd::<S>(&stored).0;
                let split = T::v_deinterleave3(simd, [v[0], v[1], v[2]]);
                for (element, vector) in split.iter().enumerate() {
                    let mut out = [T::zero(); 16];
                    T::as_mut_simd::<S>(&mut out[..l]).0[0] = *vector;
                    for (k, &x) in out[..l].iter().enumerate() {
                        assert_eq!(
                            x.as_f64(),
                            (3 * k + element) as f64,
                            "lane {k} of {element}"
                        );
                    }
                }
                let back = T::v_interleave3(simd, split);
                let mut out = std::vec![T::zero(); 3 * l];
                T::as_mut_simd::<S>(&mut out).0.copy_from_slice(&back);
                assert_eq!(out, stored);
                l
            }
        }
        crate::exec::simd::dispatch(Check::<T>(core::marker::PhantomData))
    }

    #[test]
    #[allow(clippy::float_cmp)] // values moved, never computed
    fn triples_split_into_their_elements_and_back() {
        let vectors = crate::instruction_set() != "pulp::Scalar";
        assert_eq!(round_trip::<f32>() > 1, vectors);
        assert_eq!(round_trip::<f64>() > 1, vectors);
    }
}
