//! Arbitrary bytes as a checkpoint: `Err` or a valid state, never a panic, and a failed load
//! leaves the optimizer and the parameters exactly as they were. The first byte picks the
//! registered tensors (those of the reference's resume files, or a three-tensor model), so
//! seeds made from real checkpoints reach deep into the loader.
#![no_main]

use came::optim::TensorId;
use came::{Came, CameConfig, Optimizer};
use libfuzzer_sys::fuzz_target;

const MODELS: [&[&[usize]]; 4] = [
    &[&[16, 12]],
    &[&[3, 4, 5]],
    &[&[20]],
    &[&[6, 5], &[5], &[2, 3, 4]],
];

fn fingerprint(opt: &Came<f32>) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..opt.len() {
        out.push(opt.tensor(TensorId(i)).unwrap().step);
        for piece in opt.state(TensorId(i)).unwrap() {
            out.extend(piece.values.iter().map(|x| u64::from(x.to_bits())));
        }
    }
    for g in opt.groups() {
        out.push(g.lr.to_bits());
        out.push(g.weight_decay.to_bits());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let model = MODELS[usize::from(pick) % MODELS.len()];
    let mut opt = Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
    for (i, dims) in model.iter().enumerate() {
        opt.register(&format!("{i}"), dims).unwrap();
    }
    // a state that is not all zeros, to see that a failed load keeps it
    let mut params: Vec<Vec<f32>> = model
        .iter()
        .map(|d| vec![0.5; d.iter().product()])
        .collect();
    let grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.25; p.len()]).collect();
    let mut pairs: Vec<(&mut [f32], &[f32])> = params
        .iter_mut()
        .zip(&grads)
        .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
        .collect();
    opt.step(&mut pairs).unwrap();
    let before = (fingerprint(&opt), params.clone());
    let with_params = pick & 0x80 != 0;
    let mut slots: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    let result = opt.load_safetensors(bytes, with_params.then_some(&mut slots[..]));
    match result {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(fingerprint(&opt), before.0, "{e}: optimizer changed");
            assert_eq!(params, before.1, "{e}: parameters changed");
        }
        Ok(()) => {
            // a loaded state is finite, and the optimizer keeps working
            for i in 0..opt.len() {
                for piece in opt.state(TensorId(i)).unwrap() {
                    assert!(piece.values.iter().all(|x| x.is_finite()));
                }
            }
            let mut pairs: Vec<(&mut [f32], &[f32])> = params
                .iter_mut()
                .zip(&grads)
                .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
                .collect();
            let _ = opt.step(&mut pairs);
        }
    }
});
