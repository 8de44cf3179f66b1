//! The matrix products of a dense layer over a block of examples, written as plain loops over
//! rows. Every function is `#[inline(always)]`: the model calls them inside a `pulp` dispatch,
//! so the compiler vectorises them for the best instruction set of this CPU (AVX2 on most
//! x86-64), picked at run time.
//!
//! Matrices are row-major; `a` is `B x K`, a layer's weight `w` is `K x N` (inputs x outputs).

/// `out (B x N) += a (B x K) w (K x N)`: four examples share each row of `w`.
#[inline(always)]
pub fn matmul_acc(a: &[f32], w: &[f32], out: &mut [f32], k: usize, n: usize) {
    let mut blocks = a.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * n));
    for (a, out) in &mut blocks {
        let (o0, rest) = out.split_at_mut(n);
        let (o1, rest) = rest.split_at_mut(n);
        let (o2, o3) = rest.split_at_mut(n);
        for (i, row) in w.chunks_exact(n).enumerate() {
            let (a0, a1, a2, a3) = (a[i], a[k + i], a[2 * k + i], a[3 * k + i]);
            for ((((o0, o1), o2), o3), &wj) in o0
                .iter_mut()
                .zip(&mut *o1)
                .zip(&mut *o2)
                .zip(&mut *o3)
                .zip(row)
            {
                *o0 += a0 * wj;
                *o1 += a1 * wj;
                *o2 += a2 * wj;
                *o3 += a3 * wj;
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

/// `out (K x N) += aᵀ d` for `a` `B x K` and `d` `B x N`: the weight gradient.
#[inline(always)]
pub fn matmul_tn_acc(a: &[f32], d: &[f32], out: &mut [f32], k: usize, n: usize) {
    let b = a.len() / k;
    let full = b / 4 * 4;
    for (i, row) in out.chunks_exact_mut(n).enumerate() {
        for e in (0..full).step_by(4) {
            let (a0, a1, a2, a3) = (
                a[e * k + i],
                a[(e + 1) * k + i],
                a[(e + 2) * k + i],
                a[(e + 3) * k + i],
            );
            let d = &d[e * n..(e + 4) * n];
            let (d0, rest) = d.split_at(n);
            let (d1, rest) = rest.split_at(n);
            let (d2, d3) = rest.split_at(n);
            for ((((o, &x0), &x1), &x2), &x3) in row.iter_mut().zip(d0).zip(d1).zip(d2).zip(d3) {
                *o += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3;
            }
        }
        for e in full..b {
            axpy(a[e * k + i], &d[e * n..(e + 1) * n], row);
        }
    }
}

/// `out (B x K) = d wᵀ` for `d` `B x N` and `w` `K x N`: the input gradient.
#[inline(always)]
pub fn matmul_nt(d: &[f32], w: &[f32], out: &mut [f32], k: usize, n: usize) {
    for (d, out) in d.chunks_exact(n).zip(out.chunks_exact_mut(k)) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
            *o = dot(d, row);
        }
    }
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
    let tail: f32 = xt.iter().zip(yt).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
