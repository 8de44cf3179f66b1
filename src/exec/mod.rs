//! How the work of a step is run: which instructions (`simd`), cut into which pieces (`lanes`),
//! on which threads (`Executor`, and the thread pool `pool` with `std`), and in which order
//! across tensors ([`all_or_nothing`]: check every tensor, then change every tensor), and which
//! cache lines the loops ask for ahead of reading them (`prefetch`).
//!
//! Nothing here knows the CAME update; `crate::came` and `crate::adamw` hand their sweeps to an
//! [`Executor`] as [`LaneKernel`]s.

pub(crate) mod lanes;
#[cfg(feature = "std")]
pub(crate) mod pool;
pub(crate) mod prefetch;
pub(crate) mod simd;

pub(crate) use simd::LaneKernel;

/// Runs a kernel over every lane's work item, and closures over every tensor of a step.
pub trait Executor: Sync {
    /// Runs `kernel` once on every item; items may run concurrently.
    fn run<K: LaneKernel>(&self, kernel: &K, items: &mut [K::Item]);

    /// Runs `f` on every pair of items of `a` and `b` (pairs may run concurrently) and returns
    /// the result of the lowest-numbered pair that returned one.
    fn each<A, B, R, F>(&self, a: &mut [A], b: &mut [B], f: F) -> Option<(usize, R)>
    where
        A: Send,
        B: Send,
        R: Send,
        F: Fn(usize, &mut A, &mut B) -> Option<R> + Sync + Send;
}

/// Runs everything one after another on the calling thread.
pub(crate) struct Serial;

impl Executor for Serial {
    fn run<K: LaneKernel>(&self, kernel: &K, items: &mut [K::Item]) {
        for item in items {
            simd::run(kernel, item);
        }
    }

    fn each<A, B, R, F>(&self, a: &mut [A], b: &mut [B], f: F) -> Option<(usize, R)>
    where
        A: Send,
        B: Send,
        R: Send,
        F: Fn(usize, &mut A, &mut B) -> Option<R> + Sync + Send,
    {
        let mut first = None;
        for (i, (a, b)) in a.iter_mut().zip(b).enumerate() {
            if let Some(r) = f(i, a, b) {
                first.get_or_insert((i, r));
            }
        }
        first
    }
}

/// The one rule for a step over many tensors, borrowed or owned, serial or on threads.
///
/// Each tensor is a pair of `a` and `b` items, with its position (the owned optimizer keeps a
/// tensor's state in `a` and gets its parameter and gradient in `b`; a borrowed step has it all
/// in `a` and uses [`all_or_nothing`]). With `guard` on: `prepare` runs on every tensor (reading gradients and
/// state, writing only scratch space and the pending half of the step); if any fails, `abort`
/// runs on every tensor and the lowest-numbered failure is returned with nothing changed. Only
/// then does `finish` run on every tensor (the writes). With `guard` off each tensor is
/// prepared and finished on its own: a failing tensor is left as it was and the others take
/// their step.
///
/// Returns the lowest-numbered failure, with its position.
pub(crate) fn all_or_nothing_pairs<A, B, R, E, P, F, X>(
    exec: &E,
    (a, b): (&mut [A], &mut [B]),
    guard: bool,
    prepare: P,
    finish: F,
    abort: X,
) -> Option<(usize, R)>
where
    A: Send,
    B: Send,
    R: Send,
    E: Executor,
    P: Fn(usize, &mut A, &mut B) -> Result<(), R> + Sync + Send,
    F: Fn(usize, &mut A, &mut B) -> Result<(), R> + Sync + Send,
    X: Fn(&mut A) + Sync + Send,
{
    if guard {
        if let Some(failed) = exec.each(a, b, |i, a, b| prepare(i, a, b).err()) {
            for item in a.iter_mut() {
                abort(item);
            }
            return Some(failed);
        }
        exec.each(a, b, |i, a, b| finish(i, a, b).err())
    } else {
        exec.each(a, b, |i, a, b| {
            prepare(i, a, b).and_then(|()| finish(i, a, b)).err()
        })
    }
}

/// [`all_or_nothing_pairs`] over one slice of tensors, each holding all it needs.
pub(crate) fn all_or_nothing<I, R, E, P, F, X>(
    exec: &E,
    items: &mut [I],
    guard: bool,
    prepare: P,
    finish: F,
    abort: X,
) -> Option<(usize, R)>
where
    I: Send,
    R: Send,
    E: Executor,
    P: Fn(usize, &mut I) -> Result<(), R> + Sync + Send,
    F: Fn(usize, &mut I) -> Result<(), R> + Sync + Send,
    X: Fn(&mut I) + Sync + Send,
{
    // a slice of nothing as long as any slice: zero-sized, so it takes no memory
    let mut units = [(); usize::MAX];
    let n = items.len();
    all_or_nothing_pairs(
        exec,
        (items, &mut units[..n]),
        guard,
        |i, item, ()| prepare(i, item),
        |i, item, ()| finish(i, item),
        abort,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (prepared, finished, aborted, fails in prepare)
    type Item = (bool, bool, bool, bool);

    fn run(items: &mut [Item], guard: bool) -> Option<(usize, &'static str)> {
        all_or_nothing(
            &Serial,
            items,
            guard,
            |_, it: &mut Item| {
                if it.3 {
                    return Err("bad");
                }
                it.0 = true;
                Ok(())
            },
            |_, it: &mut Item| {
                it.1 = true;
                Ok(())
            },
            |it: &mut Item| it.2 = true,
        )
    }

    #[test]
    fn with_the_guard_one_failure_finishes_nothing() {
        let mut items = [(false, false, false, false); 4];
        items[2].3 = true;
        assert_eq!(run(&mut items, true), Some((2, "bad")));
        assert!(items.iter().all(|it| !it.1 && it.2));
        items[2].3 = false;
        assert_eq!(run(&mut items, true), None);
        assert!(items.iter().all(|it| it.0 && it.1));
    }

    #[test]
    fn without_the_guard_the_others_finish() {
        let mut items = [(false, false, false, false); 4];
        items[1].3 = true;
        items[3].3 = true;
        assert_eq!(run(&mut items, false), Some((1, "bad")));
        let finished: [bool; 4] = core::array::from_fn(|i| items[i].1);
        assert_eq!(finished, [true, false, true, false]);
        assert!(items.iter().all(|it| !it.2));
    }
}
