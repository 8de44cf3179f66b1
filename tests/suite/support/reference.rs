//! A direct, unoptimised transcription of the reference algorithm (FORMAT.md) in `f64`, for
//! checking the optimised kernels on shapes the reference files do not cover (many lanes,
//! large batches). Every mean is a plain loop; nothing is fused.

#![allow(dead_code)]

use came::{CameConfig, CameState, Float, Instability, Shape};

/// The reference's state for one tensor.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub exp_avg: Vec<f64>,
    pub exp_avg_sq: Vec<f64>,
    pub exp_avg_sq_row: Vec<f64>,
    pub exp_avg_sq_col: Vec<f64>,
    pub exp_avg_res_row: Vec<f64>,
    pub exp_avg_res_col: Vec<f64>,
    /// Steps taken.
    pub step: u64,
}

fn dims3(dims: &[usize]) -> Option<(usize, usize, usize)> {
    let rank = dims.len();
    (rank >= 2).then(|| {
        (
            dims[..rank - 2].iter().product(),
            dims[rank - 2],
            dims[rank - 1],
        )
    })
}

impl State {
    pub fn new(dims: &[usize]) -> Self {
        let n: usize = dims.iter().product();
        match dims3(dims) {
            Some((b, r, c)) => State {
                exp_avg: vec![0.0; n],
                exp_avg_sq_row: vec![0.0; b * r],
                exp_avg_sq_col: vec![0.0; b * c],
                exp_avg_res_row: vec![0.0; b * r],
                exp_avg_res_col: vec![0.0; b * c],
                ..State::default()
            },
            None => State {
                exp_avg: vec![0.0; n],
                exp_avg_sq: vec![0.0; n],
                ..State::default()
            },
        }
    }
}

fn approx_sq_grad(row: &[f64], col: &[f64]) -> Vec<f64> {
    let mean = row.iter().sum::<f64>() / row.len() as f64;
    let mut out = Vec::with_capacity(row.len() * col.len());
    for &r in row {
        for &c in col {
            out.push((1.0 / (r / mean).sqrt()) * (1.0 / c.sqrt()));
        }
    }
    out
}

fn row_col_means(x: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut row = vec![0.0; rows];
    let mut col = vec![0.0; cols];
    for i in 0..rows {
        for j in 0..cols {
            row[i] += x[i * cols + j];
            col[j] += x[i * cols + j];
        }
    }
    row.iter_mut().for_each(|v| *v /= cols as f64);
    col.iter_mut().for_each(|v| *v /= rows as f64);
    (row, col)
}

fn ema(s: &mut [f64], x: &[f64], beta: f64) {
    for (s, &x) in s.iter_mut().zip(x) {
        *s = beta * *s + (1.0 - beta) * x;
    }
}

/// One step of the reference algorithm.
pub fn step(config: &CameConfig, dims: &[usize], p: &mut [f64], g: &[f64], s: &mut State) {
    let (b1, b2, b3) = config.betas;
    let (e1, e2) = config.eps;
    let n = p.len();
    if n == 0 {
        return;
    }
    let sq: Vec<f64> = g.iter().map(|g| g * g + e1).collect();
    let mut u = vec![0.0; n];
    let factored = dims3(dims);
    match factored {
        Some((b, r, c)) => {
            for k in 0..b {
                let (rm, cm) = row_col_means(&sq[k * r * c..(k + 1) * r * c], r, c);
                ema(&mut s.exp_avg_sq_row[k * r..(k + 1) * r], &rm, b2);
                ema(&mut s.exp_avg_sq_col[k * c..(k + 1) * c], &cm, b2);
                let f = approx_sq_grad(
                    &s.exp_avg_sq_row[k * r..(k + 1) * r],
                    &s.exp_avg_sq_col[k * c..(k + 1) * c],
                );
                for j in 0..r * c {
                    u[k * r * c + j] = f[j] * g[k * r * c + j];
                }
            }
        }
        None => {
            ema(&mut s.exp_avg_sq, &sq, b2);
            for j in 0..n {
                u[j] = (1.0 / s.exp_avg_sq[j].sqrt()) * g[j];
            }
        }
    }
    let rms = (u.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
    let d = (rms / config.clip_threshold).max(1.0);
    u.iter_mut().for_each(|x| *x /= d);
    ema(&mut s.exp_avg, &u, b1);
    let update: Vec<f64> = match factored {
        // the Adafactor baseline: the momentum as it is
        Some(_) if !config.confidence => s.exp_avg.clone(),
        Some((b, r, c)) => {
            // Adam's bias correction of C (R's cancels in R / mean(R))
            let bc = match config.instability {
                Instability::BiasCorrected => 1.0 - b3.powf((s.step + 1) as f64),
                _ => 1.0,
            };
            let res: Vec<f64> = u
                .iter()
                .zip(&s.exp_avg)
                .map(|(u, m)| (u - m) * (u - m) + e2)
                .collect();
            let mut out = vec![0.0; n];
            for k in 0..b {
                let (rm, cm) = row_col_means(&res[k * r * c..(k + 1) * r * c], r, c);
                ema(&mut s.exp_avg_res_row[k * r..(k + 1) * r], &rm, b3);
                ema(&mut s.exp_avg_res_col[k * c..(k + 1) * c], &cm, b3);
                let col: Vec<f64> = s.exp_avg_res_col[k * c..(k + 1) * c]
                    .iter()
                    .map(|c| c / bc)
                    .collect();
                let f = approx_sq_grad(&s.exp_avg_res_row[k * r..(k + 1) * r], &col);
                for j in 0..r * c {
                    out[k * r * c + j] = f[j] * s.exp_avg[k * r * c + j];
                }
            }
            out
        }
        None => s.exp_avg.clone(),
    };
    for (p, upd) in p.iter_mut().zip(update) {
        if config.weight_decay != 0.0 {
            *p -= config.weight_decay * config.lr * *p;
        }
        *p -= config.lr * upd;
    }
    s.step += 1;
}

/// A deterministic pseudo-random stream (SplitMix64) for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.uniform()).collect()
    }
}

/// Runs `steps` steps of the crate in `T` and of the reference in `f64` on the same data and
/// returns the worst `|p - ref| / (atol + rtol |ref|)` over all steps and elements.
pub fn worst_ratio<T: Float>(
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
    let mut s_ref = State::new(dims);
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
        step(config, dims, &mut p_ref, &g_seen, &mut s_ref);
        came::step(config, &shape, &mut p, &g_t, &mut state).unwrap();
        for (&a, &b) in p.iter().zip(&p_ref) {
            let r = (a.as_f64() - b).abs() / (tol.0 + tol.1 * b.abs());
            assert!(r.is_finite(), "step {t}: non-finite");
            worst = worst.max(r);
        }
    }
    worst
}
