//! Shapes large enough to be cut into several lanes (rows of a matrix, matrices of a batch,
//! blocks of a vector) against a direct `f64` transcription of the reference algorithm.

use crate::support;

use came::{CameConfig, Instability, Shape};
use support::reference::worst_ratio;

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

#[test]
#[cfg_attr(miri, ignore = "millions of elements: hours under miri")]
fn bias_corrected_instability_statistics_match_the_reference_algorithm_with_the_correction() {
    let config = CameConfig::new(1e-3)
        .with_weight_decay(0.1)
        .with_instability(Instability::BiasCorrected);
    for dims in [
        &[300, 257][..],
        &[70, 3001],
        &[4000, 9, 7],
        &[17, 3, 64, 33],
        &[200_003],
    ] {
        let worst = worst_ratio::<f64>(dims, &config, 4, (1e-12, 1e-12));
        assert!(worst <= 1.0, "{dims:?}: {worst}x the f64 tolerance");
        let worst = worst_ratio::<f32>(dims, &config, 4, (5e-6, 5e-6));
        assert!(worst <= 1.0, "{dims:?}: {worst}x the f32 tolerance");
    }
}
