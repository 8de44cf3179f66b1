//! Arbitrary bytes as a checkpoint: `Err` or a valid state, never a panic, and a failed load
//! leaves the optimizer and the parameters exactly as they were. The first byte picks the
//! registered tensors (bits 0-1: those of the reference's resume files, or a three-tensor
//! model), the parameters' type (bits 2-3: `f32`, `bf16`, `f16`, `f64`) and whether parameters
//! are loaded too (bit 7), so seeds made from real checkpoints reach deep into the loader.
//! Every optimizer, the one stepped before the load (once per model and type) and any state
//! loaded from the input, also saves with its parameters and loads back bit for bit.
#![no_main]

use std::sync::Once;

use came::optim::TensorId;
use came::{Came, CameConfig, Element, Float, Optimizer};
use came_fuzz::bits;
use half::{bf16, f16};
use libfuzzer_sys::fuzz_target;

const MODELS: [&[&[usize]]; 4] = [
    &[&[16, 12]],
    &[&[3, 4, 5]],
    &[&[20]],
    &[&[6, 5], &[5], &[2, 3, 4]],
];

fn fingerprint<P: Element>(opt: &Came<P>) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..opt.len() {
        out.push(opt.tensor(TensorId(i)).unwrap().step);
        for piece in opt.state(TensorId(i)).unwrap() {
            out.extend(piece.values.iter().map(|x| x.as_f64().to_bits()));
        }
    }
    for g in opt.groups() {
        out.push(g.lr.to_bits());
        out.push(g.weight_decay.to_bits());
    }
    out
}

fn optimizer<P: Element>(model: &[&[usize]]) -> Came<P> {
    let mut opt = Came::<P>::new(CameConfig::new(1e-3)).unwrap();
    for (i, dims) in model.iter().enumerate() {
        opt.register(&format!("{i}"), dims).unwrap();
    }
    opt
}

/// `value` in every element of each of `model`'s tensors.
fn filled<P: Element>(model: &[&[usize]], value: f64) -> Vec<Vec<P>> {
    let value = P::from_compute(<P::Compute as Float>::from_f64(value));
    model
        .iter()
        .map(|d| vec![value; d.iter().product()])
        .collect()
}

fn step<P: Element>(opt: &mut Came<P>, params: &mut [Vec<P>], grads: &[Vec<P>]) {
    let mut pairs: Vec<(&mut [P], &[P])> = params
        .iter_mut()
        .zip(grads)
        .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
        .collect();
    let _ = opt.step(&mut pairs);
}

/// `opt` and `params` saved and loaded into a fresh optimizer of the same tensors come back
/// bit for bit.
fn round_trip<P: Element>(model: &[&[usize]], opt: &Came<P>, params: &[Vec<P>]) {
    let slices: Vec<&[P]> = params.iter().map(Vec::as_slice).collect();
    let bytes = opt.to_safetensors(Some(&slices)).expect("a state saves");
    let mut twin = optimizer::<P>(model);
    let mut loaded = filled::<P>(model, 0.0);
    let mut slots: Vec<&mut [P]> = loaded.iter_mut().map(Vec::as_mut_slice).collect();
    if let Err(e) = twin.load_safetensors(&bytes, Some(&mut slots[..])) {
        panic!("a saved state does not load: {e}");
    }
    assert_eq!(fingerprint(&twin), fingerprint(opt), "the state changed");
    assert_eq!(
        loaded.iter().map(|p| bits(p)).collect::<Vec<_>>(),
        params.iter().map(|p| bits(p)).collect::<Vec<_>>(),
        "the parameters changed"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let model = MODELS[usize::from(pick) % MODELS.len()];
    let with_params = pick & 0x80 != 0;
    // the stepped optimizer is the same for every input of one model and type: its own round
    // trip is checked once
    static FIRST: [Once; 16] = [const { Once::new() }; 16];
    let first = &FIRST[usize::from(pick & 0x0f)];
    match (pick >> 2) & 3 {
        0 => load::<f32>(model, bytes, with_params, first),
        1 => load::<bf16>(model, bytes, with_params, first),
        2 => load::<f16>(model, bytes, with_params, first),
        _ => load::<f64>(model, bytes, with_params, first),
    }
});

fn load<P: Element>(model: &[&[usize]], bytes: &[u8], with_params: bool, first: &Once) {
    let mut opt = optimizer::<P>(model);
    // a state that is not all zeros, to see that a failed load keeps it
    let mut params = filled::<P>(model, 0.5);
    let grads = filled::<P>(model, 0.25);
    step(&mut opt, &mut params, &grads);
    first.call_once(|| round_trip(model, &opt, &params));
    let before = (fingerprint(&opt), params.clone());
    let mut slots: Vec<&mut [P]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    let result = opt.load_safetensors(bytes, with_params.then_some(&mut slots[..]));
    match result {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(fingerprint(&opt), before.0, "{e}: optimizer changed");
            assert_eq!(params, before.1, "{e}: parameters changed");
        }
        Ok(()) => {
            // a loaded state is finite, saves and loads back, and the optimizer keeps working
            for i in 0..opt.len() {
                for piece in opt.state(TensorId(i)).unwrap() {
                    assert!(piece.values.iter().all(|x| x.as_f64().is_finite()));
                }
            }
            round_trip(model, &opt, &params);
            step(&mut opt, &mut params, &grads);
        }
    }
}
