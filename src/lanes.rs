//! Work lanes: how a tensor is cut into pieces that can run one after another or in parallel.
//!
//! Lanes are a function of the shape alone, never of the thread count, so every partial sum is
//! formed and combined in the same order whether lanes run on one thread or on several: results
//! are bit-identical for any thread count.

/// Most work lanes a tensor is split into.
pub(crate) const MAX_LANES: usize = 16;

/// Fewest elements worth a lane of their own.
pub(crate) const MIN_LANE_ELEMS: usize = 32 * 1024;

/// Per-lane work items, at most one per lane.
pub(crate) type LaneItems<A> = heapless::Vec<A, MAX_LANES>;

/// The half-open range of `units` that lane `lane` of `lanes` covers; ranges are contiguous,
/// in order, and differ in size by at most one.
pub(crate) const fn lane_range(units: usize, lanes: usize, lane: usize) -> (usize, usize) {
    let base = units / lanes;
    let extra = units % lanes;
    let start = lane * base + if lane < extra { lane } else { extra };
    let len = base + if lane < extra { 1 } else { 0 };
    (start, start + len)
}

/// Splits `slice`, made of `units` runs of `unit` elements, into the lanes' pieces.
pub(crate) fn split<T>(slice: &[T], unit: usize, units: usize, lanes: usize) -> Split<&[T]> {
    Split {
        rest: slice,
        unit,
        units,
        lanes,
        lane: 0,
    }
}

/// Splits `slice`, made of `units` runs of `unit` elements, into the lanes' writable pieces.
pub(crate) fn split_mut<T>(
    slice: &mut [T],
    unit: usize,
    units: usize,
    lanes: usize,
) -> Split<&mut [T]> {
    Split {
        rest: slice,
        unit,
        units,
        lanes,
        lane: 0,
    }
}

/// Parameters, gradient, momentum and second moment of an element-wise step (AdamW, a CAME
/// vector), cut into `lanes` lanes of elements.
pub(crate) type ElementItem<'a, T> = (&'a mut [T], &'a [T], &'a mut [T], &'a mut [T]);

/// The lanes of an element-wise step over `param` and `grad` with state `(m, v)`, all of
/// equal length.
pub(crate) fn element_items<'a, T>(
    (param, grad): (&'a mut [T], &'a [T]),
    (m, v): (&'a mut [T], &'a mut [T]),
    lanes: usize,
) -> LaneItems<ElementItem<'a, T>> {
    let n = param.len();
    split_mut(param, 1, n, lanes)
        .zip(split(grad, 1, n, lanes))
        .zip(split_mut(m, 1, n, lanes))
        .zip(split_mut(v, 1, n, lanes))
        .map(|(((p, g), m), v)| (p, g, m, v))
        .collect()
}

/// Iterator over the lanes' pieces of a slice.
pub(crate) struct Split<S> {
    rest: S,
    unit: usize,
    units: usize,
    lanes: usize,
    lane: usize,
}

impl<S> Split<S> {
    fn next_len(&mut self) -> Option<usize> {
        if self.lane >= self.lanes {
            return None;
        }
        let (start, end) = lane_range(self.units, self.lanes, self.lane);
        self.lane += 1;
        Some((end - start) * self.unit)
    }
}

impl<'s, T> Iterator for Split<&'s [T]> {
    type Item = &'s [T];

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.next_len()?;
        let (head, tail) = self.rest.split_at_checked(len)?;
        self.rest = tail;
        Some(head)
    }
}

impl<'s, T> Iterator for Split<&'s mut [T]> {
    type Item = &'s mut [T];

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.next_len()?;
        let (head, tail) = core::mem::take(&mut self.rest).split_at_mut_checked(len)?;
        self.rest = tail;
        Some(head)
    }
}

/// The work one lane does in one sweep, on one work item.
///
/// Kernels are plain structs whose `run` is `#[inline(always)]` and generic over the instruction
/// set, so that [`crate::simd`] compiles each of them for every instruction set it dispatches to.
pub trait LaneKernel: Sync {
    /// One lane's inputs and outputs.
    type Item: Send;

    /// Does one lane's work with the instruction set `simd`.
    fn run<S: pulp::Simd>(&self, simd: S, item: &mut Self::Item);
}

/// Runs a kernel over every lane's work item.
pub trait Executor: Sync {
    /// Runs `kernel` once on every item; items may run concurrently.
    fn run<K: LaneKernel>(&self, kernel: &K, items: &mut [K::Item]);

    /// Whether work given to this executor may run on several threads (asked by the owned
    /// optimizer, which exists with `std` only).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    fn parallel(&self) -> bool {
        false
    }
}

/// Runs lanes one after another on the calling thread.
pub(crate) struct Serial;

impl Executor for Serial {
    fn run<K: LaneKernel>(&self, kernel: &K, items: &mut [K::Item]) {
        for item in items {
            crate::simd::run(kernel, item);
        }
    }
}
