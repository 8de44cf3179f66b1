//! Long reductions in `f32`: row sums over a million columns, column sums over a million rows,
//! in single matrices, batches and the small-matrix loops, against a direct `f64` computation
//! of the same steps on the same `f32` inputs (`support::reference`).
//!
//! A sum of `n` similar `f32` values added one after another is off by up to about `n` units in
//! the last place (8,571 copies of 0.81 by 6e-5 relative); the crate's sums are compensated
//! over blocks of a fixed size, so their error does not grow with the length. The bound here
//! is the reference tolerance for `f32` (FORMAT.md: `5e-6 + 5e-6 |ref|`) against an exact
//! computation: `lr = 1e-2` and the default β3 make the first steps' instability
//! `(u - m)^2` a difference of nearly equal numbers, which magnifies any error in the
//! statistics. `PRECISION_ALL=1 cargo test --features std --test suite -- precision:: --nocapture`
//! prints every shape's ratio instead of stopping at the first over the bound.
#![cfg(not(miri))]

use crate::support;

use std::path::Path;

use came::CameConfig;
use support::golden::{Case, compare, replay};
use support::reference::worst_ratio;

fn check(dims: &[usize]) {
    let config = CameConfig::new(1e-2);
    let worst = worst_ratio::<f32>(dims, &config, 3, (5e-6, 5e-6));
    println!("{dims:?}: {worst:.4}x");
    assert!(
        worst <= 1.0 || std::env::var_os("PRECISION_ALL").is_some(),
        "{dims:?}: {worst:.3}x the f32 tolerance against an f64 computation"
    );
}

#[test]
fn tall_single_columns() {
    for rows in [10_000, 60_000, 1_000_000] {
        check(&[rows, 1]);
    }
}

#[test]
fn long_rows() {
    check(&[1, 1_000_000]);
    check(&[3, 400_000]);
    check(&[2, 3, 200_000]);
}

#[test]
fn tall_narrow_and_small_width_matrices() {
    // the small-matrix loops (3 columns), rows walked one at a time (40), in groups (2100)
    check(&[300_000, 3]);
    check(&[25_000, 40]);
    check(&[400, 2100]);
}

#[test]
fn batches_of_tall_and_wide_matrices() {
    check(&[4, 250_000, 1]);
    check(&[3, 100_000, 3]);
    check(&[2, 1, 500_000]);
}

/// came-pytorch 0.1.3's own `f32` run of a 10000 x 1 tensor at lr 1e-2
/// (`scripts/reference_case.py --shape 10000x1 --steps 3 --lr 1e-2`): a plain sum down the
/// column put step 3 at 2.71x the tolerance (element 3435: -0.00070905685 against
/// -0.0007226169).
#[test]
fn the_field_report_case_replays_within_tolerance() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/field/came_float32_10000x1.json");
    let case = Case::load(&path).unwrap();
    let verdict = compare(&case, &replay(&case).unwrap());
    assert!(
        verdict.worst <= 0.1,
        "{:.3}x the tolerance at {}",
        verdict.worst,
        verdict.at
    );
}
