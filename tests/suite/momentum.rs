//! Momentum stored in bfloat16 or block-wise 8 bits (`came::momentum`): one step equals the
//! full-precision step on the decoded momentum, encoded as the documented format says (decoded
//! and encoded here independently, from the docs); trajectories stay close to full precision;
//! threads, checkpoints and the memory target.
#![cfg(feature = "std")]

use crate::support;

use came::adamw::AdamWConfig;
use came::{
    AdamW, Came, CameConfig, CameState, CheckpointError, Code8, Error, Momentum, Optimizer, Pool,
    Shape,
};
use half::bf16;
use support::reference::Rng;

const FORMATS: [Momentum; 4] = [
    Momentum::Bf16,
    Momentum::INT8,
    Momentum::Int8 {
        code: Code8::MinMax,
        block: 64,
    },
    Momentum::Int8 {
        code: Code8::Absmax,
        block: 32,
    },
];

/// Shapes with several blocks per row, a short last block, wide rows (walked in groups in
/// full precision), several lanes and a batch.
const SHAPES: [&[usize]; 4] = [&[64, 100], &[300, 257], &[8, 2100], &[3, 40, 128]];

fn f32s(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    rng.vec(n, scale).into_iter().map(|x| x as f32).collect()
}

/// `round` to nearest, ties to even, as the docs say the codes are rounded.
fn round(x: f32) -> f32 {
    x.round_ties_even()
}

/// The momentum of one row block, decoded as `came::momentum` documents it.
fn decode_block(m: Momentum, codes: &[u8], scales: &[f32]) -> Vec<f32> {
    match m {
        Momentum::Int8 {
            code: Code8::Absmax,
            ..
        } => codes
            .iter()
            .map(|&q| f32::from(q as i8) * scales[0])
            .collect(),
        _ => codes
            .iter()
            .map(|&q| scales[0] + f32::from(q) * scales[1])
            .collect(),
    }
}

/// One row block encoded as `came::momentum` documents it: codes and scales.
fn encode_block(m: Momentum, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match m {
        Momentum::Int8 {
            code: Code8::Absmax,
            ..
        } => {
            let s = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let q = x
                .iter()
                .map(|&v| round(v * inv).clamp(-127.0, 127.0) as i8 as u8);
            (q.collect(), vec![s])
        }
        _ => {
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s = (hi - lo) / 255.0;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let q = x
                .iter()
                .map(|&v| round((v - lo) * inv).clamp(0.0, 255.0) as u8);
            (q.collect(), vec![lo, s])
        }
    }
}

/// The whole momentum of a packed state, decoded (rows of `cols`).
fn decode_all(m: Momentum, packed: &[f32], scales: &[f32], numel: usize, cols: usize) -> Vec<f32> {
    let bytes: &[u8] = bytemuck::cast_slice(packed);
    match m {
        Momentum::Bf16 => bytemuck::cast_slice::<u8, bf16>(&bytes[..2 * numel])
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        Momentum::Int8 { code, block } => {
            let (block, w) = (usize::from(block), code.width());
            let per_row = cols.div_ceil(block);
            let mut out = Vec::with_capacity(numel);
            for (r, row) in bytes[..numel].chunks(cols).enumerate() {
                for (b, codes) in row.chunks(block).enumerate() {
                    let s = &scales[(r * per_row + b) * w..][..w];
                    out.extend(decode_block(m, codes, s));
                }
            }
            out
        }
        _ => unreachable!(),
    }
}

/// The packed momentum (and scales) the docs say `m` encodes to.
fn encode_all(m: Momentum, values: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    match m {
        Momentum::Bf16 => {
            let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
            (bytemuck::cast_slice(&v).to_vec(), Vec::new())
        }
        Momentum::Int8 { block, .. } => {
            let (mut codes, mut scales) = (Vec::new(), Vec::new());
            for row in values.chunks(cols) {
                for x in row.chunks(usize::from(block)) {
                    let (q, s) = encode_block(m, x);
                    codes.extend(q);
                    scales.extend(s);
                }
            }
            (codes, scales)
        }
        _ => unreachable!(),
    }
}

fn piece<'a>(shape: &Shape, state: &'a [f32], key: &str) -> &'a [f32] {
    let p = shape.state_layout().piece(key);
    p.map_or(&[][..], |p| &state[p.range])
}

fn cols(dims: &[usize]) -> usize {
    dims[dims.len() - 1]
}

#[test]
fn a_packed_step_is_the_full_step_on_the_decoded_momentum_encoded() {
    let config = CameConfig::new(1e-2).with_weight_decay(0.01);
    for format in FORMATS {
        for dims in SHAPES {
            let full = Shape::new(dims).unwrap();
            let packed = full.with_momentum(format).unwrap();
            assert_eq!(packed.state_layout().momentum(), format, "{dims:?}");
            let (n, c) = (full.numel(), cols(dims));
            let mut rng = Rng(n as u64);
            // a few packed steps for a state worth checking
            let mut p = f32s(&mut rng, n, 1.0);
            let mut sp = vec![0.0f32; packed.state_len()];
            let mut state = CameState::new(&mut sp);
            for _ in 0..3 {
                let g = f32s(&mut rng, n, 0.1);
                came::step(&config, &packed, &mut p, &g, &mut state).unwrap();
            }
            // the same state in full precision: the decoded momentum, the same statistics
            let mut sf = vec![0.0f32; full.state_len()];
            let m0 = decode_all(
                format,
                piece(&packed, &sp, "exp_avg"),
                piece(&packed, &sp, "exp_avg_scale"),
                n,
                c,
            );
            sf[..n].copy_from_slice(&m0);
            for key in &came::FACTORED_KEYS[1..] {
                let range = full.state_layout().piece(key).unwrap().range;
                sf[range].copy_from_slice(piece(&packed, &sp, key));
            }
            let g = f32s(&mut rng, n, 0.1);
            let mut pf = p.clone();
            came::step(
                &config,
                &full,
                &mut pf,
                &g,
                &mut CameState::from_parts(&mut sf, 3),
            )
            .unwrap();
            came::step(
                &config,
                &packed,
                &mut p,
                &g,
                &mut CameState::from_parts(&mut sp, 3),
            )
            .unwrap();
            // the new momentum is the full step's, encoded
            let (codes, scales) = encode_all(format, &sf[..n], c);
            let bytes: &[u8] = bytemuck::cast_slice(piece(&packed, &sp, "exp_avg"));
            let bad: Vec<usize> = (0..codes.len()).filter(|&i| bytes[i] != codes[i]).collect();
            assert!(
                bad.is_empty(),
                "{format:?} {dims:?}: {} momentum bytes differ, first {:?}",
                bad.len(),
                &bad[..bad.len().min(8)]
            );
            let got = piece(&packed, &sp, "exp_avg_scale");
            assert_eq!(got.len(), scales.len(), "{format:?} {dims:?}");
            assert!(
                got.iter()
                    .zip(&scales)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
            // the squared-gradient statistics are computed before the momentum: the same bits
            for key in ["exp_avg_sq_row", "exp_avg_sq_col"] {
                let range = full.state_layout().piece(key).unwrap().range;
                assert_eq!(
                    &sf[range],
                    piece(&packed, &sp, key),
                    "{format:?} {dims:?} {key}"
                );
            }
            // the instability sums are added up block by block: within a few ulps
            for key in ["exp_avg_res_row", "exp_avg_res_col"] {
                let range = full.state_layout().piece(key).unwrap().range;
                for (a, b) in sf[range].iter().zip(piece(&packed, &sp, key)) {
                    assert!(
                        (a - b).abs() <= 1e-5 * a.abs(),
                        "{format:?} {dims:?} {key}: {a} {b}"
                    );
                }
            }
        }
    }
}

/// 40 steps with packed momentum move the parameters as full precision does, to within the
/// momentum's precision.
#[test]
fn packed_trajectories_stay_close_to_full_precision() {
    let dims = [128, 256];
    let full = Shape::new(&dims).unwrap();
    let config = CameConfig::new(1e-3);
    let run = |shape: Shape| {
        let mut rng = Rng(3);
        let p0 = f32s(&mut rng, full.numel(), 1.0);
        let mut p = p0.clone();
        let mut buf = vec![0.0f32; shape.state_len()];
        let mut state = CameState::new(&mut buf);
        for _ in 0..40 {
            // a gradient with a steady part, as in training, and noise
            let g: Vec<f32> = f32s(&mut rng, p.len(), 0.1)
                .iter()
                .zip(&p)
                .map(|(n, x)| n + 0.3 * x)
                .collect();
            came::step(&config, &shape, &mut p, &g, &mut state).unwrap();
        }
        p.iter()
            .zip(&p0)
            .map(|(a, b)| f64::from(a - b))
            .collect::<Vec<_>>()
    };
    let reference = run(full);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    for (format, bound) in [
        (Momentum::Bf16, 0.01),
        (Momentum::INT8, 0.05),
        (FORMATS[2], 0.05),
    ] {
        let moved = run(full.with_momentum(format).unwrap());
        let diff: Vec<f64> = moved.iter().zip(&reference).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&reference);
        println!("{format:?}: displacement off by {rel:.5} of its norm");
        assert!(rel < bound, "{format:?}: {rel}");
    }
}

#[test]
fn packed_steps_are_bit_identical_for_any_thread_count() {
    let pools: Vec<Pool> = [1, 2, 3].map(|t| Pool::new(t).unwrap()).into();
    for dims in [&[3000, 64][..], &[300, 257], &[20, 64, 100]] {
        for format in FORMATS {
            let shape = Shape::new(dims).unwrap().with_momentum(format).unwrap();
            let run = |pool: Option<&Pool>| {
                let mut rng = Rng(1);
                let mut p = f32s(&mut rng, shape.numel(), 1.0);
                let mut buf = vec![0.0f32; shape.state_len()];
                let mut state = CameState::new(&mut buf);
                let config = CameConfig::new(1e-3);
                for _ in 0..2 {
                    let g = f32s(&mut rng, p.len(), 0.1);
                    match pool {
                        Some(pool) => pool.step(&config, &shape, &mut p, &g, &mut state),
                        None => came::step(&config, &shape, &mut p, &g, &mut state),
                    }
                    .unwrap();
                }
                (p, buf)
            };
            let serial = run(None);
            for pool in &pools {
                let (p, s) = run(Some(pool));
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same(&p, &serial.0) && same(&s, &serial.1),
                    "{dims:?} {format:?} on {}",
                    pool.threads()
                );
            }
        }
    }
}

fn owned(format: Momentum) -> Came<f32> {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    opt.set_momentum(format).unwrap();
    opt.register("w", &[96, 100]).unwrap();
    opt.register("b", &[100]).unwrap();
    opt
}

#[test]
fn packed_checkpoints_round_trip_and_refuse_other_formats() {
    let dir = std::env::temp_dir().join(format!("came-momentum-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(8);
    let grads: Vec<(Vec<f32>, Vec<f32>)> = (0..4)
        .map(|_| (f32s(&mut rng, 9600, 0.1), f32s(&mut rng, 100, 0.1)))
        .collect();
    for format in FORMATS {
        let (mut w, mut b) = (vec![0.5f32; 9600], vec![0.1f32; 100]);
        let mut straight = owned(format);
        for (gw, gb) in &grads {
            straight.step(&mut [(&mut w, gw), (&mut b, gb)]).unwrap();
        }
        let (mut w2, mut b2) = (vec![0.5f32; 9600], vec![0.1f32; 100]);
        let mut first = owned(format);
        for (gw, gb) in &grads[..2] {
            first.step(&mut [(&mut w2, gw), (&mut b2, gb)]).unwrap();
        }
        let path = dir.join("packed.safetensors");
        first.save(&path).unwrap();
        let mut resumed = owned(format);
        resumed.load(&path).unwrap();
        for (gw, gb) in &grads[2..] {
            resumed.step(&mut [(&mut w2, gw), (&mut b2, gb)]).unwrap();
        }
        assert_eq!((&w2, &b2), (&w, &b), "{format:?}");
        // the file holds the packed dtypes
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let m = file.tensor("state.0.exp_avg").unwrap();
        assert_eq!(m.shape(), [96, 100]);
        let want = if format == Momentum::Bf16 {
            safetensors::Dtype::BF16
        } else {
            safetensors::Dtype::U8
        };
        assert_eq!(m.dtype(), want);
        assert_eq!(
            file.tensor("state.1.exp_avg").unwrap().dtype(),
            safetensors::Dtype::F32
        );
        // into a full-precision optimizer: bf16 widens exactly, 8-bit codes are refused
        let mut wide = owned(Momentum::Full);
        let loaded = wide.load(&path);
        if format == Momentum::Bf16 {
            loaded.unwrap();
        } else {
            let Err(CheckpointError::File { error, .. }) = loaded else {
                panic!("{format:?} loaded")
            };
            assert!(
                matches!(&*error, CheckpointError::WrongDtype { key, expected: "F32", found } if key == "state.0.exp_avg" && found == "U8"),
                "{error}"
            );
        }
    }
    // a full-precision file does not fit packed momentum (it would be rounded)
    let path = dir.join("full.safetensors");
    owned(Momentum::Full).save(&path).unwrap();
    let Err(CheckpointError::File { error, .. }) = owned(Momentum::Bf16).load(&path) else {
        panic!("loaded")
    };
    assert!(
        matches!(
            &*error,
            CheckpointError::WrongDtype {
                expected: "BF16",
                ..
            }
        ),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 8-bit momentum on 4096 x 4096 against AdamW's f32 state (the target is at most 13%): the
/// state a checkpoint holds (codes, scales, statistics) and the whole buffer, with the column
/// sums a step writes per lane (16 lanes of 4 x 4096 words, 1 MiB).
#[test]
fn eight_bit_momentum_state_against_adamw() {
    let mut adamw = AdamW::<f32>::new(AdamWConfig::default()).unwrap();
    adamw.register("w", &[4096, 4096]).unwrap();
    let mut came = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    came.set_momentum(Momentum::INT8).unwrap();
    came.register("w", &[4096, 4096]).unwrap();
    let layout = Shape::new(&[4096, 4096])
        .unwrap()
        .with_momentum(Momentum::INT8)
        .unwrap()
        .state_layout();
    let adamw_bytes = adamw.state_bytes() as f64;
    let named = (layout.named_len() * 4) as f64 / adamw_bytes;
    let whole = came.state_bytes() as f64 / adamw_bytes;
    println!(
        "8-bit CAME / AdamW state on 4096 x 4096: {named:.4} (checkpointed), {whole:.4} (with the workspace)"
    );
    assert!(named <= 0.13, "{named}");
    assert!(whole <= 0.14, "{whole}");
    assert_eq!(came.state_bytes(), layout.len() * 4);
}

#[test]
fn packed_momentum_needs_f32_and_valid_blocks() {
    let shape = Shape::new(&[64, 64]).unwrap();
    let bad = Momentum::Int8 {
        code: Code8::Absmax,
        block: 48,
    };
    assert_eq!(shape.with_momentum(bad), Err(Error::InvalidMomentum(bad)));
    let packed = shape.with_momentum(Momentum::Bf16).unwrap();
    let mut buf = vec![0.0f64; packed.state_len()];
    let (mut p, g) = (vec![1.0f64; 4096], vec![0.1f64; 4096]);
    let err = came::step(
        &CameConfig::new(1e-3),
        &packed,
        &mut p,
        &g,
        &mut CameState::new(&mut buf),
    );
    assert_eq!(err, Err(Error::PackedMomentumNeedsF32));
    assert!(p.iter().all(|&x| x == 1.0));
}
