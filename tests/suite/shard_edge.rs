//! Adversarial tests of `came::shard`: f64, empty tensors, more ranks than lanes, tensors left
//! out, non-finite gradients, checkpoint edge cases, the trait path with groups, wrong inputs.
#![cfg(feature = "std")]

use crate::support;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use came::optim::{GroupId, OptimizerError, StepReport, TensorId};
use came::shard::{Collective, CollectiveError, LocalGroup, ShardError, ShardMap, ShardedCame};
use came::{CameConfig, CheckpointError, Error, Optimizer, Shape};
use support::shard::{OneProcess, gradient, rank_part, start};

// ---------------------------------------------------------------------------------------------
// helpers

/// The `(param, grad)` pairs of a step through the trait.
type Pairs<'a> = [(&'a mut [f32], &'a [f32])];
/// The pairs of a step of the tensors that have a gradient.
type SomePairs<'a> = [(&'a mut [f32], Option<&'a [f32]>)];

/// f32 and f64 alike.
trait Num: came::Float {
    fn of(x: f64) -> Self;
    fn bits(self) -> u64;
}

impl Num for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

impl Num for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
}

fn grad<T: Num>(t: usize, s: usize, n: usize) -> Vec<T> {
    gradient(t, s, n).map(T::of).collect()
}

fn init<T: Num>(n: usize) -> Vec<T> {
    start(n).map(T::of).collect()
}

fn config() -> CameConfig {
    CameConfig::new(1e-2).with_weight_decay(0.01)
}

fn shapes(dims: &[Vec<usize>]) -> Vec<Shape> {
    dims.iter().map(|d| Shape::new(d).unwrap()).collect()
}

fn dims_of(d: &[&[usize]]) -> Vec<Vec<usize>> {
    d.iter().map(|d| d.to_vec()).collect()
}

fn dim_refs(d: &[Vec<usize>]) -> Vec<&[usize]> {
    d.iter().map(Vec::as_slice).collect()
}

fn bits<T: Num>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.bits()).collect()
}

/// Runs `f` on `n` ranks of a `LocalGroup`, each on its own (detached) thread; the results in
/// rank order. Panics if a rank panics, or if the ranks do not finish within `secs` seconds
/// (a deadlock).
fn on_ranks_timeout<R: Send + 'static>(
    n: usize,
    secs: u64,
    f: impl Fn(LocalGroup) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    for comm in LocalGroup::new(n) {
        let (f, tx) = (Arc::clone(&f), tx.clone());
        std::thread::spawn(move || {
            let rank = comm.rank();
            let r = catch_unwind(AssertUnwindSafe(|| f(comm)));
            let _ = tx.send((rank, r));
        });
    }
    drop(tx);
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok((rank, Ok(r))) => out[rank] = Some(r),
            Ok((rank, Err(p))) => {
                eprintln!("rank {rank} panicked");
                resume_unwind(p)
            }
            Err(_) => panic!("ranks did not finish within {secs} s: deadlock"),
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn on_ranks<R: Send + 'static>(
    n: usize,
    f: impl Fn(LocalGroup) -> R + Send + Sync + 'static,
) -> Vec<R> {
    on_ranks_timeout(n, 120, f)
}

/// One process with `came::step_all` on tensors of `dims` from the usual start.
fn one_process<T: Num>(dims: &[Vec<usize>]) -> OneProcess<T> {
    let shapes = shapes(dims);
    let params = shapes.iter().map(|s| init(s.numel())).collect();
    OneProcess::new(&shapes, params)
}

/// `ranks` ranks stepping with `step_shards` (and gathering with `all_gather_params`) for every
/// gradient set in `grads` (`None`: tensor left out); the gathered parameters after each step,
/// checked to be the same on every rank.
fn sharded_steps<T: Num>(
    ranks: usize,
    dims: &[Vec<usize>],
    grads: &Arc<Vec<Vec<Option<Vec<T>>>>>,
) -> Vec<Vec<Vec<T>>> {
    let dims = dims.to_vec();
    let grads = Arc::clone(grads);
    let per_rank = on_ranks(ranks, move |comm| {
        let shapes = shapes(&dims);
        let mut opt = ShardedCame::<T, _>::with_dims(config(), &dim_refs(&dims), comm).unwrap();
        let rank = opt.rank();
        let (owned, mut local) = rank_part(opt.map(), rank, |t| init::<T>(shapes[t].numel()));
        let mut full: Vec<Vec<T>> = shapes.iter().map(|s| vec![T::zero(); s.numel()]).collect();
        let mut out = Vec::new();
        for step in grads.iter() {
            let g: Vec<Option<&[T]>> = step
                .iter()
                .zip(&owned)
                .map(|(g, r)| g.as_ref().map(|g| &g[r.clone()]))
                .collect();
            let mut p: Vec<&mut [T]> = local.iter_mut().map(Vec::as_mut_slice).collect();
            opt.step_shards(&mut p, &g)
                .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
            let l: Vec<&[T]> = local.iter().map(Vec::as_slice).collect();
            let mut f: Vec<&mut [T]> = full.iter_mut().map(Vec::as_mut_slice).collect();
            opt.all_gather_params(&l, &mut f).unwrap();
            out.push(full.clone());
        }
        out
    });
    for (r, other) in per_rank.iter().enumerate().skip(1) {
        for (s, (a, b)) in other.iter().zip(&per_rank[0]).enumerate() {
            for (t, (a, b)) in a.iter().zip(b).enumerate() {
                assert!(
                    bits(a) == bits(b),
                    "rank {r} and rank 0 disagree: step {s}, tensor {t}"
                );
            }
        }
    }
    per_rank.into_iter().next().unwrap()
}

/// Full gradients of every tensor for `steps` steps.
fn all_grads<T: Num>(dims: &[Vec<usize>], steps: usize) -> Vec<Vec<Option<Vec<T>>>> {
    let shapes = shapes(dims);
    (0..steps)
        .map(|s| {
            shapes
                .iter()
                .enumerate()
                .map(|(t, sh)| Some(grad::<T>(t, s, sh.numel())))
                .collect()
        })
        .collect()
}

/// Asserts that sharded runs on each of `ranks` equal `step_all` bit for bit.
fn check_against_step_all<T: Num>(dims: &[Vec<usize>], steps: usize, ranks: &[usize]) {
    let grads = Arc::new(all_grads::<T>(dims, steps));
    let mut one = one_process::<T>(dims);
    let mut expected = Vec::new();
    for g in grads.iter() {
        let g: Vec<Vec<T>> = g.iter().map(|g| g.clone().unwrap()).collect();
        one.step(&config(), &g).unwrap();
        expected.push(one.params.clone());
    }
    for &n in ranks {
        let got = sharded_steps::<T>(n, dims, &grads);
        for (s, (g, e)) in got.iter().zip(&expected).enumerate() {
            for (t, (g, e)) in g.iter().zip(e).enumerate() {
                let diff = g
                    .iter()
                    .zip(e)
                    .filter(|(a, b)| a.bits() != b.bits())
                    .count();
                assert_eq!(
                    diff, 0,
                    "{n} ranks, step {s}, tensor {t} {:?}: {diff} elements differ",
                    dims[t]
                );
            }
        }
    }
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("came-shard-edge-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// f64

#[test]
fn f64_step_shards_equal_step_all_bit_for_bit() {
    let dims = dims_of(&[
        &[300, 700],      // 6 lanes of rows
        &[4, 3, 130, 70], // a batch: 3 lanes of matrices
        &[150_001],       // 4 lanes of elements
        &[1, 70_001],     // one row
        &[70_001, 1],     // one column, 2 lanes
        &[7, 5],
        &[5, 2, 3],
        &[],
    ]);
    check_against_step_all::<f64>(&dims, 3, &[1, 2, 3, 4]);
}

/// f32 parameters with bf16 gradients (`step_shards::<half::bf16>`) against `step_all` with the
/// same types.
#[test]
fn bf16_gradients_equal_step_all_bit_for_bit() {
    use half::bf16;
    let dims = dims_of(&[&[301, 300], &[150_001], &[4, 3, 130, 70], &[7, 5], &[]]);
    let shapes = shapes(&dims);
    let grads: Vec<Vec<Vec<bf16>>> = (0..2)
        .map(|s| {
            shapes
                .iter()
                .enumerate()
                .map(|(t, sh)| {
                    grad::<f32>(t, s, sh.numel())
                        .into_iter()
                        .map(bf16::from_f32)
                        .collect()
                })
                .collect()
        })
        .collect();
    // one process
    let mut one = OneProcess::<f32>::new(&shapes, shapes.iter().map(|s| init(s.numel())).collect());
    for g in &grads {
        one.step(&config(), g).unwrap();
    }
    let params = one.params;
    let expected = params;
    let grads = Arc::new(grads);
    for ranks in [2, 3] {
        let (d, grads) = (dims.clone(), Arc::clone(&grads));
        let got = on_ranks(ranks, move |comm| {
            let shapes = came_shapes(&d);
            let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&d), comm).unwrap();
            let rank = opt.rank();
            let (owned, mut local) = rank_part(opt.map(), rank, |t| init::<f32>(shapes[t].numel()));
            for g in grads.iter() {
                let g: Vec<Option<&[bf16]>> = g
                    .iter()
                    .zip(&owned)
                    .map(|(g, r)| Some(&g[r.clone()]))
                    .collect();
                let mut p: Vec<&mut [f32]> = local.iter_mut().map(Vec::as_mut_slice).collect();
                opt.step_shards(&mut p, &g).unwrap();
            }
            (owned, local)
        });
        for (rank, (owned, local)) in got.iter().enumerate() {
            for (t, (l, r)) in local.iter().zip(owned).enumerate() {
                assert!(
                    bits(l) == bits(&expected[t][r.clone()]),
                    "{ranks} ranks, rank {rank}, tensor {t}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// empty tensors, scalars, more ranks than lanes

#[test]
fn a_matrix_with_zero_rows_steps_like_one_process() {
    // one process: an empty tensor is a no-op that succeeds
    let dims = dims_of(&[&[0, 5], &[7, 5]]);
    check_against_step_all::<f32>(&dims, 2, &[1, 2, 3]);
}

#[test]
fn a_batch_with_zero_rows_steps_like_one_process() {
    let dims = dims_of(&[&[2, 0, 5], &[7, 5]]);
    check_against_step_all::<f32>(&dims, 2, &[1, 2, 3]);
}

#[test]
fn a_matrix_with_zero_columns_steps_like_one_process() {
    let dims = dims_of(&[&[3, 0], &[7, 5]]);
    check_against_step_all::<f32>(&dims, 2, &[1, 2, 3]);
}

#[test]
fn other_empty_tensors_and_scalars_step_like_one_process() {
    let dims = dims_of(&[&[0], &[0, 3, 3], &[], &[1], &[7, 5]]);
    check_against_step_all::<f32>(&dims, 2, &[1, 2, 3, 7]);
}

#[test]
fn seven_ranks_on_tensors_of_fewer_lanes_equal_one_process() {
    let dims = dims_of(&[
        &[4, 4],
        &[],
        &[100],
        &[200_000],   // 6 lanes < 7 ranks
        &[70_001, 3], // 6 lanes of rows
        &[2, 3, 4],
        &[3, 3],
        &[5],
        &[1, 1],
    ]);
    check_against_step_all::<f32>(&dims, 2, &[7, 5]);
    check_against_step_all::<f64>(&dims, 2, &[7]);
    // the map of 7 ranks covers every element exactly once
    let map = ShardMap::new(&shapes(&dims), 7).unwrap();
    for (t, s) in shapes(&dims).iter().enumerate() {
        let mut seen = vec![0u8; s.numel()];
        for r in 0..7 {
            for i in map.elements(t, r) {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "tensor {t}");
    }
}

/// Through the trait, the step reports of empty tensors equal `Came`'s.
#[test]
fn reports_of_empty_tensors_equal_came() {
    let dims = dims_of(&[&[0], &[0, 3, 3], &[5]]);
    let run = empty_run;
    fn empty_run(
        opt: &mut dyn FnMut(&mut SomePairs<'_>) -> StepReport,
    ) -> (Vec<StepReport>, Vec<Vec<f32>>) {
        let dims = dims_of(&[&[0], &[0, 3, 3], &[5]]);
        let mut p: Vec<Vec<f32>> = shapes(&dims).iter().map(|s| init(s.numel())).collect();
        let g: Vec<Vec<f32>> = shapes(&dims)
            .iter()
            .enumerate()
            .map(|(t, s)| grad(t, 0, s.numel()))
            .collect();
        let mut reports = Vec::new();
        for which in [
            [true, true, true],
            [true, true, false],
            [true, false, false],
        ] {
            let mut pairs: Vec<(&mut [f32], Option<&[f32]>)> = p
                .iter_mut()
                .zip(&g)
                .zip(which)
                .map(|((p, g), w)| (p.as_mut_slice(), w.then_some(g.as_slice())))
                .collect();
            reports.push(opt(&mut pairs));
        }
        (reports, p)
    }
    let mut came = came::Came::<f32>::new(config()).unwrap();
    for (t, d) in dims.iter().enumerate() {
        came.register(&t.to_string(), d).unwrap();
    }
    let expected = run(&mut |pairs| came.step_some(pairs).unwrap());
    let dims2 = dims.clone();
    let got = on_ranks(2, move |comm| {
        let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&dims2), comm).unwrap();
        run(&mut |pairs| opt.step_some(pairs).unwrap())
    });
    for (rank, (reports, params)) in got.iter().enumerate() {
        for (t, (a, b)) in params.iter().zip(&expected.1).enumerate() {
            assert!(bits(a) == bits(b), "rank {rank}, tensor {t}");
        }
        for (i, (a, b)) in reports.iter().zip(&expected.0).enumerate() {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "rank {rank}, step {i}: the report differs from Came's"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tensors left out

const MIXED: &[&[usize]] = &[
    &[301, 300],      // 2 lanes
    &[150_001],       // 4 lanes
    &[8, 3, 130, 70], // 8 lanes of matrices
    &[7, 5],
    &[],
    &[100],
];

fn left_out(s: usize, t: usize) -> bool {
    // a different set each step; step 3 leaves out everything
    s == 3 || (s * 7 + t * 3).is_multiple_of(4)
}

#[test]
fn step_shards_with_varying_tensors_left_out_equals_came_step_some() {
    let dims = dims_of(MIXED);
    let shapes = shapes(&dims);
    let steps = 6;
    let grads: Vec<Vec<Option<Vec<f32>>>> = (0..steps)
        .map(|s| {
            shapes
                .iter()
                .enumerate()
                .map(|(t, sh)| (!left_out(s, t)).then(|| grad(t, s, sh.numel())))
                .collect()
        })
        .collect();
    let mut came = came::Came::<f32>::new(config()).unwrap();
    for (t, d) in dims.iter().enumerate() {
        came.register(&t.to_string(), d).unwrap();
    }
    let mut params: Vec<Vec<f32>> = shapes.iter().map(|s| init(s.numel())).collect();
    let mut expected = Vec::new();
    for g in &grads {
        let mut pairs: Vec<(&mut [f32], Option<&[f32]>)> = params
            .iter_mut()
            .zip(g)
            .map(|(p, g)| (p.as_mut_slice(), g.as_deref()))
            .collect();
        came.step_some(&mut pairs).unwrap();
        expected.push(params.clone());
    }
    let grads = Arc::new(grads);
    for ranks in [2, 3, 5] {
        let got = sharded_steps::<f32>(ranks, &dims, &grads);
        for (s, (g, e)) in got.iter().zip(&expected).enumerate() {
            for (t, (g, e)) in g.iter().zip(e).enumerate() {
                assert!(bits(g) == bits(e), "{ranks} ranks, step {s}, tensor {t}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// non-finite gradients

/// Steps once with gradients of step 0 spoiled at `(tensor, index, value)`: every rank must
/// return the error `step_all` returns, change nothing, and a following clean step must equal
/// one process's first step.
fn spoiled_step<T: Num>(ranks: usize, dims: &[Vec<usize>], spoil: &[(usize, usize, f64)]) {
    let shapes = shapes(dims);
    let clean: Vec<Vec<T>> = shapes
        .iter()
        .enumerate()
        .map(|(t, s)| grad(t, 0, s.numel()))
        .collect();
    let mut bad = clean.clone();
    for &(t, i, v) in spoil {
        bad[t][i] = T::of(v);
    }
    let mut one = one_process::<T>(dims);
    let single = one.step(&config(), &bad).unwrap_err();
    assert!(
        one.params
            .iter()
            .zip(shapes.iter())
            .all(|(p, s)| bits(p) == bits(&init::<T>(s.numel())))
    );
    one.step(&config(), &clean).unwrap();
    let expected = one.params.clone();
    let want = ShardError::Optimizer(OptimizerError::Tensor {
        index: single.tensor,
        name: single.tensor.to_string(),
        error: single.error,
    });
    let (dims, bad, clean) = (dims.to_vec(), Arc::new(bad), Arc::new(clean));
    let results = on_ranks(ranks, move |comm| {
        let shapes = came_shapes(&dims);
        let mut opt = ShardedCame::<T, _>::with_dims(config(), &dim_refs(&dims), comm).unwrap();
        let rank = opt.rank();
        let (owned, mut local) = rank_part(opt.map(), rank, |t| init::<T>(shapes[t].numel()));
        let before: Vec<Vec<u64>> = local.iter().map(|l| bits(l)).collect();
        let g: Vec<Option<&[T]>> = bad
            .iter()
            .zip(&owned)
            .map(|(g, r)| Some(&g[r.clone()]))
            .collect();
        let mut p: Vec<&mut [T]> = local.iter_mut().map(Vec::as_mut_slice).collect();
        let err = opt.step_shards(&mut p, &g).unwrap_err();
        let unchanged = local.iter().map(|l| bits(l)).collect::<Vec<_>>() == before;
        let counts: Vec<_> = (0..shapes.len())
            .map(|t| opt.step_count(TensorId(t)))
            .collect();
        let g: Vec<Option<&[T]>> = clean
            .iter()
            .zip(&owned)
            .map(|(g, r)| Some(&g[r.clone()]))
            .collect();
        let mut p: Vec<&mut [T]> = local.iter_mut().map(Vec::as_mut_slice).collect();
        let after = opt.step_shards(&mut p, &g).map(|_| ());
        (err, unchanged, counts, after, owned, local)
    });
    for (rank, (err, unchanged, counts, after, owned, local)) in results.into_iter().enumerate() {
        assert_eq!(
            err, want,
            "rank {rank} of {ranks}: the error differs from step_all's"
        );
        assert!(
            unchanged,
            "rank {rank}: parameters changed by a failed step"
        );
        assert!(
            counts.iter().all(|&c| c == Some(0)),
            "rank {rank}: step counts {counts:?}"
        );
        assert_eq!(
            after,
            Ok(()),
            "rank {rank}: the clean step after the failed one"
        );
        for (t, (l, r)) in local.iter().zip(&owned).enumerate() {
            assert!(
                bits(l) == bits(&expected[t][r.clone()]),
                "rank {rank} of {ranks}, tensor {t}: the clean step differs from one process's"
            );
        }
    }
}

fn came_shapes(dims: &[Vec<usize>]) -> Vec<Shape> {
    shapes(dims)
}

/// vector (4 lanes), matrix (2 lanes), batch (3 lanes), small tensors.
fn nf_dims() -> Vec<Vec<usize>> {
    dims_of(&[&[150_001], &[301, 300], &[4, 3, 130, 70], &[7, 5], &[100]])
}

#[test]
fn nan_in_a_vector_on_the_last_rank_fails_everywhere_like_one_process() {
    spoiled_step::<f32>(3, &nf_dims(), &[(0, 149_000, f64::NAN)]);
    spoiled_step::<f32>(3, &nf_dims(), &[(0, 10, f64::NAN)]);
}

#[test]
fn infinity_in_a_vector_fails_everywhere_like_one_process() {
    spoiled_step::<f32>(2, &nf_dims(), &[(0, 100_000, f64::INFINITY)]);
    spoiled_step::<f32>(4, &nf_dims(), &[(0, 75_000, f64::NEG_INFINITY)]);
    spoiled_step::<f64>(3, &nf_dims(), &[(0, 120_000, f64::INFINITY)]);
}

#[test]
fn nans_on_two_ranks_report_the_first_index() {
    spoiled_step::<f32>(
        4,
        &nf_dims(),
        &[(0, 140_000, f64::NAN), (0, 60_000, f64::NAN)],
    );
    // a matrix
    spoiled_step::<f32>(
        2,
        &nf_dims(),
        &[(1, 250 * 300, f64::NAN), (1, 10, f64::INFINITY)],
    );
    // a batch
    spoiled_step::<f32>(3, &nf_dims(), &[(2, 109_000, f64::NAN), (2, 5, f64::NAN)]);
}

#[test]
fn an_overflowing_square_is_a_nonfinite_update_everywhere() {
    for (t, i) in [
        (0usize, 140_000usize),
        (1, 290 * 300),
        (2, 100_000),
        (3, 3),
        (4, 99),
    ] {
        let dims = nf_dims();
        // sanity: one process says NonFiniteUpdate
        let mut one = one_process::<f32>(&dims);
        let mut g: Vec<Vec<f32>> = shapes(&dims)
            .iter()
            .enumerate()
            .map(|(t, s)| grad(t, 0, s.numel()))
            .collect();
        g[t][i] = 1e30;
        assert_eq!(
            one.step(&config(), &g).unwrap_err().error,
            Error::NonFiniteUpdate,
            "tensor {t}"
        );
        spoiled_step::<f32>(3, &dims, &[(t, i, 1e30)]);
    }
    // f64: 1e200 squared overflows
    spoiled_step::<f64>(3, &nf_dims(), &[(0, 140_000, 1e200)]);
    spoiled_step::<f64>(2, &nf_dims(), &[(1, 10, -1e200)]);
}

#[test]
fn overflow_and_nan_in_different_tensors_report_the_first_tensor() {
    spoiled_step::<f32>(3, &nf_dims(), &[(2, 7, 1e30), (0, 149_000, f64::NAN)]);
    spoiled_step::<f32>(3, &nf_dims(), &[(4, 7, f64::NAN), (1, 300 * 300, 1e30)]);
}

// ---------------------------------------------------------------------------------------------
// checkpoints

const CK: &[&[usize]] = &[
    &[301, 300],
    &[150_001],
    &[2, 3, 130, 70],
    &[7, 5],
    &[0],
    &[],
];

fn ck_left_out(s: usize, t: usize) -> bool {
    (s == 1 && t.is_multiple_of(2)) || (s == 2 && t == 1) || (s == 3 && t == 3)
}

fn ck_grads(s: usize) -> Vec<Option<Vec<f32>>> {
    shapes(&dims_of(CK))
        .iter()
        .enumerate()
        .map(|(t, sh)| (!ck_left_out(s, t)).then(|| grad(t, s, sh.numel())))
        .collect()
}

/// Trait steps `steps` on `opt` over whole params.
fn trait_steps<O: Optimizer<Param = [f32], Grad = [f32]>>(
    opt: &mut O,
    params: &mut [Vec<f32>],
    steps: std::ops::Range<usize>,
) where
    O::Error: std::fmt::Debug,
{
    for s in steps {
        let g = ck_grads(s);
        let mut pairs: Vec<(&mut [f32], Option<&[f32]>)> = params
            .iter_mut()
            .zip(&g)
            .map(|(p, g)| (p.as_mut_slice(), g.as_deref()))
            .collect();
        opt.step_some(&mut pairs).unwrap();
    }
}

#[test]
fn a_checkpoint_after_tensors_were_left_out_reshards_n_to_m_bit_for_bit() {
    let dims = dims_of(CK);
    let mut came = came::Came::<f32>::new(config()).unwrap();
    for (t, d) in dims.iter().enumerate() {
        came.register(&t.to_string(), d).unwrap();
    }
    let mut expected: Vec<Vec<f32>> = shapes(&dims).iter().map(|s| init(s.numel())).collect();
    trait_steps(&mut came, &mut expected, 0..4);
    let mid_counts: Vec<_> = (0..dims.len())
        .map(|t| came.step_count(TensorId(t)))
        .collect();
    trait_steps(&mut came, &mut expected, 4..6);
    for (n, m) in [(3, 2), (2, 5), (1, 7), (7, 1), (4, 4)] {
        let dir = Scratch::new(&format!("reshard-{n}-{m}"));
        let (d1, p1) = (dims.clone(), dir.path().to_path_buf());
        let mid = on_ranks(n, move |comm| {
            let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&d1), comm).unwrap();
            let mut params: Vec<Vec<f32>> = shapes(&d1).iter().map(|s| init(s.numel())).collect();
            trait_steps(&mut opt, &mut params, 0..4);
            Optimizer::save(&opt, &p1).unwrap();
            params
        })
        .remove(0);
        let (d2, p2, mc) = (dims.clone(), dir.path().to_path_buf(), mid_counts.clone());
        let got = on_ranks(m, move |comm| {
            let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&d2), comm).unwrap();
            Optimizer::load(&mut opt, &p2).unwrap();
            let counts: Vec<_> = (0..d2.len()).map(|t| opt.step_count(TensorId(t))).collect();
            assert_eq!(counts, mc, "per-tensor step counts after loading");
            let mut params = mid.clone();
            trait_steps(&mut opt, &mut params, 4..6);
            params
        });
        for (rank, got) in got.iter().enumerate() {
            for (t, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    bits(g) == bits(e),
                    "saved on {n}, resumed on {m}: rank {rank}, tensor {t}"
                );
            }
        }
    }
}

/// Saves a checkpoint of CK after two steps on `ranks` ranks into `dir`.
fn save_ck(ranks: usize, dir: &Path) {
    let (d, p) = (dims_of(CK), dir.to_path_buf());
    on_ranks(ranks, move |comm| {
        let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&d), comm).unwrap();
        let mut params: Vec<Vec<f32>> = shapes(&d).iter().map(|s| init(s.numel())).collect();
        trait_steps(&mut opt, &mut params, 0..2);
        opt.save_dir(&p).unwrap();
    });
}

/// On `ranks` ranks: steps CK once (step 0), tries `load` (must fail; its message returned),
/// checks that the step counts did not change, steps once more (step 1) and returns the
/// parameters; those must equal one process's two steps.
fn failed_load_changes_nothing(
    ranks: usize,
    dims: Vec<Vec<usize>>,
    load: impl Fn(&mut ShardedCame<f32, LocalGroup>) -> Result<(), CheckpointError>
    + Send
    + Sync
    + 'static,
) -> Vec<String> {
    failed_load_changes_nothing_named(ranks, dims, None, load)
}

/// As `failed_load_changes_nothing`, with tensor `renamed` registered as "renamed".
fn failed_load_changes_nothing_named(
    ranks: usize,
    dims: Vec<Vec<usize>>,
    renamed: Option<usize>,
    load: impl Fn(&mut ShardedCame<f32, LocalGroup>) -> Result<(), CheckpointError>
    + Send
    + Sync
    + 'static,
) -> Vec<String> {
    let mut came = came::Came::<f32>::new(config()).unwrap();
    for (t, d) in dims.iter().enumerate() {
        came.register(&t.to_string(), d).unwrap();
    }
    let mut expected: Vec<Vec<f32>> = shapes(&dims).iter().map(|s| init(s.numel())).collect();
    trait_steps(&mut came, &mut expected, 0..2);
    let results = on_ranks(ranks, move |comm| {
        let mut opt = ShardedCame::<f32, _>::new(config(), comm).unwrap();
        for (t, d) in dims.iter().enumerate() {
            let name = if Some(t) == renamed {
                "renamed".to_string()
            } else {
                t.to_string()
            };
            opt.register(&name, d).unwrap();
        }
        let mut params: Vec<Vec<f32>> = shapes(&dims).iter().map(|s| init(s.numel())).collect();
        trait_steps(&mut opt, &mut params, 0..1);
        let counts: Vec<_> = (0..dims.len())
            .map(|t| opt.step_count(TensorId(t)))
            .collect();
        let lr = opt.learning_rate();
        let err = load(&mut opt).expect_err("the load should fail");
        let after: Vec<_> = (0..dims.len())
            .map(|t| opt.step_count(TensorId(t)))
            .collect();
        assert_eq!(counts, after, "a failed load changed step counts");
        assert_eq!(
            lr,
            opt.learning_rate(),
            "a failed load changed the learning rate"
        );
        trait_steps(&mut opt, &mut params, 1..2);
        (format!("{err}"), params)
    });
    results
        .into_iter()
        .enumerate()
        .map(|(rank, (msg, params))| {
            for (t, (g, e)) in params.iter().zip(&expected).enumerate() {
                assert!(
                    bits(g) == bits(e),
                    "rank {rank}, tensor {t}: a failed load changed state"
                );
            }
            msg
        })
        .collect()
}

#[test]
fn a_checkpoint_with_another_tensor_name_is_refused_and_changes_nothing() {
    let dir = Scratch::new("name");
    save_ck(3, dir.path());
    let p = dir.path().to_path_buf();
    let msgs =
        failed_load_changes_nothing_named(2, dims_of(CK), Some(2), move |opt| opt.load_dir(&p));
    for m in msgs {
        assert!(m.contains("name.2") && m.contains("renamed"), "{m}");
    }
}

#[test]
fn a_good_checkpoint_loads_after_the_name_check_sanity() {
    // the same directory loads into an optimizer of the same names: the failure above is the
    // name's
    let dir = Scratch::new("good");
    save_ck(3, dir.path());
    let p = dir.path().to_path_buf();
    let counts = on_ranks(2, move |comm| {
        let mut opt =
            ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&dims_of(CK)), comm).unwrap();
        opt.load_dir(&p).unwrap();
        (0..CK.len())
            .map(|t| opt.step_count(TensorId(t)).unwrap())
            .collect::<Vec<_>>()
    });
    // step 1 leaves out the even tensors
    assert_eq!(counts[0], vec![1, 2, 1, 2, 1, 2]);
}

#[test]
fn a_truncated_checkpoint_file_is_refused_and_changes_nothing() {
    let dir = Scratch::new("truncated");
    save_ck(3, dir.path());
    let file = dir.path().join("came-shard-1-of-3.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let p = dir.path().to_path_buf();
    let msgs = failed_load_changes_nothing(2, dims_of(CK), move |opt| opt.load_dir(&p));
    for m in msgs {
        assert!(
            m.contains("came-shard-1-of-3"),
            "the error should name the file: {m}"
        );
    }
}

#[test]
fn a_corrupted_checkpoint_file_is_refused_and_changes_nothing() {
    let dir = Scratch::new("corrupt");
    save_ck(2, dir.path());
    let file = dir.path().join("came-shard-0-of-2.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40; // a state value near the end
    std::fs::write(&file, &bytes).unwrap();
    let p = dir.path().to_path_buf();
    let msgs = failed_load_changes_nothing(3, dims_of(CK), move |opt| opt.load_dir(&p));
    for m in msgs {
        assert!(
            m.contains("came-shard-0-of-2"),
            "the error should name the file: {m}"
        );
        assert!(
            m.to_lowercase().contains("corrupt") || m.contains("checksum"),
            "{m}"
        );
    }
}

#[test]
fn files_of_two_rank_counts_in_one_directory_are_refused() {
    let dir = Scratch::new("mixed");
    save_ck(2, dir.path());
    save_ck(3, dir.path());
    let p = dir.path().to_path_buf();
    let msgs = failed_load_changes_nothing(2, dims_of(CK), move |opt| opt.load_dir(&p));
    for m in msgs {
        assert!(
            m.contains("ranks") && m.contains('2') && m.contains('3'),
            "{m}"
        );
    }
}

#[test]
fn a_checkpoint_missing_a_tensor_or_of_another_dtype_is_refused() {
    let dir = Scratch::new("count");
    save_ck(2, dir.path());
    // one tensor fewer
    let p = dir.path().to_path_buf();
    let mut fewer = dims_of(CK);
    fewer.pop();
    let msgs = failed_load_changes_nothing(2, fewer, move |opt| opt.load_dir(&p));
    for m in msgs {
        assert!(
            m.contains("tensor") || m.contains("6") || m.contains("7"),
            "{m}"
        );
    }
    // f32 state into an f64 optimizer
    let p = dir.path().to_path_buf();
    let errs = on_ranks(2, move |comm| {
        let mut opt =
            ShardedCame::<f64, _>::with_dims(config(), &dim_refs(&dims_of(CK)), comm).unwrap();
        let e = opt.load_dir(&p).unwrap_err();
        assert_eq!(opt.step_count(TensorId(0)), Some(0));
        format!("{e}")
    });
    for m in errs {
        assert!(
            m.contains("F32") || m.contains("f32") || m.contains("dtype"),
            "{m}"
        );
    }
    // an empty directory, a directory that does not exist
    let empty = Scratch::new("empty");
    std::fs::create_dir_all(empty.path()).unwrap();
    let comm = LocalGroup::new(1).remove(0);
    let mut opt =
        ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&dims_of(CK)), comm).unwrap();
    assert!(opt.load_dir(empty.path()).is_err());
    assert!(opt.load_dir(empty.path().join("nope")).is_err());
}

#[test]
fn a_checkpoint_keeps_groups_and_group_lrs_across_resharding() {
    let dims = dims_of(&[&[301, 300], &[150_001], &[7, 5]]);
    let dir = Scratch::new("groups");
    let (d, p) = (dims.clone(), dir.path().to_path_buf());
    on_ranks(3, move |comm| {
        let mut opt = ShardedCame::<f32, _>::new(config(), comm).unwrap();
        let g1 = opt
            .add_group(config().with_lr(3e-3).with_weight_decay(0.0))
            .unwrap();
        for (t, dd) in d.iter().enumerate() {
            opt.register_in(if t == 1 { g1 } else { GroupId(0) }, &t.to_string(), dd)
                .unwrap();
        }
        opt.set_group_lr(g1, 7e-4).unwrap();
        opt.save_dir(&p).unwrap();
    });
    let (d, p) = (dims.clone(), dir.path().to_path_buf());
    let lrs = on_ranks(2, move |comm| {
        let mut opt = ShardedCame::<f32, _>::new(config(), comm).unwrap();
        let g1 = opt.add_group(config()).unwrap();
        for (t, dd) in d.iter().enumerate() {
            opt.register_in(if t == 1 { g1 } else { GroupId(0) }, &t.to_string(), dd)
                .unwrap();
        }
        opt.load_dir(&p).unwrap();
        (opt.groups()[1].lr, opt.groups()[1].weight_decay)
    });
    for (lr, wd) in lrs {
        assert_eq!(lr, 7e-4);
        assert_eq!(wd, 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// the trait path with several groups

fn grouped<T: Num, O: Optimizer<Config = CameConfig, Param = [T], Grad = [T]>>(
    opt: &mut O,
    dims: &[Vec<usize>],
) -> (Vec<Vec<T>>, Vec<StepReport>)
where
    O::Error: std::fmt::Debug,
{
    let g1 = opt
        .add_group(config().with_lr(3e-3).with_weight_decay(0.0))
        .unwrap();
    let g2 = opt.add_group(config().with_lr(5e-2)).unwrap();
    for (t, d) in dims.iter().enumerate() {
        let group = [GroupId(0), g1, g2][t % 3];
        opt.register_in(group, &format!("w{t}"), d).unwrap();
    }
    let shapes = shapes(dims);
    let mut params: Vec<Vec<T>> = shapes.iter().map(|s| init(s.numel())).collect();
    let mut reports = Vec::new();
    for s in 0..5 {
        opt.set_group_lr(g1, 3e-3 * (1.0 + s as f64)).unwrap();
        if s == 2 {
            opt.set_learning_rate(2e-2).unwrap();
        }
        if s == 3 {
            opt.scale_learning_rate(0.5).unwrap();
        }
        opt.set_group_lr(g2, 1e-1 / (1.0 + s as f64)).unwrap();
        let grads: Vec<Vec<T>> = shapes
            .iter()
            .enumerate()
            .map(|(t, sh)| grad(t, s, sh.numel()))
            .collect();
        let report = if s % 2 == 0 {
            let mut pairs: Vec<(&mut [T], &[T])> = params
                .iter_mut()
                .zip(&grads)
                .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
                .collect();
            opt.step(&mut pairs).unwrap()
        } else {
            let mut pairs: Vec<(&mut [T], Option<&[T]>)> = params
                .iter_mut()
                .zip(&grads)
                .enumerate()
                .map(|(t, (p, g))| {
                    (
                        p.as_mut_slice(),
                        (t != s % dims.len()).then_some(g.as_slice()),
                    )
                })
                .collect();
            opt.step_some(&mut pairs).unwrap()
        };
        reports.push(report);
    }
    (params, reports)
}

fn grouped_check<T: Num>() {
    let dims = dims_of(&[
        &[301, 300],
        &[150_001],
        &[4, 3, 130, 70],
        &[7, 5],
        &[],
        &[100],
        &[70_001, 2],
    ]);
    let expected = grouped::<T, _>(&mut came::Came::<T>::new(config()).unwrap(), &dims);
    for ranks in [1, 2, 3] {
        let d = dims.clone();
        let got = on_ranks(ranks, move |comm| {
            grouped::<T, _>(&mut ShardedCame::<T, _>::new(config(), comm).unwrap(), &d)
        });
        for (rank, (params, reports)) in got.iter().enumerate() {
            for (t, (g, e)) in params.iter().zip(&expected.0).enumerate() {
                assert!(bits(g) == bits(e), "{ranks} ranks, rank {rank}, tensor {t}");
            }
            assert_eq!(reports, &expected.1, "{ranks} ranks, rank {rank}: reports");
        }
    }
}

/// Steps `[7, 5]` and `[4, 4]` three times through `opt`; the reports.
fn two_small(opt: &mut dyn FnMut(&mut Pairs<'_>) -> StepReport) -> Vec<StepReport> {
    let mut p: Vec<Vec<f32>> = vec![init(35), init(16)];
    (0..3)
        .map(|s| {
            let g: Vec<Vec<f32>> = vec![grad(0, s, 35), grad(1, s, 16)];
            let mut pairs: Vec<(&mut [f32], &[f32])> = p
                .iter_mut()
                .zip(&g)
                .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
                .collect();
            opt(&mut pairs)
        })
        .collect()
}

/// Every rank's `StepReport` equals `Came`'s, also on a rank that owns nothing of a matrix.
#[test]
fn every_rank_reports_what_came_reports() {
    let dims = dims_of(&[&[7, 5], &[4, 4]]);
    let mut came = came::Came::<f32>::new(config()).unwrap();
    came.register("0", &dims[0]).unwrap();
    came.register("1", &dims[1]).unwrap();
    let expected = two_small(&mut |pairs| came.step(pairs).unwrap());
    let got = on_ranks(2, move |comm| {
        let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&dims), comm).unwrap();
        two_small(&mut |pairs| Optimizer::step(&mut opt, pairs).unwrap())
    });
    for (rank, reports) in got.iter().enumerate() {
        assert_eq!(reports, &expected, "rank {rank}");
    }
}

#[test]
fn the_trait_with_groups_and_group_lrs_equals_came_f32() {
    grouped_check::<f32>();
}

#[test]
fn the_trait_with_groups_and_group_lrs_equals_came_f64() {
    grouped_check::<f64>();
}

// ---------------------------------------------------------------------------------------------
// wrong inputs

#[test]
fn wrong_lengths_and_counts_are_refused_on_every_rank_before_exchanging() {
    let dims = dims_of(&[&[301, 300], &[7, 5], &[100]]);
    let d = dims.clone();
    let errs = on_ranks_timeout(3, 30, move |comm| {
        let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&d), comm).unwrap();
        let rank = opt.rank();
        let own: Vec<usize> = (0..d.len())
            .map(|t| opt.map().elements(t, rank).len())
            .collect();
        let mut p: Vec<Vec<f32>> = own.iter().map(|&n| vec![0.0; n]).collect();
        let mut g: Vec<Vec<f32>> = own.iter().map(|&n| vec![0.0; n]).collect();
        let mut out = Vec::new();
        // a gradient one too long on tensor 0
        g[0].push(0.0);
        {
            let mut pp: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
            let gg: Vec<Option<&[f32]>> = g.iter().map(|g| Some(g.as_slice())).collect();
            out.push(opt.step_shards(&mut pp, &gg).unwrap_err());
        }
        g[0].pop();
        // a param one too short on tensor 2, whose gradient is left out
        p[2].push(0.0);
        {
            let mut pp: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
            let gg: Vec<Option<&[f32]>> = g
                .iter()
                .enumerate()
                .map(|(t, g)| (t != 2).then_some(g.as_slice()))
                .collect();
            out.push(opt.step_shards(&mut pp, &gg).unwrap_err());
        }
        p[2].pop();
        // too many gradients, too few params
        {
            let mut pp: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
            let mut gg: Vec<Option<&[f32]>> = g.iter().map(|g| Some(g.as_slice())).collect();
            gg.push(None);
            out.push(opt.step_shards(&mut pp, &gg).unwrap_err());
            pp.pop();
            gg.pop();
            out.push(opt.step_shards(&mut pp, &gg).unwrap_err());
        }
        // all_gather_params: a whole tensor too short
        {
            let l: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
            let mut full: Vec<Vec<f32>> = d.iter().map(|d| vec![0.0; d.iter().product()]).collect();
            full[1].pop();
            let mut f: Vec<&mut [f32]> = full.iter_mut().map(Vec::as_mut_slice).collect();
            out.push(opt.all_gather_params(&l, &mut f).unwrap_err());
        }
        // the trait with the wrong count
        {
            let mut w = vec![0.0f32; 301 * 300];
            let gw = vec![0.0f32; 301 * 300];
            out.push(Optimizer::step(&mut opt, &mut [(&mut w[..], &gw[..])]).unwrap_err());
        }
        // after all that, a good step still works and counts one step
        let mut pp: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
        let gg: Vec<Option<&[f32]>> = g.iter().map(|g| Some(g.as_slice())).collect();
        opt.step_shards(&mut pp, &gg).unwrap();
        assert_eq!(opt.step_count(TensorId(0)), Some(1));
        (own, out)
    });
    for (rank, (own, errs)) in errs.into_iter().enumerate() {
        let msg = format!("rank {rank}: {errs:?}");
        assert!(
            matches!(&errs[0], ShardError::Optimizer(OptimizerError::Tensor { index: 0, error: Error::LengthMismatch { expected, actual, .. }, .. }) if *expected == own[0] && *actual == own[0] + 1),
            "{msg}"
        );
        assert!(
            matches!(&errs[1], ShardError::Optimizer(OptimizerError::Tensor { index: 2, error: Error::LengthMismatch { expected, actual, .. }, .. }) if *expected == own[2] && *actual == own[2] + 1),
            "{msg}"
        );
        assert_eq!(
            errs[2],
            ShardError::Optimizer(OptimizerError::TensorCount {
                expected: 3,
                actual: 4
            }),
            "{msg}"
        );
        assert_eq!(
            errs[3],
            ShardError::Optimizer(OptimizerError::TensorCount {
                expected: 3,
                actual: 2
            }),
            "{msg}"
        );
        assert!(
            matches!(
                &errs[4],
                ShardError::Optimizer(OptimizerError::Tensor { index: 1, .. })
            ),
            "{msg}"
        );
        assert!(
            matches!(
                &errs[5],
                ShardError::Optimizer(OptimizerError::TensorCount {
                    expected: 3,
                    actual: 1
                })
            ),
            "{msg}"
        );
    }
}

#[test]
fn local_group_ranks_with_different_send_lengths_all_get_an_error_and_the_group_survives() {
    let results = on_ranks_timeout(3, 30, |comm| {
        let r = comm.rank();
        let send = vec![r as u8; if r == 1 { 8 } else { 4 }];
        let mut recv = vec![0u8; send.len() * 3];
        let first = comm.all_gather(&send, &mut recv);
        // the group is still usable
        let mut recv = vec![0u8; 3];
        let second = comm.all_gather(&[r as u8], &mut recv).map(|()| recv);
        (first, second)
    });
    for (rank, (first, second)) in results.into_iter().enumerate() {
        let e = first.expect_err("different lengths must fail");
        assert!(
            matches!(e, CollectiveError::LengthMismatch { .. }),
            "rank {rank}: {e:?}"
        );
        assert_eq!(second, Ok(vec![0, 1, 2]), "rank {rank}");
    }
}

#[test]
fn a_wrong_receive_buffer_on_one_rank_does_not_deadlock_the_others() {
    let results = on_ranks_timeout(2, 5, |comm| {
        let r = comm.rank();
        let mut recv = vec![0u8; if r == 0 { 8 } else { 7 }];
        comm.all_gather(&[1, 2, 3, 4], &mut recv)
    });
    assert!(
        matches!(results[1], Err(CollectiveError::ReceiveLength { .. })),
        "{results:?}"
    );
    assert!(
        results[0].is_err(),
        "rank 0 should learn that rank 1 failed: {results:?}"
    );
}

#[test]
fn ranks_that_disagree_on_left_out_tensors_get_an_error_not_garbage() {
    // two one-lane tensors: rank 0 owns tensor 0, rank 1 tensor 1; rank 0 leaves out tensor 0,
    // rank 1 leaves out tensor 1, so each steps only a tensor the other owns
    let dims = dims_of(&[&[4, 4], &[4, 4]]);
    let results = on_ranks_timeout(2, 20, move |comm| {
        let mut opt = ShardedCame::<f32, _>::with_dims(config(), &dim_refs(&dims), comm).unwrap();
        let rank = opt.rank();
        let owned: Vec<_> = (0..2).map(|t| opt.map().elements(t, rank)).collect();
        let mut p: Vec<Vec<f32>> = owned
            .iter()
            .map(|r| init::<f32>(16)[r.clone()].to_vec())
            .collect();
        let g: Vec<Vec<f32>> = owned
            .iter()
            .enumerate()
            .map(|(t, r)| grad::<f32>(t, 0, 16)[r.clone()].to_vec())
            .collect();
        let mut pp: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
        let gg: Vec<Option<&[f32]>> = g
            .iter()
            .enumerate()
            .map(|(t, g)| (t != rank).then_some(g.as_slice()))
            .collect();
        let r = opt.step_shards(&mut pp, &gg);
        let counts: Vec<_> = (0..2).map(|t| opt.step_count(TensorId(t))).collect();
        (owned, r, counts)
    });
    for (rank, (owned, r, counts)) in results.into_iter().enumerate() {
        assert!(
            !owned[rank].is_empty() && owned[1 - rank].is_empty(),
            "rank {rank}: {owned:?}"
        );
        assert!(
            r.is_err(),
            "rank {rank}: the step succeeded though the ranks disagreed ({r:?}, step counts {counts:?})"
        );
    }
}
