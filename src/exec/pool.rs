//! Threads: stepping one tensor's lanes, or many tensors, on a pool of worker threads.
//!
//! The pool is rayon's: workers persist between steps (a step of a model with hundreds of
//! tensors has three lane barriers per tensor, far too many to spawn threads for each), and work
//! stealing balances tensors of very different sizes while lanes of one large tensor run in
//! parallel too. Results do not depend on the thread count: lanes are cut by the shape alone and
//! their partial sums are combined in lane order (see [`Shape::lanes`]).

use rayon::prelude::*;

use super::{Executor, LaneKernel, simd};
use crate::Element;
use crate::adamw::{self, AdamWConfig, AdamWState};
use crate::came::multi::step_all_on;
use crate::{CameConfig, CameState, Error, Float, Shape, StepInfo, TensorError, TensorStep};

/// Runs lanes and tensors on the rayon pool the caller is installed in.
pub(crate) struct Rayon;

impl Executor for Rayon {
    fn run<K: LaneKernel>(&self, kernel: &K, items: &mut [K::Item]) {
        items
            .par_iter_mut()
            .with_max_len(1)
            .for_each(|item| simd::run(kernel, item));
    }

    fn each<A, B, R, F>(&self, a: &mut [A], b: &mut [B], f: F) -> Option<(usize, R)>
    where
        A: Send,
        B: Send,
        R: Send,
        F: Fn(usize, &mut A, &mut B) -> Option<R> + Sync + Send,
    {
        a.par_iter_mut()
            .zip(b.par_iter_mut())
            .enumerate()
            .with_max_len(1)
            .map(|(i, (a, b))| f(i, a, b).map(|r| (i, r)))
            .reduce(|| None, lower)
    }
}

/// The result of the lower-numbered item.
fn lower<R>(a: Option<(usize, R)>, b: Option<(usize, R)>) -> Option<(usize, R)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Threads a pool may have per CPU.
const MAX_THREADS_PER_CPU: usize = 8;

/// The bound on threads never goes below this many (small machines, containers that report
/// one CPU).
const MIN_MAX_THREADS: usize = 64;

/// The most threads a pool may have on a machine of `cpus` CPUs: a step of any model is bound
/// by memory bandwidth long before, and the operating system refuses thread stacks well
/// above it (100,000 threads panicked on a worker and hung).
fn max_threads(cpus: usize) -> usize {
    cpus.saturating_mul(MAX_THREADS_PER_CPU)
        .max(MIN_MAX_THREADS)
}

/// Runs `$body` with `$exec` bound to the executor of `$pool`: [`Serial`] on the calling thread
/// for one thread, else [`Rayon`] inside the pool.
macro_rules! on_pool {
    ($pool:expr, |$exec:ident| $body:expr) => {
        match $pool.rayon() {
            None => {
                let $exec = &$crate::exec::Serial;
                $body
            }
            Some(pool) => pool.install(|| {
                let $exec = &$crate::exec::pool::Rayon;
                $body
            }),
        }
    };
}
pub(crate) use on_pool;

/// A pool of worker threads for parallel steps.
///
/// ```
/// use came::{CameConfig, CameState, Pool, Shape};
/// let pool = Pool::new(2)?;
/// let shape = Shape::new(&[512, 256])?;
/// let mut p = vec![0.1f32; shape.numel()];
/// let g = vec![0.01f32; shape.numel()];
/// let mut buf = vec![0.0f32; shape.state_len()];
/// let mut state = CameState::new(&mut buf);
/// pool.step(&CameConfig::new(1e-3), &shape, &mut p, &g, &mut state)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pool {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` workers; 0 means one per available CPU. With one thread, steps run
    /// on the calling thread and no worker is started.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidInput`] for more than 8 threads per CPU (and more than 64),
    /// which no step can use; the operating system's error if it refuses to start the
    /// threads.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = match threads {
            0 => cpus,
            n => n,
        };
        let most = max_threads(cpus);
        if threads > most {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                std::format!(
                    "{threads} threads asked for: at most {most} ({MAX_THREADS_PER_CPU} per CPU, \
                     {cpus} CPUs here, and never under {MIN_MAX_THREADS}); a step is bound by \
                     memory bandwidth long before that"
                ),
            ));
        }
        let pool = if threads == 1 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| std::format!("came-{i}"))
                .build()
                .map_err(std::io::Error::other)?;
            Some(pool)
        };
        Ok(Self { pool, threads })
    }

    /// A pool that runs everything on the calling thread.
    pub(crate) fn serial() -> Self {
        Self {
            pool: None,
            threads: 1,
        }
    }

    /// Number of threads steps run on.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// [`crate::step`], with the tensor's lanes spread over the pool's threads. The result is
    /// bit-identical to [`crate::step`]'s.
    ///
    /// # Errors
    /// As [`crate::step`].
    pub fn step<P: Element, G: Element<Compute = P::Compute>>(
        &self,
        config: &CameConfig,
        shape: &Shape,
        param: &mut [P],
        grad: &[G],
        state: &mut CameState<'_, P::Compute>,
    ) -> Result<StepInfo, Error> {
        on_pool!(self, |exec| crate::came::step_on(
            exec, config, shape, param, grad, state
        ))
    }

    /// [`crate::step_all`] on the pool: tensors run in parallel, and so do the lanes of each
    /// large tensor. The result is bit-identical to [`crate::step_all`]'s.
    ///
    /// # Errors
    /// As [`crate::step_all`].
    pub fn step_all<P: Element, G: Element<Compute = P::Compute>>(
        &self,
        config: &CameConfig,
        tensors: &mut [TensorStep<'_, '_, P, G>],
    ) -> Result<(), TensorError> {
        on_pool!(self, |exec| step_all_on(exec, config, tensors))
    }

    /// [`crate::adamw::step`] with the tensor cut into chunks that run in parallel; the
    /// result is bit-identical to [`crate::adamw::step`]'s.
    ///
    /// # Errors
    /// As [`crate::adamw::step`].
    pub fn adamw_step<T: Float>(
        &self,
        config: &AdamWConfig,
        param: &mut [T],
        grad: &[T],
        state: &mut AdamWState<'_, T>,
    ) -> Result<StepInfo, Error> {
        on_pool!(self, |exec| adamw::step_on(
            exec, config, param, grad, state
        ))
    }

    /// [`crate::adamw::step_all`] on the pool; the result is bit-identical to it.
    ///
    /// # Errors
    /// As [`crate::adamw::step_all`].
    pub fn adamw_step_all<T: Float>(
        &self,
        config: &AdamWConfig,
        tensors: &mut [adamw::TensorStep<'_, '_, T>],
    ) -> Result<(), TensorError> {
        on_pool!(self, |exec| adamw::step_all_on(exec, config, tensors))
    }

    /// The rayon pool, if steps run on more than the calling thread.
    pub(crate) fn rayon(&self) -> Option<&rayon::ThreadPool> {
        self.pool.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn the_thread_count_is_bounded_before_any_thread_starts() {
        assert_eq!(max_threads(1), 64);
        assert_eq!(max_threads(16), 128);
        let err = Pool::new(100_000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .starts_with("100000 threads asked for: at most"),
            "{err}"
        );
        // one thread starts none (a pool of workers is tested in tests/suite/threads.rs, not here:
        // miri runs these unit tests, and rayon's epoch GC trips its experimental aliasing model)
        assert_eq!(Pool::new(1).unwrap().threads(), 1);
    }
}
