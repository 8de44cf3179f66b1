//! Criterion benches of one step, CAME against AdamW, f32 and f64, on the shapes of a typical
//! model: a LayerNorm-sized vector, a square layer, a large projection, a 3x3 convolution.
//!
//! ```text
//! cargo bench --bench step
//! cargo bench --bench step -- 'came/f32'      # a subset
//! ```

use std::hint::black_box;

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Float, Shape};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SHAPES: [(&str, &[usize]); 4] = [
    ("768", &[768]),
    ("1024x1024", &[1024, 1024]),
    ("4096x4096", &[4096, 4096]),
    ("256x256x3x3", &[256, 256, 3, 3]),
];

fn data<T: Float>(n: usize, seed: u64, scale: f64) -> Vec<T> {
    (0..n)
        .map(|i| {
            let x = ((i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64;
            T::from_f64(scale * (2.0 * x / (1u64 << 53) as f64 - 1.0))
        })
        .collect()
}

fn bench_dtype<T: Float>(c: &mut Criterion, dtype: &str) {
    let mut group = c.benchmark_group(format!("step/{dtype}"));
    for (name, dims) in SHAPES {
        let shape = Shape::new(dims).unwrap();
        let n = shape.numel();
        group.throughput(Throughput::Elements(n as u64));
        if n >= 1 << 24 {
            group.sample_size(10);
        } else {
            group.sample_size(30);
        }
        let mut p = data::<T>(n, 1, 1.0);
        let g = data::<T>(n, 2, 1e-2);

        let config = CameConfig::new(1e-4);
        let mut buf = vec![T::zero(); shape.state_len()];
        let mut state = CameState::new(&mut buf);
        group.bench_function(BenchmarkId::new("came", name), |b| {
            b.iter(|| came::step(&config, &shape, black_box(&mut p), &g, &mut state).unwrap());
        });

        let config = AdamWConfig::new(1e-4);
        let mut buf = vec![T::zero(); adamw::state_len(dims)];
        let mut state = AdamWState::new(&mut buf);
        group.bench_function(BenchmarkId::new("adamw", name), |b| {
            b.iter(|| adamw::step(&config, black_box(&mut p), &g, &mut state).unwrap());
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_dtype::<f32>(c, "f32");
    bench_dtype::<f64>(c, "f64");
}

criterion_group!(step, benches);
criterion_main!(step);
