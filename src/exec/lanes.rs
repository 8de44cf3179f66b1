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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_ranges_cover_every_unit_once_in_order() {
        for units in [0, 1, 5, 16, 17, 100, 4099] {
            for lanes in 1..=MAX_LANES {
                let mut next = 0;
                for lane in 0..lanes {
                    let (start, end) = lane_range(units, lanes, lane);
                    assert_eq!(start, next, "{units} units, {lanes} lanes, lane {lane}");
                    let len = end - start;
                    assert!(len == units / lanes || len == units / lanes + 1);
                    next = end;
                }
                assert_eq!(next, units);
            }
        }
    }

    #[test]
    fn split_cuts_runs_of_units() {
        let data: [u32; 14] = core::array::from_fn(|i| i as u32);
        // 7 units of 2 elements in 3 lanes: 3 + 2 + 2 units
        let pieces: LaneItems<&[u32]> = split(&data, 2, 7, 3).collect();
        assert_eq!(pieces.as_slice(), &[&data[..6], &data[6..10], &data[10..]]);
        let mut data = data;
        let lens: LaneItems<usize> = split_mut(&mut data, 2, 7, 3).map(|p| p.len()).collect();
        assert_eq!(lens.as_slice(), &[6, 4, 4]);
        // a slice too short for its units ends the split instead of panicking
        assert_eq!(split(&[1u32, 2, 3], 2, 7, 3).count(), 0);
    }

    #[test]
    fn element_items_cut_all_four_buffers_alike() {
        let (mut p, g, mut m, mut v) = ([0.0f32; 10], [1.0f32; 10], [2.0f32; 10], [3.0f32; 10]);
        let items = element_items((&mut p, &g), (&mut m, &mut v), 4);
        let lens: LaneItems<[usize; 4]> = items
            .iter()
            .map(|(p, g, m, v)| [p.len(), g.len(), m.len(), v.len()])
            .collect();
        assert_eq!(lens.as_slice(), &[[3; 4], [3; 4], [2; 4], [2; 4]]);
    }
}
