//! Replays every reference trajectory in `tests/data/golden` (came-pytorch 0.1.3 for CAME,
//! `torch.optim.AdamW` for AdamW) and checks every step and the final state against the
//! tolerances of FORMAT.md.

use crate::support;

use std::path::{Path, PathBuf};

use support::golden::{Case, Dtype, Optimizer, compare, json_files, replay};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

/// Miri interprets the code about a thousand times slower: under it only the small files
/// (under 10.5 kB: 13 CAME cases, every layout and both dtypes among them, and one AdamW case)
/// run, so that `cargo miri test` finishes in minutes.
fn under_miri_only_small(files: Vec<PathBuf>) -> Vec<PathBuf> {
    if !cfg!(miri) {
        return files;
    }
    files
        .into_iter()
        .filter(|f| f.metadata().is_ok_and(|m| m.len() < 10_500))
        .collect()
}

/// Replays every file, returns (name, worst fraction of tolerance) and fails listing every
/// case over its tolerance.
fn replay_all(files: &[PathBuf]) -> Vec<(Case, f64)> {
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for path in files {
        let case = Case::load(path).unwrap();
        match replay(&case) {
            Ok(got) => {
                let verdict = compare(&case, &got);
                if !verdict.passed() {
                    failures.push(format!(
                        "{}: {:.3}x tolerance at {}",
                        case.name, verdict.worst, verdict.at
                    ));
                }
                results.push((case, verdict.worst));
            }
            Err(e) => failures.push(format!("{}: step failed: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "cases over tolerance:\n{}",
        failures.join("\n")
    );
    results
}

#[test]
fn came_reference_trajectories() {
    let files = under_miri_only_small(json_files(&golden_dir()));
    let results = replay_all(&files);
    if !cfg!(miri) {
        assert_eq!(results.len(), 29, "expected the 29 CAME reference cases");
    }
    assert!(
        results
            .iter()
            .all(|(c, _)| matches!(c.optimizer, Optimizer::Came(_)))
    );
    // both dtypes, both layouts, N-D batches are covered
    assert!(results.iter().any(|(c, _)| c.dtype == Dtype::F64));
    assert!(results.iter().any(|(c, _)| c.shape.len() == 4));
    assert!(results.iter().any(|(c, _)| c.shape.is_empty()));
    for (case, worst) in &results {
        println!("{:32} {:.4}x tolerance", case.name, worst);
    }
}

#[test]
fn adamw_reference_trajectories() {
    let files = under_miri_only_small(json_files(&golden_dir().join("adamw")));
    let results = replay_all(&files);
    if !cfg!(miri) {
        assert_eq!(results.len(), 4, "expected the 4 AdamW reference cases");
    }
    assert!(!results.is_empty());
    assert!(
        results
            .iter()
            .all(|(c, _)| matches!(c.optimizer, Optimizer::AdamW(_)))
    );
    for (case, worst) in &results {
        println!("{:32} {:.4}x tolerance", case.name, worst);
    }
}

#[test]
#[cfg(feature = "std")]
#[cfg_attr(miri, ignore = "large files: slow under miri")]
fn resume_cases_continue_the_official_run_from_its_checkpoint() {
    let files = json_files(&golden_dir().join("resume"));
    let results = replay_all(&files);
    assert_eq!(results.len(), 3, "expected the 3 resume cases");
    for (case, worst) in &results {
        let after = case.resume_after_step.unwrap();
        assert!(after > 0 && after < case.params.len(), "{}", case.name);
        println!(
            "{:32} {:.4}x tolerance over steps {}..",
            case.name,
            worst,
            after + 1
        );
    }
}

#[test]
fn sixteen_bit_reference_trajectories() {
    let files = under_miri_only_small(json_files(&golden_dir().join("lowp")));
    let results = replay_all(&files);
    if !cfg!(miri) {
        assert_eq!(results.len(), 8, "expected the 8 16-bit reference cases");
    }
    assert!(results.iter().any(|(c, _)| c.dtype == Dtype::BF16));
    assert!(results.iter().any(|(c, _)| c.dtype == Dtype::F16));
    for (case, worst) in &results {
        println!(
            "{:32} {:.4}x tolerance (one 16-bit ulp per parameter)",
            case.name, worst
        );
    }
}

/// A 16-bit replay off by two ulps in one parameter is rejected: the one-ulp bound bites.
#[test]
fn sixteen_bit_comparison_rejects_two_ulps() {
    let case = Case::load(&golden_dir().join("lowp/bf16_4x5.json")).unwrap();
    let mut got = replay(&case).unwrap();
    assert!(compare(&case, &got).passed());
    let r = case.params[2][3];
    got.params[2][3] = r + 2.0 * case.dtype.ulp16(r).unwrap();
    assert!(!compare(&case, &got).passed());
}

/// The comparison itself must be able to fail: a trajectory nudged by 2x the tolerance is
/// rejected.
#[test]
fn comparison_rejects_a_trajectory_off_by_twice_the_tolerance() {
    let case = Case::load(&golden_dir().join("f32_default_4x5.json")).unwrap();
    let mut got = replay(&case).unwrap();
    assert!(compare(&case, &got).passed());
    let tol = case.dtype.tolerance();
    let r = case.params[3][7];
    got.params[3][7] = r + 2.0 * (tol.atol + tol.rtol * r.abs());
    let verdict = compare(&case, &got);
    assert!(!verdict.passed());
    assert!((verdict.worst - 2.0).abs() < 0.01, "{verdict:?}");
    assert_eq!(verdict.at, "step 4 element 7");
}
