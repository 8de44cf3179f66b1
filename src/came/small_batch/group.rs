//! A group of 3x3 matrices moved into and out of the layout of `small_batch.rs`'s kernels,
//! one matrix per vector lane: vector `e` holds element `e` of every matrix of the group.
//! A whole group (as many matrices as a vector has lanes) is loaded as the vectors it fills
//! and transposed in registers; a partial one (the last of a lane) is moved value by value.

use pulp::Simd;

use crate::check::all_finite;
use crate::exec::simd::V;
pub(super) use crate::float::MAX_LANES;
use crate::float::lanes;
use crate::{Element, Float};

/// Rows of each matrix stepped here.
pub(super) const ROWS: usize = 3;
/// Columns of each matrix stepped here.
pub(super) const COLS: usize = 3;
/// Elements of each matrix.
pub(super) const SIZE: usize = ROWS * COLS;
/// Elements of each staging buffer: a group's matrices, `SIZE * L`.
pub(super) const STAGE: usize = SIZE * MAX_LANES;

/// A staging buffer.
pub(super) type Stage<T> = [T; STAGE];

/// The matrices of `src` (`size` elements each: [`SIZE`], or [`ROWS`] statistics; at most `l`
/// of them) into `buf`, transposed: element `e` of matrix `i` goes to `buf[e * l + i]`, widened
/// to the compute type. A whole group moves in registers ([`to_lanes`]), a partial one value
/// by value.
#[inline(always)]
pub(super) fn gather<S: Simd, T: Float, E: Element<Compute = T>>(
    simd: S,
    src: &[E],
    size: usize,
    l: usize,
    buf: &mut [T],
) {
    let count = src.len() / size;
    let buf = &mut buf[..size * l];
    if count == l {
        let mut v = [T::v_splat(simd, T::zero()); SIZE];
        for (i, v) in v[..size].iter_mut().enumerate() {
            *v = E::load::<S>(src, i);
        }
        to_lanes::<S, T>(simd, &mut v[..size]);
        vectors_mut::<S, T>(buf, size).copy_from_slice(&v[..size]);
    } else {
        for (e, slots) in buf.chunks_exact_mut(l).enumerate() {
            for (i, slot) in slots[..count].iter_mut().enumerate() {
                *slot = src[i * size + e].to_compute();
            }
        }
    }
}

/// The inverse of [`gather`], each value stored by `put(destination, value, index in dst)`.
#[inline(always)]
fn scatter_with<S: Simd, T: Float, E>(
    simd: S,
    buf: &[T],
    size: usize,
    l: usize,
    dst: &mut [E],
    mut put: impl FnMut(&mut E, T, usize),
) {
    let count = dst.len() / size;
    let buf = &buf[..size * l];
    if count == l {
        let mut stored: Stage<T> = [T::zero(); STAGE];
        vectors_mut::<S, T>(&mut stored, size)
            .copy_from_slice(&in_stored_order(simd, buf, size)[..size]);
        let values = stored.iter().zip(&mut dst[..l * size]).enumerate();
        for (at, (&v, x)) in values {
            put(x, v, at);
        }
    } else {
        for (e, values) in buf.chunks_exact(l).enumerate() {
            for (i, &v) in values[..count].iter().enumerate() {
                let at = i * size + e;
                put(&mut dst[at], v, at);
            }
        }
    }
}

/// The inverse of [`gather`] for values kept in the compute type: a whole group stored as
/// vectors.
#[inline(always)]
pub(super) fn scatter<S: Simd, T: Float>(simd: S, buf: &[T], size: usize, l: usize, dst: &mut [T]) {
    if dst.len() / size < l {
        return scatter_with(simd, buf, size, l, dst, |x, v, _| *x = v);
    }
    vectors_mut::<S, T>(dst, size).copy_from_slice(&in_stored_order(simd, buf, size)[..size]);
}

/// A whole group's `size` vectors in the lanes (`buf`, as [`gather`] leaves them), back in the
/// order the matrices are stored ([`from_lanes`]): the first `size` of those returned.
#[inline(always)]
fn in_stored_order<S: Simd, T: Float>(simd: S, buf: &[T], size: usize) -> [V<S, T>; SIZE] {
    let mut v = [T::v_splat(simd, T::zero()); SIZE];
    v[..size].copy_from_slice(vectors::<S, T>(buf, size));
    from_lanes::<S, T>(simd, &mut v[..size]);
    v
}

/// A group's row or column factors (three per matrix, in the lanes as [`gather`] leaves them)
/// into the lane's factors. A whole group's are kept as they are, in the lanes, since only
/// the next sweeps of these kernels read them ([`load_factors`]); a partial group's are
/// stored as the loops of `small.rs` store them.
#[inline(always)]
pub(super) fn save_factors<S: Simd, T: Float>(simd: S, buf: &[T], l: usize, dst: &mut [T]) {
    if dst.len() == ROWS * l {
        dst.copy_from_slice(&buf[..ROWS * l]);
    } else {
        scatter(simd, buf, ROWS, l, dst);
    }
}

/// The inverse of [`save_factors`].
#[inline(always)]
pub(super) fn load_factors<S: Simd, T: Float>(simd: S, src: &[T], l: usize, buf: &mut [T]) {
    if src.len() == ROWS * l {
        buf[..ROWS * l].copy_from_slice(src);
    } else {
        gather(simd, src, ROWS, l, buf);
    }
}

/// A whole group of `l` matrices of 3 or 9 elements, stored in order in `v` (3 or 9 vectors),
/// into vector `e` holding element `e` of every matrix. A 3x3 matrix is three triples (its
/// rows), so its elements are sorted in two rounds of [`Sealed::v_deinterleave3`]: the rows'
/// first, second and third elements (the columns), then each column's three rows.
///
/// [`Sealed::v_deinterleave3`]: crate::float::sealed::Sealed::v_deinterleave3
#[inline(always)]
fn to_lanes<S: Simd, T: Float>(simd: S, v: &mut [V<S, T>]) {
    if let [a, b, c] = *v {
        v.copy_from_slice(&T::v_deinterleave3(simd, [a, b, c]));
        return;
    }
    // by_col[k][j]: element j of the rows k l .. (k + 1) l of the group (its 3 l rows)
    let mut by_col = [[T::v_splat(simd, T::zero()); 3]; 3];
    for (k, by_col) in by_col.iter_mut().enumerate() {
        *by_col = T::v_deinterleave3(simd, [v[3 * k], v[3 * k + 1], v[3 * k + 2]]);
    }
    // then element j of rows 0, 1, 2 of every matrix
    for j in 0..COLS {
        let col = T::v_deinterleave3(simd, [by_col[0][j], by_col[1][j], by_col[2][j]]);
        for (r, &x) in col.iter().enumerate() {
            v[r * COLS + j] = x;
        }
    }
}

/// The inverse of [`to_lanes`].
#[inline(always)]
fn from_lanes<S: Simd, T: Float>(simd: S, v: &mut [V<S, T>]) {
    if let [x, y, z] = *v {
        v.copy_from_slice(&T::v_interleave3(simd, [x, y, z]));
        return;
    }
    let mut by_col = [[T::v_splat(simd, T::zero()); 3]; 3];
    for (j, by_col) in by_col.iter_mut().enumerate() {
        *by_col = T::v_interleave3(simd, [v[j], v[COLS + j], v[2 * COLS + j]]);
    }
    for k in 0..3 {
        let rows = T::v_interleave3(simd, [by_col[0][k], by_col[1][k], by_col[2][k]]);
        v[3 * k..3 * k + 3].copy_from_slice(&rows);
    }
}

/// The first `n` vectors of `buf`.
#[inline(always)]
pub(super) fn vectors<S: Simd, T: Float>(buf: &[T], n: usize) -> &[V<S, T>] {
    T::as_simd::<S>(&buf[..n * lanes::<S, T>()]).0
}

/// The first `n` vectors of `buf`, writable.
#[inline(always)]
pub(super) fn vectors_mut<S: Simd, T: Float>(buf: &mut [T], n: usize) -> &mut [V<S, T>] {
    T::as_mut_simd::<S>(&mut buf[..n * lanes::<S, T>()]).0
}

/// [`scatter`], returning whether every value stored is finite.
#[inline(always)]
pub(super) fn scatter_finite<S: Simd, T: Float>(
    simd: S,
    buf: &[T],
    size: usize,
    l: usize,
    dst: &mut [T],
) -> bool {
    scatter(simd, buf, size, l, dst);
    all_finite(dst)
}
