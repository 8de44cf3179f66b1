//! The element types of the GPU path ([`CudaElement`], [`CudaFloat`]), the `#[repr(C)]` structs
//! the kernels read, field for field as `came.cu` declares them, and the sizes both sides agree
//! on.
// Offsets and sizes go to the device as `long long`; device memory is far below 2^63 elements.
#![allow(clippy::cast_possible_wrap)]

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

use crate::config::Coefficients;
use crate::{CameConfig, Element, Float, Rounding};

/// Rows of a tile (`TILE_R` in `came.cu`).
pub(super) const TILE_R: usize = 64;
/// Columns of a tile (`TILE_C`).
pub(super) const TILE_C: usize = 256;
/// Threads per block (`THREADS`).
pub(super) const THREADS: u32 = 256;
/// Elements of a vector chunk (`VEC_CHUNK`).
pub(super) const VEC_CHUNK: usize = 4096;
/// A non-finite gradient, or an overflow from finite inputs (`STATUS_GRAD`).
pub(super) const STATUS_GRAD: i32 = 1;
/// A non-finite value in the state (`STATUS_STATE`).
pub(super) const STATUS_STATE: i32 = 2;
/// No gradient this step: the tensor is left out (`STATUS_SKIP`, set by the host).
pub(super) const STATUS_SKIP: i32 = 4;
/// A 16-bit parameter came out infinite (`STATUS_OVERFLOW`, set by the update kernels).
pub(super) const STATUS_OVERFLOW: i32 = 8;

/// A type parameters and gradients are stored in on the GPU: `f32`, `f64`, [`half::bf16`] or
/// [`half::f16`] (every [`Element`]), computed in [`Element::Compute`] (`f32` for the 16-bit
/// types), which is a [`CudaFloat`]. Device buffers hold the type itself (`CudaSlice<bf16>`,
/// through cudarc's `half` support, as candle's CUDA tensors do).
///
/// Every [`Element`] is a `CudaElement`, and only they are (the trait needs [`Element`], which
/// is sealed).
pub trait CudaElement: Element<Compute: CudaFloat> + DeviceRepr + ValidAsZeroBits {
    /// The type's name in the kernels' names (`came.cu`): `"f32"`, `"f64"`, `"bf16"`, `"f16"`.
    const NAME: &'static str;
}

/// The types the GPU kernels compute in: `f32` and `f64`. Each is also a [`CudaElement`]
/// stored as itself.
pub trait CudaFloat: Float + DeviceRepr + ValidAsZeroBits {
    /// The suffix of the kernels' names for this type (its [`CudaElement::NAME`]).
    const SUFFIX: &'static str;
}

impl CudaFloat for f32 {
    const SUFFIX: &'static str = "f32";
}

impl CudaFloat for f64 {
    const SUFFIX: &'static str = "f64";
}

impl<T: CudaFloat> CudaElement for T {
    const NAME: &'static str = T::SUFFIX;
}

impl CudaElement for half::bf16 {
    const NAME: &'static str = "bf16";
}

impl CudaElement for half::f16 {
    const NAME: &'static str = "f16";
}

/// A tensor's place in the device buffers, as `struct Tensor` of `came.cu` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TensorDesc {
    pub numel: i64,
    pub batch: i64,
    pub rows: i64,
    pub cols: i64,
    pub m: i64,
    pub sq_row: i64,
    pub sq_col: i64,
    pub res_row: i64,
    pub res_col: i64,
    pub next_row: i64,
    pub next_col: i64,
    pub fac_row: i64,
    pub fac_col: i64,
    pub row_part: i64,
    pub col_part: i64,
    pub tiles_r: i64,
    pub tiles_c: i64,
    pub norm_part: i64,
    pub norm_parts: i64,
    pub factored: i32,
    pub group: i32,
}

/// A group's coefficients, as `struct Group<T>` of `came.cu` lays them out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupDesc<T> {
    pub beta1: T,
    pub beta2: T,
    pub beta3: T,
    pub omb1: T,
    pub omb2: T,
    pub omb3: T,
    pub eps1: T,
    pub eps2: T,
    pub clip: T,
    pub lr: T,
    pub decay: T,
    pub has_decay: i32,
    /// 1 when the group rounds 16-bit parameters stochastically ([`Rounding::Stochastic`]).
    pub stochastic: i32,
}

/// A tile or a vector chunk, as `struct Task`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Task {
    pub tensor: i32,
    pub pad: i32,
    pub b: i64,
    pub tr: i64,
    pub tc: i64,
}

/// Up to 256 consecutive row or column statistics of one tensor, as `struct Span`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Span {
    pub tensor: i32,
    pub cols: i32,
    pub start: i64,
    pub len: i64,
}

// SAFETY: plain `#[repr(C)]` data of integers, the same fields in the same order as the
// structs of `came.cu`, so the kernels read them as laid out here.
unsafe impl DeviceRepr for TensorDesc {}
// SAFETY: as above; `T` is `f32` or `f64`, `#[repr(C)]` like `struct Group<T>`.
unsafe impl<T: CudaFloat> DeviceRepr for GroupDesc<T> {}
// SAFETY: as above, `struct Task`.
unsafe impl DeviceRepr for Task {}
// SAFETY: as above, `struct Span`.
unsafe impl DeviceRepr for Span {}

/// A group's coefficients as the kernels take them.
pub(super) fn group_desc<T: CudaFloat>(config: &CameConfig) -> GroupDesc<T> {
    // the kernels run the reference's instability statistics (`check_config` refuses others)
    let k = Coefficients::<T>::new(config, 0);
    GroupDesc {
        beta1: k.beta1,
        beta2: k.beta2,
        beta3: k.beta3,
        omb1: k.one_minus_beta1,
        omb2: k.one_minus_beta2,
        omb3: k.one_minus_beta3,
        eps1: k.eps1,
        eps2: k.eps2,
        clip: k.clip_threshold,
        lr: k.lr,
        decay: k.decay.unwrap_or(T::zero()),
        has_decay: i32::from(k.decay.is_some()),
        stochastic: i32::from(matches!(config.rounding, Rounding::Stochastic { .. })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// `GroupDesc<T>` as `struct Group<T>` lays it out: eleven `T`, two `int`s.
    #[test]
    fn group_descs_have_the_kernels_layout() {
        assert_eq!(offset_of!(GroupDesc<f32>, has_decay), 44);
        assert_eq!(offset_of!(GroupDesc<f32>, stochastic), 48);
        assert_eq!(size_of::<GroupDesc<f32>>(), 52);
        assert_eq!(offset_of!(GroupDesc<f64>, stochastic), 92);
        assert_eq!(size_of::<GroupDesc<f64>>(), 96);
    }

    #[test]
    fn group_descs_carry_the_rounding_and_the_decay() {
        let nearest = group_desc::<f32>(&CameConfig::new(1e-2));
        assert_eq!((nearest.stochastic, nearest.has_decay), (0, 0));
        let config = CameConfig::new(1e-2)
            .with_weight_decay(0.5)
            .with_rounding(Rounding::Stochastic { seed: 1 });
        let d = group_desc::<f32>(&config);
        assert_eq!((d.stochastic, d.has_decay), (1, 1));
        assert_eq!(d.decay.to_bits(), 5e-3f32.to_bits());
    }

    #[test]
    fn kernel_names_name_the_storage_types() {
        assert_eq!(
            [f32::NAME, f64::NAME, half::bf16::NAME, half::f16::NAME],
            ["f32", "f64", "bf16", "f16"]
        );
    }
}
