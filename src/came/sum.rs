//! Long sums with an error that does not grow with their length.
//!
//! A sum of `n` similar `f32` values added one after another is off by up to `n` units in the
//! last place: a column of a million rows loses four decimal digits. The sweeps therefore add
//! terms in short blocks (a block of a column sum over [`BLOCK_ROWS`] rows, a block of a row
//! sum over [`ROW_BLOCK`] vectors per accumulator) and add each block's sum into a running
//! total with Kahan's compensation, which carries the rounding error of every addition into the
//! next. The total's error is then about that of one block plus two units in the last place,
//! whatever the length. The order of every addition depends on the shape alone, so results
//! stay bit-identical for any thread count.

use pulp::Simd;

use crate::Float;
use crate::exec::simd::{Ops, Scalar, V};

/// Rows of a column sum added plainly before the block is added into the total.
pub(super) const BLOCK_ROWS: usize = 64;

/// Vectors per accumulator of a row sum added plainly before the block is added into the
/// total.
pub(super) const ROW_BLOCK: usize = 64;

/// A sum with Kahan's compensation: `sum - comp` is the sum of the terms added, `comp` the
/// rounding error carried to the next addition.
#[derive(Clone, Copy)]
pub(super) struct Kahan<X> {
    pub sum: X,
    comp: X,
}

impl<X: Copy> Kahan<X> {
    /// An empty sum.
    #[inline(always)]
    pub(super) fn new(zero: X) -> Self {
        Self {
            sum: zero,
            comp: zero,
        }
    }
}

/// Adds `x` to a compensated sum of vectors (or, under [`Scalar`], of elements).
#[inline(always)]
pub(super) fn add<S: Simd, T: Float>(o: Ops<S, T>, k: &mut Kahan<V<S, T>>, x: V<S, T>) {
    (k.sum, k.comp) = kahan(o, (k.sum, k.comp), x);
}

/// One compensated addition: `(sum, comp) + x`.
#[inline(always)]
fn kahan<S: Simd, T: Float>(
    o: Ops<S, T>,
    (sum, comp): (V<S, T>, V<S, T>),
    x: V<S, T>,
) -> (V<S, T>, V<S, T>) {
    let y = o.sub(x, comp);
    let t = o.add(sum, y);
    (t, o.sub(o.sub(t, sum), y))
}

/// One lane's column sums: the block being summed, which starts from the rounding error of
/// the last addition into the total (Kahan's compensation, carried in the block), and the total
/// of the blocks before it, `cols` values each.
pub(super) struct ColSums<'a, T> {
    pub block: &'a mut [T],
    pub total: &'a mut [T],
}

impl<'a, T: Float> ColSums<'a, T> {
    /// Arrays of a lane's column sums: block and total.
    pub(super) const PARTS: usize = 2;

    /// The column sums in `PARTS * cols` elements of workspace.
    pub(super) fn new(space: &'a mut [T], cols: usize) -> Self {
        let (block, total) = space.split_at_mut(cols);
        Self {
            block,
            total: &mut total[..cols],
        }
    }

    /// An empty total and an empty block.
    pub(super) fn clear(&mut self) {
        self.block.fill(T::zero());
        self.total.fill(T::zero());
    }

    /// Adds the block into the total; the block then holds the addition's rounding error,
    /// negated, for the next block to start from.
    #[inline(always)]
    pub(super) fn fold<S: Simd>(&mut self, o: Ops<S, T>) {
        let (tv, tt) = T::as_mut_simd::<S>(self.total);
        let (bv, bt) = T::as_mut_simd::<S>(self.block);
        let zero = o.splat(T::zero());
        for (t, b) in tv.iter_mut().zip(bv.iter_mut()) {
            let (sum, comp) = kahan(o, (*t, zero), *b);
            (*t, *b) = (sum, o.sub(zero, comp));
        }
        let s = Ops::<Scalar, T>::new(Scalar);
        for (t, b) in tt.iter_mut().zip(bt.iter_mut()) {
            let (sum, comp) = kahan(s, (*t, T::zero()), *b);
            (*t, *b) = (sum, T::zero() - comp);
        }
    }
}

/// The total of lane 0 after adding every other lane's total into it, in lane order; `space`
/// holds the lanes' [`ColSums`] one after another.
pub(super) fn combine_lanes<T: Float>(space: &mut [T], cols: usize) -> &mut [T] {
    let stride = ColSums::<T>::PARTS * cols;
    let (first, others) = space.split_at_mut(stride);
    let total = &mut first[cols..2 * cols];
    for lane in others.chunks_exact(stride) {
        for (a, &b) in total.iter_mut().zip(&lane[cols..2 * cols]) {
            *a = *a + b;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "a million additions: minutes under miri")]
    fn compensated_totals_do_not_drift() {
        // a million copies of 0.81: a plain f32 sum is off by about 1e-2 relative
        let s = Ops::<Scalar, f32>::new(Scalar);
        let mut space = [0.0f32; 2];
        let mut sums = ColSums::new(&mut space, 1);
        sums.clear();
        let mut plain = 0.0f32;
        for _ in 0..1_000_000 / BLOCK_ROWS {
            for _ in 0..BLOCK_ROWS {
                sums.block[0] += 0.81;
                plain += 0.81;
            }
            sums.fold(s);
        }
        let exact = f64::from(0.81f32) * 1e6;
        let compensated = f64::from(sums.total[0]);
        // one block's relative rounding (64 additions; equal blocks round alike, so it does not
        // average out), however many blocks: 5.4e-7 here
        assert!((compensated - exact).abs() / exact < 1e-6, "{compensated}");
        assert!((f64::from(plain) - exact).abs() / exact > 1e-3, "{plain}");
    }

    #[test]
    fn lanes_combine_in_order() {
        // two lanes of two columns: block and total each
        let mut space = [9.0f32, 9.0, 1.0, 2.0, 9.0, 9.0, 10.0, 20.0];
        assert_eq!(combine_lanes(&mut space, 2), &[11.0, 22.0]);
    }

    #[test]
    fn kahan_carries_what_rounding_drops() {
        let s = Ops::<Scalar, f32>::new(Scalar);
        let mut k = Kahan::new(0.0f32);
        add(s, &mut k, 1.0);
        for _ in 0..1000 {
            add(s, &mut k, 1e-8); // each is lost in a plain sum: 1 + 1e-8 == 1 in f32
        }
        assert!((f64::from(k.sum) - 1.00001).abs() < 1e-7, "{}", k.sum);
    }
}
