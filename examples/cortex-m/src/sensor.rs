//! Windows of a 3-axis accelerometer, generated: 32 readings per axis at 50 Hz, in g, for four
//! activities. The same activity reads differently once the device is mounted another way
//! ([`Mount`]), which is what on-device fine-tuning corrects.

use core::f32::consts::TAU;

pub use crate::lcg::Lcg;

/// Readings per axis in a window (0.64 s at 50 Hz).
pub const SAMPLES: usize = 32;
/// Readings in a window, axis-major (x, then y, then z).
pub const READINGS: usize = 3 * SAMPLES;
/// Frequency bins per axis in the features (bin `k` is `k * 50 / 32` Hz).
pub const BINS: usize = 6;
/// Features of a window, the classifier's inputs: per axis, the mean and the magnitudes of
/// the first [`BINS`] bins of its discrete Fourier transform.
pub const FEATURES: usize = 3 * (1 + BINS);
/// Activities: still, walking, shaking, circling.
pub const CLASSES: usize = 4;

const RATE_HZ: f32 = 50.0;
/// Largest noise of a reading, in g.
const NOISE: f32 = 0.3;

/// How the accelerometer sits in the device: its readings are `gain * R a`.
pub struct Mount {
    /// Rotation from the device's axes to the sensor's, row-major.
    pub rotation: [[f32; 3]; 3],
    /// Sensitivity of this sensor against the factory one.
    pub gain: f32,
}

/// The mount the classifier was trained for.
pub const FACTORY: Mount = Mount {
    rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    gain: 1.0,
};

/// The board turned a quarter turn about z and tilted 30 degrees about x, with a sensor 15%
/// less sensitive.
pub const REMOUNTED: Mount = Mount {
    rotation: [
        [0.0, -1.0, 0.0],
        [0.866_025_4, 0.0, -0.5],
        [0.5, 0.0, 0.866_025_4],
    ],
    gain: 0.85,
};

/// A random activity.
pub fn class(rng: &mut Lcg) -> usize {
    (rng.uniform() * CLASSES as f32) as usize % CLASSES
}

/// One window of activity `class` as `mount` reads it, into `out`.
pub fn window(rng: &mut Lcg, class: usize, mount: &Mount, out: &mut [f32; READINGS]) {
    let amplitude = rng.between(0.7, 1.3);
    let phase = rng.between(0.0, TAU);
    let speed = rng.between(0.85, 1.15);
    for t in 0..SAMPLES {
        let time = t as f32 / RATE_HZ;
        let wave = |hz: f32| libm::sinf(TAU * hz * speed * time + phase);
        let cosine = |hz: f32| libm::cosf(TAU * hz * speed * time + phase);
        // gravity on z, then the activity's motion
        let mut a = [0.0, 0.0, 1.0];
        match class {
            0 => {}
            1 => {
                a[2] += 0.4 * amplitude * wave(2.0);
                a[0] += 0.2 * amplitude * wave(1.0);
            }
            2 => a[0] += 0.8 * amplitude * wave(8.0),
            _ => {
                a[0] += 0.5 * amplitude * wave(1.5);
                a[1] += 0.5 * amplitude * cosine(1.5);
            }
        }
        for (axis, row) in mount.rotation.iter().enumerate() {
            let reading = row[0] * a[0] + row[1] * a[1] + row[2] * a[2];
            out[axis * SAMPLES + t] = mount.gain * reading + NOISE * rng.between(-1.0, 1.0);
        }
    }
}

/// `cos` and `sin` of `2 pi j / SAMPLES`, `j < SAMPLES`: every angle the features' transform
/// needs, computed once.
pub struct Twiddles {
    cos: [f32; SAMPLES],
    sin: [f32; SAMPLES],
}

impl Twiddles {
    /// The table.
    pub fn new() -> Self {
        let angle = |j: usize| TAU * j as f32 / SAMPLES as f32;
        Self {
            cos: core::array::from_fn(|j| libm::cosf(angle(j))),
            sin: core::array::from_fn(|j| libm::sinf(angle(j))),
        }
    }

    /// The features of a window of readings (the fixed front end a device runs before its
    /// classifier: phase-free, so the classifier sees what moves and how fast, not when).
    pub fn features(&self, readings: &[f32; READINGS], out: &mut [f32; FEATURES]) {
        for (axis, out) in readings
            .chunks_exact(SAMPLES)
            .zip(out.chunks_exact_mut(1 + BINS))
        {
            let mean = axis.iter().sum::<f32>() / SAMPLES as f32;
            out[0] = mean;
            for (k, bin) in out[1..].iter_mut().enumerate() {
                let (mut re, mut im) = (0.0, 0.0);
                for (t, &x) in axis.iter().enumerate() {
                    let j = ((k + 1) * t) % SAMPLES;
                    re += (x - mean) * self.cos[j];
                    im += (x - mean) * self.sin[j];
                }
                *bin = libm::sqrtf(re * re + im * im) * (2.0 / SAMPLES as f32);
            }
        }
    }
}
