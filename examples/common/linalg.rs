//! The matrix products of a dense layer over a block of examples, written as plain loops over
//! rows (the input gradient in `pulp`'s vectors where they hold eight `f32`). Every function is
//! `#[inline(always)]`: the model calls them inside a `pulp` dispatch, so the compiler
//! vectorises them for the best instruction set of this CPU (AVX2 on most x86-64), picked at
//! run time.
//!
//! Matrices are row-major; `a` is `B x K`, a layer's weight `w` is `K x N` (inputs x outputs).

use pulp::Simd;

/// Columns of `out` a tile keeps in registers while it runs over the whole inner dimension:
/// two vectors of eight under AVX2, so that four rows of it take eight registers.
const TILE: usize = 16;

/// `out (B x N) += a (B x K) w (K x N)`: four examples share each row of `w`. Each output
/// element adds its `K` products in order, `i` = 0, 1, ..., as a loop over `i` outside the
/// columns would; a tile of four rows and [`TILE`] columns stays in registers while it does.
#[inline(always)]
pub fn matmul_acc(a: &[f32], w: &[f32], out: &mut [f32], k: usize, n: usize) {
    let mut blocks = a.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * n));
    for (a, out) in &mut blocks {
        let a: [&[f32]; 4] = std::array::from_fn(|r| &a[r * k..(r + 1) * k]);
        let tiled = n / TILE * TILE;
        for j in (0..tiled).step_by(TILE) {
            let mut acc = [[0.0f32; TILE]; 4];
            for (r, acc) in acc.iter_mut().enumerate() {
                acc.copy_from_slice(&out[r * n + j..r * n + j + TILE]);
            }
            for (i, row) in w.chunks_exact(n).enumerate() {
                let w: &[f32; TILE] = row[j..j + TILE].try_into().expect("a whole tile");
                for (acc, a) in acc.iter_mut().zip(a) {
                    let ai = a[i];
                    for (o, &wj) in acc.iter_mut().zip(w) {
                        *o += ai * wj;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                out[r * n + j..r * n + j + TILE].copy_from_slice(acc);
            }
        }
        for (i, row) in w.chunks_exact(n).enumerate() {
            for (r, a) in a.iter().enumerate() {
                axpy(a[i], &row[tiled..], &mut out[r * n + tiled..(r + 1) * n]);
            }
        }
    }
    let done = a.len() / (4 * k) * 4;
    for (a, out) in a[done * k..]
        .chunks_exact(k)
        .zip(out[done * n..].chunks_exact_mut(n))
    {
        for (&ai, row) in a.iter().zip(w.chunks_exact(n)) {
            axpy(ai, row, out);
        }
    }
}

/// `out (K x N) += aᵀ d` for `a` `B x K` and `d` `B x N`: the weight gradient. Each output
/// element adds the examples four at a time, `((a0 d0 + a1 d1) + a2 d2) + a3 d3`, in their
/// order, then the rest one by one; four rows of `out` share each load of `d`.
#[inline(always)]
pub fn matmul_tn_acc(a: &[f32], d: &[f32], out: &mut [f32], k: usize, n: usize) {
    let b = a.len() / k;
    let full = b / 4 * 4;
    let mut quads = out.chunks_exact_mut(4 * n);
    for (quad, out) in (&mut quads).enumerate() {
        let i = 4 * quad;
        let (o0, rest) = out.split_at_mut(n);
        let (o1, rest) = rest.split_at_mut(n);
        let (o2, o3) = rest.split_at_mut(n);
        for e in (0..full).step_by(4) {
            let c: [[f32; 4]; 4] =
                std::array::from_fn(|r| std::array::from_fn(|q| a[(e + q) * k + i + r]));
            let x: [&[f32]; 4] = std::array::from_fn(|q| &d[(e + q) * n..(e + q + 1) * n]);
            for j in 0..n {
                let x = [x[0][j], x[1][j], x[2][j], x[3][j]];
                let term = |c: [f32; 4]| c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[3];
                o0[j] += term(c[0]);
                o1[j] += term(c[1]);
                o2[j] += term(c[2]);
                o3[j] += term(c[3]);
            }
        }
        for e in full..b {
            let x = &d[e * n..(e + 1) * n];
            for (r, o) in [&mut *o0, &mut *o1, &mut *o2, &mut *o3]
                .into_iter()
                .enumerate()
            {
                axpy(a[e * k + i + r], x, o);
            }
        }
    }
    let done = k / 4 * 4;
    for (i, row) in quads.into_remainder().chunks_exact_mut(n).enumerate() {
        let i = done + i;
        for e in (0..full).step_by(4) {
            let c: [f32; 4] = std::array::from_fn(|q| a[(e + q) * k + i]);
            let x: [&[f32]; 4] = std::array::from_fn(|q| &d[(e + q) * n..(e + q + 1) * n]);
            for (j, o) in row.iter_mut().enumerate() {
                *o += c[0] * x[0][j] + c[1] * x[1][j] + c[2] * x[2][j] + c[3] * x[3][j];
            }
        }
        for e in full..b {
            axpy(a[e * k + i], &d[e * n..(e + 1) * n], row);
        }
    }
}

/// `out (B x K) = d wᵀ` for `d` `B x N` and `w` `K x N`: the input gradient, each output
/// [`dot`] of a row of `d` and a row of `w`. Where `simd`'s vectors hold eight `f32` (AVX2),
/// four rows of `w` go through a row of `d` together ([`dot4`]): four independent sums, so
/// that none waits on its own previous addition, with the same results.
#[inline(always)]
pub fn matmul_nt<S: Simd>(simd: S, d: &[f32], w: &[f32], out: &mut [f32], k: usize, n: usize) {
    let grouped = if size_of::<S::f32s>() == size_of::<[f32; 8]>() {
        k / 4 * 4
    } else {
        0
    };
    for (d, out) in d.chunks_exact(n).zip(out.chunks_exact_mut(k)) {
        let (head, tail) = out.split_at_mut(grouped);
        for (o, w) in head.chunks_exact_mut(4).zip(w.chunks_exact(4 * n)) {
            let rows = std::array::from_fn(|r| &w[r * n..(r + 1) * n]);
            o.copy_from_slice(&dot4(simd, d, rows));
        }
        for (o, row) in tail.iter_mut().zip(w[grouped * n..].chunks_exact(n)) {
            *o = dot(d, row);
        }
    }
}

/// [`dot`] of `x` with each of four rows `y_r`, for vectors of eight `f32`: lane `l` of row
/// `r`'s accumulator adds `x_i y_ri` for `i = l, l + 8, ...` in order, then the lanes are added
/// in order and the products of the last `len % 8` elements after them.
#[inline(always)]
fn dot4<S: Simd>(simd: S, x: &[f32], y: [&[f32]; 4]) -> [f32; 4] {
    let (xv, xt) = S::as_simd_f32s(x);
    let yv = y.map(S::as_simd_f32s);
    let mut acc = [simd.splat_f32s(0.0); 4];
    for (i, &x) in xv.iter().enumerate() {
        for (acc, (y, _)) in acc.iter_mut().zip(&yv) {
            *acc = simd.add_f32s(*acc, simd.mul_f32s(x, y[i]));
        }
    }
    std::array::from_fn(|r| {
        let lanes: &[f32] = pulp::bytemuck::cast_slice(std::slice::from_ref(&acc[r]));
        add_partial_sums(lanes, xt, yv[r].1)
    })
}

/// `y += a x`.
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `x · y`, with eight partial sums so that the compiler can vectorise it.
#[inline(always)]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (x, y) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    add_partial_sums(&acc, xt, yt)
}

/// The end of [`dot`] and [`dot4`]: the partial sums `acc` added in order, then the products of
/// the elements `x_tail`, `y_tail` that filled no vector.
#[inline(always)]
fn add_partial_sums(acc: &[f32], x_tail: &[f32], y_tail: &[f32]) -> f32 {
    let tail: f32 = x_tail.iter().zip(y_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
