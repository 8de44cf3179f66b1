//! Shapes large enough to be cut into several lanes (rows of a matrix, matrices of a batch,
//! blocks of a vector) against a direct `f64` transcription of the reference algorithm.

mod support;

use came::{CameConfig, CameState, Float, Shape};
use support::reference::{self, Rng};

/// Runs `steps` steps of the crate in `T` and of the reference in `f64` on the same data and
/// returns the worst `|p - ref| / (atol + rtol |ref|)` over all steps and elements.
fn worst_ratio<T: Float>(
    dims: &[usize],
    config: &CameConfig,
    steps: usize,
    tol: (f64, f64),
) -> f64 {
    let shape = Shape::new(dims).unwrap();
    let n = shape.numel();
    let mut rng = Rng(dims.iter().fold(7, |a, &d| a * 31 + d as u64));
    let p0 = rng.vec(n, 1.0);
    let mut p_ref = p0.clone();
    let mut s_ref = reference::State::new(dims);
    let mut p: Vec<T> = p0.iter().map(|&x| T::from_f64(x)).collect();
    let mut buf = vec![T::zero(); shape.state_len()];
    let mut state = CameState::new(&mut buf);
    let mut worst = 0.0f64;
    for t in 0..steps {
        // rows of very different scale, and some rows with no gradient at all
        let g: Vec<f64> = (0..n)
            .map(|i| {
                let row = i / dims.last().copied().unwrap_or(1).max(1);
                if row % 7 == 3 {
                    0.0
                } else {
                    rng.uniform() * (1 + row % 5) as f64
                }
            })
            .collect();
        let g_t: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
        // the reference sees exactly the gradient the crate sees
        let g_seen: Vec<f64> = g_t.iter().map(|x| x.as_f64()).collect();
        reference::step(config, dims, &mut p_ref, &g_seen, &mut s_ref);
        came::step(config, &shape, &mut p, &g_t, &mut state).unwrap();
        for (&a, &b) in p.iter().zip(&p_ref) {
            let r = (a.as_f64() - b).abs() / (tol.0 + tol.1 * b.abs());
            assert!(r.is_finite(), "step {t}: non-finite");
            worst = worst.max(r);
        }
    }
    worst
}

const SHAPES: [&[usize]; 14] = [
    &[300, 257],
    // rows wider than 8 KiB are walked four at a time (here with 2 rows left over per lane)
    &[70, 3001],
    &[40, 4096],
    &[2, 35, 1500],
    // rows shorter than 16 elements take the plain loops: any width, and the widths compiled
    // as constants (the kernels of 3x3, 1x1 and 5x5 convolutions)
    &[4000, 9, 7],
    &[128, 128, 3, 3],
    &[512, 256, 1, 1],
    &[100, 64, 5, 5],
    &[1100, 130],
    &[5000, 70],
    &[40, 64, 33],
    &[17, 3, 64, 33],
    &[200_003],
    &[1, 70_001],
];

#[test]
fn shapes_under_test_have_several_lanes() {
    let lanes: Vec<usize> = SHAPES
        .iter()
        .map(|d| Shape::new(d).unwrap().lanes())
        .collect();
    assert_eq!(lanes, [2, 6, 5, 2, 7, 4, 4, 4, 4, 10, 2, 3, 6, 1]);
}

#[test]
#[cfg_attr(miri, ignore = "millions of elements: hours under miri")]
fn f64_lanes_match_the_reference_algorithm() {
    let configs = [
        CameConfig::new(1e-3),
        CameConfig::new(1e-3)
            .with_clip_threshold(0.05)
            .with_weight_decay(0.1),
    ];
    for dims in SHAPES {
        for config in &configs {
            let worst = worst_ratio::<f64>(dims, config, 4, (1e-12, 1e-12));
            assert!(
                worst <= 1.0,
                "{dims:?} {config:?}: {worst}x the f64 tolerance"
            );
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "millions of elements: hours under miri")]
fn f32_lanes_match_the_reference_algorithm() {
    for dims in SHAPES {
        let config = CameConfig::new(1e-3)
            .with_clip_threshold(0.05)
            .with_weight_decay(0.1);
        let worst = worst_ratio::<f32>(dims, &config, 4, (5e-6, 5e-6));
        assert!(worst <= 1.0, "{dims:?}: {worst}x the f32 tolerance");
    }
}

#[test]
#[cfg_attr(miri, ignore = "millions of elements: hours under miri")]
fn without_confidence_lanes_match_the_adafactor_baseline() {
    let config = CameConfig::new(1e-3)
        .with_clip_threshold(0.05)
        .with_weight_decay(0.1)
        .with_confidence(false);
    for dims in SHAPES {
        let worst = worst_ratio::<f64>(dims, &config, 4, (1e-12, 1e-12));
        assert!(worst <= 1.0, "{dims:?}: {worst}x the f64 tolerance");
        let worst = worst_ratio::<f32>(dims, &config, 4, (5e-6, 5e-6));
        assert!(worst <= 1.0, "{dims:?}: {worst}x the f32 tolerance");
    }
}
