//! Checkpoints: round trips, the reference's mid-run files, and every kind of bad file, each
//! refused with a clear error and no change to the optimizer or the parameters.
#![cfg(feature = "std")]

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use came::adamw::AdamWConfig;
use came::optim::{GroupId, TensorId};
use came::{AdamW, Came, CameConfig, CheckpointError, Instability, Optimizer};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use support::reference::Rng;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden/resume")
        .join(name)
}

const DIMS: [&[usize]; 3] = [&[6, 5], &[5], &[2, 3, 4]];

fn model() -> Came<f32> {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
    let g = opt
        .add_group(CameConfig::new(5e-3).with_weight_decay(0.1))
        .unwrap();
    opt.register("w", DIMS[0]).unwrap();
    opt.register_in(g, "b", DIMS[1]).unwrap();
    opt.register("conv", DIMS[2]).unwrap();
    opt
}

fn params(seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    DIMS.iter()
        .map(|d| {
            rng.vec(d.iter().product(), 1.0)
                .into_iter()
                .map(|x| x as f32)
                .collect()
        })
        .collect()
}

fn step(opt: &mut Came<f32>, p: &mut [Vec<f32>], seed: u64) {
    let g = params(seed);
    let mut pairs = support::pairs(p, &g);
    opt.step(&mut pairs).unwrap();
}

fn fingerprint(opt: &Came<f32>) -> (Vec<u64>, Vec<u32>, Vec<CameConfig>) {
    let steps = (0..opt.len())
        .map(|i| opt.tensor(TensorId(i)).unwrap().step)
        .collect();
    let state = (0..opt.len())
        .flat_map(|i| opt.state(TensorId(i)).unwrap())
        .flat_map(|p| p.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect();
    (steps, state, opt.groups().to_vec())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("came-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn save_load_and_continue_is_bit_identical_to_not_stopping() {
    let mut straight = model();
    let mut p = params(1);
    for s in 0..6 {
        step(&mut straight, &mut p, 10 + s);
    }

    let mut first = model();
    let mut q = params(1);
    for s in 0..3 {
        step(&mut first, &mut q, 10 + s);
    }
    let path = temp("roundtrip.safetensors");
    let views: Vec<&[f32]> = q.iter().map(Vec::as_slice).collect();
    first.save_with_params(&path, &views).unwrap();

    let mut resumed = model();
    let mut r: Vec<Vec<f32>> = DIMS.iter().map(|d| vec![0.0; d.iter().product()]).collect();
    let mut slots: Vec<&mut [f32]> = r.iter_mut().map(Vec::as_mut_slice).collect();
    resumed.load_with_params(&path, &mut slots).unwrap();
    assert_eq!(fingerprint(&resumed), fingerprint(&first));
    for s in 3..6 {
        step(&mut resumed, &mut r, 10 + s);
    }
    assert_eq!(r, p);
    assert_eq!(fingerprint(&resumed), fingerprint(&straight));
    assert_eq!(resumed.tensor(TensorId(2)).unwrap().step, 6);
}

#[test]
fn reference_checkpoints_load_with_their_step_and_config() {
    let mut opt = Came::<f32>::new(CameConfig::default()).unwrap();
    opt.register("w", &[16, 12]).unwrap();
    let mut w = vec![0.0f32; 192];
    opt.load_with_params(golden("came_resume_16x12.safetensors"), &mut [&mut w])
        .unwrap();
    assert_eq!(opt.tensor(TensorId(0)).unwrap().step, 6);
    assert_eq!(
        opt.groups()[0],
        CameConfig::new(1e-3).with_weight_decay(0.02)
    );
    assert!(w.iter().any(|&x| x != 0.0));
    let names: Vec<&str> = opt
        .state(TensorId(0))
        .unwrap()
        .iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        names,
        [
            "exp_avg",
            "exp_avg_sq_row",
            "exp_avg_sq_col",
            "exp_avg_res_row",
            "exp_avg_res_col"
        ]
    );
}

/// A raw tensor of a file: name, dtype, shape, bytes.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A valid checkpoint of `model()` as its tensors and metadata, to be spoiled by each test;
/// without its checksums (as files written before they existed), so that each spoiled file
/// meets the check it is about rather than a checksum.
fn parts() -> (Vec<Tensor>, HashMap<String, String>) {
    let mut opt = model();
    let mut p = params(2);
    step(&mut opt, &mut p, 3);
    let views: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
    let bytes = opt.to_safetensors(Some(&views)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let mut meta = meta.metadata().clone().unwrap();
    meta.retain(|k, _| !k.starts_with("crc32."));
    (tensors, meta)
}

fn build(tensors: &[Tensor], meta: &HashMap<String, String>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta.clone())).unwrap()
}

/// Loads `bytes` into a trained optimizer (with parameters) and checks it is refused without
/// any change.
fn refused(bytes: &[u8]) -> CheckpointError {
    let mut opt = model();
    let mut p = params(5);
    step(&mut opt, &mut p, 6);
    let before = (fingerprint(&opt), p.clone());
    let mut slots: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
    let err = opt.load_safetensors(bytes, Some(&mut slots)).unwrap_err();
    assert_eq!(fingerprint(&opt), before.0, "{err}: optimizer changed");
    assert_eq!(p, before.1, "{err}: parameters changed");
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn the_unspoiled_file_loads() {
    let (t, m) = parts();
    let bytes = build(&t, &m);
    let mut opt = model();
    let mut p = params(5);
    let mut slots: Vec<&mut [f32]> = p.iter_mut().map(Vec::as_mut_slice).collect();
    opt.load_safetensors(&bytes, Some(&mut slots)).unwrap();
    let mut q = params(2);
    let mut fresh = model();
    step(&mut fresh, &mut q, 3);
    assert_eq!(p, q);
    assert_eq!(fingerprint(&opt), fingerprint(&fresh));
}

#[test]
fn truncated_files_are_refused() {
    let (t, m) = parts();
    let bytes = build(&t, &m);
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let err = refused(&bytes[..cut]);
        assert!(
            matches!(&err, CheckpointError::Truncated { actual, .. } if *actual == cut),
            "cut at {cut}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("truncated") && text.contains(&cut.to_string()),
            "{text}"
        );
    }
    // where: the header length, the header, or the first tensor cut off
    let header = |cut: usize| match refused(&bytes[..cut]) {
        CheckpointError::Truncated { place, .. } => place,
        e => panic!("{e}"),
    };
    assert_eq!(header(4), "the header length");
    assert_eq!(header(20), "the header");
    assert!(header(bytes.len() - 1).starts_with("tensor \""));
    assert!(matches!(
        refused(b"not a checkpoint at all"),
        CheckpointError::Format(_)
    ));
}

#[test]
fn wrong_dtypes_are_refused() {
    let (mut t, m) = parts();
    let i = t.iter().position(|x| x.0 == "state.0.exp_avg").unwrap();
    let n = t[i].3.len() / 4;
    t[i].1 = Dtype::F64;
    t[i].3 = vec![0u8; 8 * n];
    let err = refused(&build(&t, &m));
    assert!(
        matches!(&err, CheckpointError::WrongDtype { key, expected: "F32", found } if key == "state.0.exp_avg" && found == "F64"),
        "{err}"
    );
    // an f32 checkpoint into an f64 optimizer: widened, exactly (nothing is rounded on load)
    let (t, m) = parts();
    let mut opt = Came::<f64>::new(CameConfig::new(1e-2)).unwrap();
    opt.add_group(CameConfig::new(5e-3).with_weight_decay(0.1))
        .unwrap();
    for (i, d) in DIMS.iter().enumerate() {
        opt.register_in(GroupId(usize::from(i == 1)), ["w", "b", "conv"][i], d)
            .unwrap();
    }
    opt.load_safetensors(&build(&t, &m), None).unwrap();
    let i = t.iter().position(|x| x.0 == "state.0.exp_avg").unwrap();
    let file: Vec<f64> = t[i]
        .3
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    let state = opt.state(TensorId(0)).unwrap();
    assert_eq!(state[0].values, &file[..]);
}

#[test]
fn shapes_that_disagree_with_the_registered_tensors_are_refused() {
    let (t, m) = parts();
    let bytes = build(&t, &m);
    let mut other = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
    other.add_group(CameConfig::new(5e-3)).unwrap();
    other.register("w", &[5, 6]).unwrap();
    other.register_in(GroupId(1), "b", &[5]).unwrap();
    other.register("conv", &[2, 3, 4]).unwrap();
    let err = other.load_safetensors(&bytes, None).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::ShapeMismatch { index: 0, name, key, optimizer, file } if name == "w" && key == "shape.0" && optimizer == &[5, 6] && file == &[6, 5]),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tensor 0 (\"w\"): the file's shape.0 has shape [6, 5], the optimizer has [5, 6]"
    );
    // a state tensor whose shape disagrees with its own metadata
    let (mut t, m) = parts();
    let i = t
        .iter()
        .position(|x| x.0 == "state.2.exp_avg_sq_row")
        .unwrap();
    t[i].2 = vec![6];
    let err = refused(&build(&t, &m));
    assert!(
        matches!(err, CheckpointError::ShapeMismatch { .. }),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let (mut t, m) = parts();
    t.push((
        "state.0.exp_avg_extra".into(),
        Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let err = refused(&build(&t, &m));
    assert!(
        matches!(&err, CheckpointError::UnknownKey(k) if k == "state.0.exp_avg_extra"),
        "{err}"
    );
    // a fourth tensor the optimizer does not have
    let (mut t, m) = parts();
    t.push(("state.3.exp_avg".into(), Dtype::F32, vec![1], vec![0; 4]));
    assert!(matches!(
        refused(&build(&t, &m)),
        CheckpointError::UnknownKey(_)
    ));
    let (t, mut m) = parts();
    m.insert("lr_schedule".into(), "cosine".into());
    assert!(
        matches!(refused(&build(&t, &m)), CheckpointError::UnknownKey(k) if k == "lr_schedule")
    );
}

#[test]
fn missing_keys_are_refused() {
    let (mut t, m) = parts();
    t.retain(|x| x.0 != "state.1.exp_avg_sq");
    let err = refused(&build(&t, &m));
    assert!(
        matches!(&err, CheckpointError::MissingKey(k) if k == "state.1.exp_avg_sq"),
        "{err}"
    );
    for key in ["step.2", "shape.0", "config", "optimizer"] {
        let (t, mut m) = parts();
        m.remove(key);
        let err = refused(&build(&t, &m));
        assert!(
            matches!(&err, CheckpointError::MissingKey(k) if k == key),
            "{key}: {err}"
        );
    }
    // parameters asked for but not in the file
    let (mut t, m) = parts();
    t.retain(|x| !x.0.starts_with("param."));
    let err = refused(&build(&t, &m));
    assert!(
        matches!(&err, CheckpointError::MissingKey(k) if k == "param.0"),
        "{err}"
    );
}

#[test]
fn nan_in_state_is_refused() {
    for bad in [f32::NAN, f32::INFINITY] {
        let (mut t, m) = parts();
        let i = t
            .iter()
            .position(|x| x.0 == "state.2.exp_avg_res_col")
            .unwrap();
        t[i].3[4..8].copy_from_slice(&bad.to_le_bytes());
        let err = refused(&build(&t, &m));
        assert!(
            matches!(&err, CheckpointError::NonFinite { key } if key == "state.2.exp_avg_res_col"),
            "{err}"
        );
    }
}

#[test]
fn negative_statistics_are_refused() {
    for key in [
        "state.2.exp_avg_sq_row",
        "state.2.exp_avg_res_col",
        "state.1.exp_avg_sq",
    ] {
        let (mut t, m) = parts();
        let i = t.iter().position(|x| x.0 == key).expect(key);
        t[i].3[..4].copy_from_slice(&(-0.5f32).to_le_bytes());
        let err = refused(&build(&t, &m));
        assert!(
            matches!(&err, CheckpointError::NegativeStatistic { key: k } if k == key),
            "{err}"
        );
    }
    // a negative momentum is just a momentum
    let (mut t, m) = parts();
    let i = t.iter().position(|x| x.0 == "state.2.exp_avg").unwrap();
    t[i].3[..4].copy_from_slice(&(-0.5f32).to_le_bytes());
    let mut opt = model();
    opt.load_safetensors(&build(&t, &m), None).unwrap();
}

#[test]
fn bad_metadata_is_refused() {
    let cases: [(&str, &str); 6] = [
        ("step.0", "six"),
        ("shape.1", "[5"),
        ("config", "{\"lr\": 0.01}"),
        ("groups", "[]"),
        ("name.1", "bias"),
        ("group.1", "0"),
    ];
    for (key, value) in cases {
        let (t, mut m) = parts();
        m.insert(key.into(), value.into());
        let err = refused(&build(&t, &m));
        assert!(
            matches!(err, CheckpointError::BadMetadata { .. }),
            "{key}: {err}"
        );
    }
    let (t, mut m) = parts();
    m.insert("optimizer".into(), "adamw".into());
    assert!(matches!(
        refused(&build(&t, &m)),
        CheckpointError::WrongOptimizer {
            expected: "came",
            ..
        }
    ));
    // a config that parses but is invalid
    let (t, mut m) = parts();
    let config = m["config"].replace("\"lr\":0.01", "\"lr\":-1.0");
    m.insert("config".into(), config.clone());
    let groups = m["groups"].replacen("\"lr\":0.01", "\"lr\":-1.0", 1);
    m.insert("groups".into(), groups);
    assert!(
        matches!(refused(&build(&t, &m)), CheckpointError::Config(_)),
        "{config}"
    );
}

#[test]
fn adamw_checkpoints_round_trip_and_are_not_came_checkpoints() {
    let mut opt = AdamW::<f32>::new(AdamWConfig::new(1e-3)).unwrap();
    opt.register("w", &[3, 4]).unwrap();
    let mut w = vec![1.0f32; 12];
    opt.step(&mut [(&mut w, &[0.5f32; 12])]).unwrap();
    let bytes = opt.to_safetensors(None).unwrap();
    let mut again = AdamW::<f32>::new(AdamWConfig::new(1e-3)).unwrap();
    again.register("w", &[3, 4]).unwrap();
    again.load_safetensors(&bytes, None).unwrap();
    assert_eq!(again.state(TensorId(0)), opt.state(TensorId(0)));
    let mut came = Came::<f32>::new(CameConfig::default()).unwrap();
    came.register("w", &[3, 4]).unwrap();
    assert!(matches!(
        came.load_safetensors(&bytes, None),
        Err(CheckpointError::WrongOptimizer { found, .. }) if found == "adamw"
    ));
}

#[test]
fn a_missing_file_is_an_io_error_that_names_the_file() {
    let mut opt = model();
    let path = temp("nope.safetensors");
    let err = opt.load(&path).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::File { path: p, error } if *p == path && matches!(**error, CheckpointError::Io(_))),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );
    let dir = Path::new("/nonexistent-dir/x/opt.safetensors");
    let err = opt.save(dir).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-dir/x/opt.safetensors"),
        "{err}"
    );
    assert!(
        matches!(&err, CheckpointError::File { error, .. } if matches!(**error, CheckpointError::Io(_)))
    );
}

#[test]
fn another_number_of_tensors_is_named_with_both_counts() {
    let (t, m) = parts();
    let bytes = build(&t, &m);
    for registered in [2, 4] {
        let mut opt = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
        opt.add_group(CameConfig::new(5e-3)).unwrap();
        for i in 0..registered {
            opt.register(&format!("t{i}"), &[2]).unwrap();
        }
        let err = opt.load_safetensors(&bytes, None).unwrap_err();
        assert!(
            matches!(err, CheckpointError::TensorCount { file: 3, optimizer } if optimizer == registered),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("the file holds 3 tensors, the optimizer has {registered} registered")
        );
    }
}

#[test]
fn parameter_buffers_that_do_not_match_name_the_tensor() {
    let opt = model();
    let p = params(1);
    let one: Vec<&[f32]> = vec![&p[0]];
    let err = opt.to_safetensors(Some(&one)).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::ParamCount {
                expected: 3,
                actual: 1
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "1 parameter buffers passed for 3 registered tensors"
    );
    let short = vec![0.0f32; 4];
    let views: Vec<&[f32]> = vec![&p[0], &short, &p[2]];
    let err = opt.to_safetensors(Some(&views)).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::ParamLength { index: 1, name, expected: 5, actual: 4 } if name == "b"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tensor 1 (\"b\"): its parameter buffer has 4 elements, the tensor 5"
    );
}

/// Every number of a checkpoint's config reads back bit for bit, in the build users get (the
/// crate's own serde_json features, none from the tests), and a re-saved file is the same.
#[test]
fn config_numbers_round_trip_bit_for_bit() {
    let awkward = [
        1e-30,
        5e-324,
        2.225_073_858_507_201_4e-308,
        0.1,
        1.0 / 3.0,
        -0.0,
        f64::MAX,
    ];
    for &x in &awkward {
        let config = CameConfig {
            lr: if x > 0.0 { x } else { 1e-3 },
            betas: (0.9, x.abs().min(0.5), 1.0 / 3.0),
            eps: (x.abs().min(1.0), 1e-30),
            clip_threshold: if x > 0.0 { x } else { 1.0 / 3.0 },
            weight_decay: if x.is_sign_negative() || x <= 1.0 {
                x
            } else {
                0.0
            },
            ..CameConfig::default()
        };
        config.validate().unwrap();
        let mut opt = Came::<f32>::new(config).unwrap();
        opt.register("w", &[2, 3]).unwrap();
        let bytes = opt.to_safetensors(None).unwrap();
        let mut other = Came::<f32>::new(CameConfig::default()).unwrap();
        other.register("w", &[2, 3]).unwrap();
        other.load_safetensors(&bytes, None).unwrap();
        let loaded = other.groups()[0];
        let bits = |c: &CameConfig| {
            [
                c.lr,
                c.betas.0,
                c.betas.1,
                c.betas.2,
                c.eps.0,
                c.eps.1,
                c.clip_threshold,
                c.weight_decay,
            ]
            .map(f64::to_bits)
        };
        assert_eq!(bits(&loaded), bits(&config), "{x:e}");
        assert_eq!(
            other.to_safetensors(None).unwrap(),
            bytes,
            "{x:e}: re-saved bytes differ"
        );
    }
}

#[test]
fn the_same_state_gives_the_same_bytes() {
    let train = || {
        let mut opt = model();
        let mut p = params(2);
        step(&mut opt, &mut p, 3);
        let views: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
        opt.to_safetensors(Some(&views)).unwrap()
    };
    let first = train();
    for _ in 0..5 {
        assert_eq!(train(), first);
    }
    // the header's keys are in order
    let n = usize::try_from(u64::from_le_bytes(first[..8].try_into().unwrap())).unwrap();
    let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
    assert!(
        header.starts_with("{\"__metadata__\":{\"config\""),
        "{header}"
    );
}

/// One flipped bit anywhere in a file is refused, with nothing changed; in a tensor's data the
/// error names the tensor.
#[test]
fn a_flipped_bit_anywhere_is_found() {
    let mut opt = model();
    let mut p = params(2);
    step(&mut opt, &mut p, 3);
    let views: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
    let bytes = opt.to_safetensors(Some(&views)).unwrap();
    let n = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().unwrap())).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let data_start = 8 + n;
    for at in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut spoiled = bytes.clone();
            spoiled[at] ^= bit;
            let err = refused(&spoiled);
            if at >= data_start {
                let tensor = file
                    .tensors()
                    .into_iter()
                    .find(|(_, v)| {
                        let start = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
                        (start..start + v.data().len()).contains(&at)
                    })
                    .map(|(k, _)| k)
                    .unwrap();
                assert!(
                    matches!(&err, CheckpointError::Corrupt { key } if *key == tensor),
                    "byte {at}: {err}"
                );
            }
        }
    }
}

#[test]
fn the_confidence_switch_round_trips() {
    let mut opt = Came::<f32>::new(CameConfig::new(1e-2).with_confidence(false)).unwrap();
    opt.register("w", &[4, 3]).unwrap();
    let bytes = opt.to_safetensors(None).unwrap();
    let mut other = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
    other.register("w", &[4, 3]).unwrap();
    other.load_safetensors(&bytes, None).unwrap();
    assert!(!other.groups()[0].confidence);
    // files with CAME's confidence term on say nothing about it (the reference's own format)
    let text = String::from_utf8_lossy(&model().to_safetensors(None).unwrap()).into_owned();
    assert!(!text.contains("confidence"));
    assert!(!text.contains("instability"));
}

#[test]
fn the_instability_start_round_trips() {
    let instability = Instability::BiasCorrected;
    let config = CameConfig::new(1e-2).with_instability(instability);
    let mut opt = Came::<f32>::new(config).unwrap();
    opt.register("w", &[4, 3]).unwrap();
    let bytes = opt.to_safetensors(None).unwrap();
    let mut other = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
    other.register("w", &[4, 3]).unwrap();
    other.load_safetensors(&bytes, None).unwrap();
    assert_eq!(other.groups()[0].instability, instability);
}

/// came-pytorch 0.1.3 after one step of parameters shaped [0, 8], [8, 0], [], [2, 0, 4], [0],
/// [3, 4] and [0, 3, 4] (lr 1e-4, gradients 0.1), converted by `scripts/convert_checkpoint.py
/// to-safetensors` (`scripts/field_cases.py` writes it again). The statistics over an empty
/// dim are NaN there (the mean of nothing); a tensor without elements never reads its state,
/// so they load (as zeros), and the run goes on.
#[test]
fn pytorch_checkpoints_with_empty_tensors_load_and_step() {
    let dims: [&[usize]; 7] = [&[0, 8], &[8, 0], &[], &[2, 0, 4], &[0], &[3, 4], &[0, 3, 4]];
    let mut opt = Came::<f32>::new(CameConfig::new(1e-4)).unwrap();
    for (i, d) in dims.iter().enumerate() {
        opt.register(&i.to_string(), d).unwrap();
    }
    let mut params: Vec<Vec<f32>> = dims.iter().map(|d| vec![0.0; d.iter().product()]).collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    opt.load_with_params(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/field/came_pytorch_empty_tensors.safetensors"),
        &mut views,
    )
    .unwrap();
    assert_eq!(params[2], [0.49999]);
    for i in 0..dims.len() {
        assert_eq!(opt.tensor(TensorId(i)).unwrap().step, 1, "tensor {i}");
    }
    // the empty tensors' state is all zeros; the others' as PyTorch left it
    for i in [0, 1, 3, 4, 6] {
        for piece in opt.state(TensorId(i)).unwrap() {
            assert!(piece.values.iter().all(|&v| v == 0.0), "{i} {}", piece.name);
        }
    }
    let w = opt.state(TensorId(5)).unwrap();
    assert!(
        w.iter()
            .all(|p| p.values.iter().all(|v| v.is_finite() && *v != 0.0))
    );
    // a step after loading: the empty tensors count it, the others move
    let grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.1; p.len()]).collect();
    let mut pairs = support::pairs(&mut params, &grads);
    opt.step(&mut pairs).unwrap();
    assert!(params[2][0] < 0.49999);
    for i in 0..dims.len() {
        assert_eq!(opt.tensor(TensorId(i)).unwrap().step, 2, "tensor {i}");
    }
    // and our own checkpoint of them round-trips (`scripts/field_cases.py --back FILE` loads
    // this file into came-pytorch and steps it there)
    let path = std::env::temp_dir().join("came-empty-tensors.safetensors");
    opt.save_with_params(&path, &params.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
    let mut again = Came::<f32>::new(CameConfig::new(1e-4)).unwrap();
    for (i, d) in dims.iter().enumerate() {
        again.register(&i.to_string(), d).unwrap();
    }
    again.load(&path).unwrap();
    assert_eq!(again.tensor(TensorId(3)).unwrap().step, 2);
}
