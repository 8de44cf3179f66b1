//! Picking the widest instructions for the hot loops, and writing the loops with them.
//!
//! The kernels are written once, generic over `pulp`'s [`Simd`] instruction sets, with explicit
//! vector operations: on x86-64 the CPU is asked at run time and they run on AVX2 (x86-64-v3)
//! when it has it (checked with `objdump`: the AVX2 variants of the kernels work on `ymm`
//! registers throughout), else one element at a time; on AArch64 on NEON; elsewhere (a
//! Cortex-M, say) one element at a time. `pulp` keeps the dispatch free of `unsafe` here. Explicit vectors rather than
//! auto-vectorised loops because the sweeps are bound by memory traffic and measured so: the
//! best auto-vectorised kernels ran 1.25-1.35x the traffic floor and fell to 1.7-2.3x whenever
//! LLVM's SLP vectoriser gave up on a variation of them (other unroll widths, other row groups).
//!
//! AVX-512 (`pulp`'s `x86-v4`) is opt-in, with the crate's `avx512` feature, and even then
//! only sweeps 2 and 3 over packed momentum (bf16 or 8 bits, `came::packed`; single matrices
//! and batches) run with it: their kernels ask for it through [`LaneKernel::widest`].
//! Dispatching every kernel to it stepped a 4096 x 4096 `f32` matrix 6-10% faster and a bf16
//! one with 8-bit momentum 23% faster on the AMD EPYC the benchmarks ran on, but GPT-2 small
//! 8-12% slower, its 768-column matrices (50257 x 768, 3072 x 768) 30% slower and 768 x 3072
//! 12% slower (`bench`, both builds side by side); on an Intel Xeon it stepped bf16 with 8-bit
//! momentum 20% faster, `f32` as fast and the 3x3 batch 8-17% slower. The packed sweeps alone
//! on AVX-512 step bf16 weights with 8-bit momentum 11-17% faster on that Xeon and 8-10%
//! faster on an AMD EPYC (medians; README, "16-bit weights and 8-bit momentum"). The feature
//! is off by default because it turns on `pulp`'s `x86-v4` for the whole build, which changes
//! what `pulp::Arch::new()` picks in every other crate that uses `pulp`, and because with it
//! the last bits of a packed step depend on whether the CPU has AVX-512.
//!
//! Every operation is an IEEE-754 correctly rounded lane-wise add, subtract, multiply, divide or
//! square root; nothing is fused. Sums are formed one accumulator vector per row and reduced in
//! a fixed order, so results are identical for any thread count; they can differ in the last
//! bits between CPUs of different vector widths.

use core::marker::PhantomData;

use pulp::Simd;

use crate::Float;

/// The work one lane does in one sweep, on one work item.
///
/// Kernels are plain structs whose `run` is `#[inline(always)]` and generic over the instruction
/// set, so that [`run`] compiles each of them for every instruction set it dispatches to.
pub trait LaneKernel: Sync {
    /// One lane's inputs and outputs.
    type Item: Send;

    /// Does one lane's work with the instruction set `simd`.
    fn run<S: Simd>(&self, simd: S, item: &mut Self::Item);

    /// Whether `item` runs with the widest vectors the CPU has: AVX-512 where an x86-64 CPU
    /// has it and the crate's `avx512` feature is on, otherwise the usual instruction set.
    /// Only the sweeps over packed momentum ask for it (see the module's notes).
    #[inline(always)]
    fn widest(&self, item: &Self::Item) -> bool {
        let _ = item;
        false
    }
}

/// Runs `kernel` on `item`, compiled for the best instruction set this CPU supports (up to
/// AVX2 on x86-64, or AVX-512 where [`LaneKernel::widest`] asks for it; see the module's notes).
#[inline(always)]
pub(crate) fn run<K: LaneKernel>(kernel: &K, item: &mut K::Item) {
    let widest = kernel.widest(item);
    #[cfg(all(feature = "avx512", any(target_arch = "x86", target_arch = "x86_64")))]
    if widest && let Some(simd) = pulp::x86::V4::try_new() {
        return Simd::vectorize(simd, Lane { kernel, item });
    }
    let _ = widest;
    dispatch(Lane { kernel, item });
}

/// Runs `op` with the instruction set the kernels use on this CPU: AVX2 where an x86-64 CPU
/// has it (also where it has AVX-512), NEON on AArch64, else one element at a time.
#[inline(always)]
pub(crate) fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        match pulp::x86::V3::try_new() {
            Some(simd) => Simd::vectorize(simd, op),
            None => Simd::vectorize(Scalar, op),
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    pulp::Arch::new().dispatch(op)
}

/// The vector instruction set the kernels run with on this CPU, as `pulp` names it: for
/// example `pulp::x86::v3::V3` (AVX2), `pulp::aarch64::Neon` (NEON) or `pulp::Scalar` (one
/// element at a time, as on a Cortex-M). Every step asks the CPU the same way, so this is the
/// instruction set steps run with, except that with the `avx512` feature the sweeps over
/// packed momentum ([`crate::Momentum::Bf16`], [`crate::Momentum::Int8`]) run with AVX-512
/// where an x86-64 CPU has it.
///
/// ```
/// let isa = came::instruction_set();
/// assert!(isa.starts_with("pulp::"));
/// ```
#[must_use]
pub fn instruction_set() -> &'static str {
    struct Name;

    impl pulp::WithSimd for Name {
        type Output = &'static str;

        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> &'static str {
            core::any::type_name::<S>()
        }
    }

    dispatch(Name)
}

struct Lane<'a, K: LaneKernel> {
    kernel: &'a K,
    item: &'a mut K::Item,
}

impl<K: LaneKernel> pulp::WithSimd for Lane<'_, K> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.kernel.run(simd, self.item);
    }
}

/// The vector operations of `T` under instruction set `S`, with short names. Under
/// [`Scalar`] a "vector" is one `T` and each operation the plain IEEE operation: the formulas
/// of [`crate::came::formula`] run on whole vectors and on the elements of a tail alike.
#[derive(Clone, Copy)]
pub(crate) struct Ops<S, T> {
    simd: S,
    t: PhantomData<T>,
}

/// The instruction set of one element at a time (`V<Scalar, T>` is `T`).
pub(crate) use pulp::Scalar;

/// A vector of `T` under `S`.
pub(crate) type V<S, T> = <T as crate::float::sealed::Sealed>::V<S>;

impl<S: Simd, T: Float> Ops<S, T> {
    #[inline(always)]
    pub(crate) fn new(simd: S) -> Self {
        Self {
            simd,
            t: PhantomData,
        }
    }

    #[inline(always)]
    pub(crate) fn splat(self, x: T) -> V<S, T> {
        T::v_splat(self.simd, x)
    }

    #[inline(always)]
    pub(crate) fn add(self, a: V<S, T>, b: V<S, T>) -> V<S, T> {
        T::v_add(self.simd, a, b)
    }

    #[inline(always)]
    pub(crate) fn sub(self, a: V<S, T>, b: V<S, T>) -> V<S, T> {
        T::v_sub(self.simd, a, b)
    }

    #[inline(always)]
    pub(crate) fn mul(self, a: V<S, T>, b: V<S, T>) -> V<S, T> {
        T::v_mul(self.simd, a, b)
    }

    #[inline(always)]
    pub(crate) fn div(self, a: V<S, T>, b: V<S, T>) -> V<S, T> {
        T::v_div(self.simd, a, b)
    }

    #[inline(always)]
    pub(crate) fn sqrt(self, a: V<S, T>) -> V<S, T> {
        T::v_sqrt(self.simd, a)
    }

    #[inline(always)]
    pub(crate) fn sum(self, a: V<S, T>) -> T {
        T::v_sum(self.simd, a)
    }
}
