//! The GPU side of the bench: `--device cuda`.

use came::cuda::{CudaCame, CudaElement};
use came::{CameConfig, Optimizer as _, Shape};
use cudarc::driver::CudaSlice;

use crate::{fill, time_interleaved};

/// Times CAME steps over `dims` on GPU 0, beside a device-to-device copy of the same bytes.
pub(crate) fn run<T: CudaElement>(dims: &[Vec<usize>], what: &str, steps: usize, model: bool) {
    let mut opt = match CudaCame::<T>::new(0, CameConfig::new(1e-4)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("no GPU: {e}");
            std::process::exit(2);
        }
    };
    for (i, d) in dims.iter().enumerate() {
        opt.register(&format!("t{i}"), d).expect("register");
    }
    let s = opt.stream().clone();
    let numel: usize = dims
        .iter()
        .map(|d| Shape::new(d).expect("shape").numel())
        .sum();
    let mut params: Vec<CudaSlice<T>> = Vec::new();
    let mut grads: Vec<CudaSlice<T>> = Vec::new();
    for (i, d) in dims.iter().enumerate() {
        let n: usize = d.iter().product();
        let mut host = vec![T::from_compute(came::Float::from_f64(0.0)); n];
        fill(&mut host, 2 * i as u64 + 1, 0.02);
        params.push(s.clone_htod(&host).expect("upload"));
        fill(&mut host, 2 * i as u64 + 2, 1e-3);
        grads.push(s.clone_htod(&host).expect("upload"));
    }
    // the step's traffic: 32 bytes per element in f32, half of them the parameters' and
    // gradients' (scaled by their storage), half the state's (in the compute type)
    let bytes_per_elem = 4 * (size_of::<T>() + size_of::<T::Compute>());
    // a copy of half as many bytes reads and writes as many: the bandwidth the step could reach
    let copy_len = numel * bytes_per_elem / 2;
    let src: CudaSlice<u8> = s.alloc_zeros(copy_len).expect("alloc");
    let mut dst: CudaSlice<u8> = s.alloc_zeros(copy_len).expect("alloc");
    let mut copy = || {
        s.memcpy_dtod(&src, &mut dst).expect("copy");
        s.synchronize().expect("sync");
    };
    let mut step = || {
        let mut pairs: Vec<(&mut CudaSlice<T>, &CudaSlice<T>)> =
            params.iter_mut().zip(&grads).collect();
        opt.step(&mut pairs).expect("step");
    };
    let timings = time_interleaved(steps, &mut [&mut copy, &mut step]);
    let dtype = T::NAME;
    let bytes = (bytes_per_elem * numel) as f64;
    let gbs = |ms: f64| bytes / ms / 1e6;
    let kind = if model { "came_model" } else { "came_step" };
    println!(
        "copy_floor {what} dtype={dtype} device=cuda median_ms={:.4} min_ms={:.4} gb_per_s={:.0}",
        timings[0].median_ms,
        timings[0].min_ms,
        gbs(timings[0].median_ms)
    );
    println!(
        "{kind} {what} dtype={dtype} device=cuda bytes_per_elem={bytes_per_elem} tensors={} params={numel} median_ms={:.4} min_ms={:.4} melem_per_s={:.1} gb_per_s={:.0} of_copy={:.2}",
        dims.len(),
        timings[1].median_ms,
        timings[1].min_ms,
        numel as f64 / timings[1].median_ms / 1e3,
        gbs(timings[1].median_ms),
        timings[0].median_ms / timings[1].median_ms
    );
}
