//! Checkpoints: the core crate's safetensors files, both ways.

use crate::common;

use std::path::PathBuf;

use came::{Optimizer as _, TensorId};
use came_candle::{Came, Error, ParamGroup, ParamsCame};
use candle::{Tensor, Var, WithDType};
use candle_nn::Optimizer as _;
use common::{Rng, bits, grads, tensor, values, var};
use half::bf16;

const W: [usize; 2] = [24, 40];
const B: [usize; 1] = [40];

fn path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "came-candle-{name}-{}.safetensors",
        std::process::id()
    ))
}

fn params(lr: f64) -> ParamsCame {
    ParamsCame {
        lr,
        weight_decay: 0.01,
        ..Default::default()
    }
}

/// `w` with weight decay, `b` in a second group without.
fn optimizer(w: &Var, b: &Var, lr: f64) -> Came {
    Came::from_groups([
        ParamGroup::named([("w", w.clone())], params(lr)),
        ParamGroup::named(
            [("b", b.clone())],
            ParamsCame {
                weight_decay: 0.0,
                ..params(lr)
            },
        ),
    ])
    .unwrap()
}

/// Gradients for `w` and `b` from `rng`.
fn gradients<T: WithDType>(rng: &mut Rng) -> (Tensor, Tensor) {
    (
        tensor(&rng.values::<T>(W.iter().product(), 0.2), &W),
        tensor(&rng.values::<T>(B[0], 0.2), &B),
    )
}

fn step<T: WithDType>(opt: &mut Came, w: &Var, b: &Var, rng: &mut Rng) {
    let (gw, gb) = gradients::<T>(rng);
    opt.step(&grads(&[(w, &gw), (b, &gb)])).unwrap();
}

/// Saved with the vars' values after three steps and loaded into fresh vars, a run goes on
/// bit for bit as if it had not stopped.
fn resumes<T: WithDType>(name: &str) {
    let mut rng = Rng::new(6);
    let w = var(&rng.values::<T>(W.iter().product(), 0.5), &W);
    let b = var(&rng.values::<T>(B[0], 0.5), &B);
    let mut opt = optimizer(&w, &b, 2e-3);
    for _ in 0..3 {
        step::<T>(&mut opt, &w, &b, &mut rng);
    }
    let file = path(name);
    opt.save_with_vars(&file).unwrap();

    let w2 = var(&vec![T::from_f64(0.0); W.iter().product()], &W);
    let b2 = var(&vec![T::from_f64(0.0); B[0]], &B);
    let mut resumed = optimizer(&w2, &b2, 9e-3);
    resumed.load_with_vars(&file).unwrap();
    assert_eq!(
        resumed.learning_rate(),
        2e-3,
        "the file's groups replace the optimizer's"
    );
    assert_eq!(bits(&values::<T>(&w2)), bits(&values::<T>(&w)));
    assert_eq!(bits(&values::<T>(&b2)), bits(&values::<T>(&b)));
    assert_eq!(
        (resumed.step_count(0), resumed.step_count(1)),
        (Some(3), Some(3))
    );
    for _ in 0..3 {
        let (gw, gb) = gradients::<T>(&mut rng);
        opt.step(&grads(&[(&w, &gw), (&b, &gb)])).unwrap();
        resumed.step(&grads(&[(&w2, &gw), (&b2, &gb)])).unwrap();
        assert_eq!(bits(&values::<T>(&w2)), bits(&values::<T>(&w)));
        assert_eq!(bits(&values::<T>(&b2)), bits(&values::<T>(&b)));
    }
    std::fs::remove_file(file).unwrap();
}

#[test]
fn an_f32_run_resumes_bit_for_bit() {
    resumes::<f32>("f32");
}

#[test]
fn a_bf16_run_resumes_bit_for_bit() {
    resumes::<bf16>("bf16");
}

#[test]
fn an_f64_run_resumes_bit_for_bit() {
    resumes::<f64>("f64");
}

/// A file saved here is the core crate's: `came::Came` loads it and steps on exactly as the
/// adapter does; a file the core saved loads here.
#[test]
fn the_core_crate_reads_and_writes_the_same_files() {
    let mut rng = Rng::new(12);
    let (wv, bv) = (
        rng.values::<f32>(W.iter().product(), 0.5),
        rng.values::<f32>(B[0], 0.5),
    );
    let (w, b) = (var(&wv, &W), var(&bv, &B));
    let mut opt = optimizer(&w, &b, 3e-3);
    for _ in 0..2 {
        step::<f32>(&mut opt, &w, &b, &mut rng);
    }
    let file = path("to-core");
    opt.save(&file).unwrap();

    let mut core = came::Came::<f32>::new(params(1e-3).config()).unwrap();
    let no_decay = core
        .add_group(
            ParamsCame {
                weight_decay: 0.0,
                ..params(1e-3)
            }
            .config(),
        )
        .unwrap();
    core.register("w", &W).unwrap();
    core.register_in(no_decay, "b", &B).unwrap();
    core.load(&file).unwrap();
    assert_eq!(core.learning_rate(), 3e-3);
    assert_eq!(core.step_count(TensorId(0)), Some(2));
    let (mut cw, mut cb) = (values::<f32>(&w), values::<f32>(&b));
    for _ in 0..2 {
        let (gw, gb) = gradients::<f32>(&mut rng);
        opt.step(&grads(&[(&w, &gw), (&b, &gb)])).unwrap();
        let (hw, hb) = (
            gw.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            gb.to_vec1::<f32>().unwrap(),
        );
        core.step(&mut [(&mut cw, &hw), (&mut cb, &hb)]).unwrap();
        assert_eq!(bits(&values::<f32>(&w)), bits(&cw));
        assert_eq!(bits(&values::<f32>(&b)), bits(&cb));
    }

    // and back: the core's file, with its parameters, into fresh vars
    let back = path("from-core");
    core.save_with_params(&back, &[&cw, &cb]).unwrap();
    let (w3, b3) = (var(&[0f32; 960], &W), var(&[0f32; 40], &B));
    let mut again = optimizer(&w3, &b3, 1e-3);
    again.load_with_vars(&back).unwrap();
    assert_eq!(bits(&values::<f32>(&w3)), bits(&cw));
    assert_eq!(again.step_count(1), Some(4));
    std::fs::remove_file(file).unwrap();
    std::fs::remove_file(back).unwrap();
}

/// A file that does not match (other dims, another var's name) is refused, and neither the
/// optimizer nor a var changes.
#[test]
fn a_mismatching_file_changes_nothing() {
    let mut rng = Rng::new(14);
    let (w, b) = (
        var(&rng.values::<f32>(960, 0.5), &W),
        var(&rng.values::<f32>(40, 0.5), &B),
    );
    let mut opt = optimizer(&w, &b, 1e-3);
    step::<f32>(&mut opt, &w, &b, &mut rng);
    let file = path("mismatch");
    opt.save_with_vars(&file).unwrap();

    let other_w = var(&[1f32; 40 * 24], &[40, 24]);
    let other_b = var(&[1f32; 40], &B);
    let mut other = optimizer(&other_w, &other_b, 1e-3);
    match other.load_with_vars(&file) {
        Err(Error::Checkpoint(e)) => assert!(e.to_string().contains("\"w\""), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(values::<f32>(&other_w), vec![1.0; 960]);
    assert_eq!(other.step_count(0), Some(0));

    let renamed = Came::from_groups([
        ParamGroup::named([("weight", w.clone())], params(1e-3)),
        ParamGroup::named([("b", b.clone())], params(1e-3)),
    ]);
    let mut renamed = renamed.unwrap();
    assert!(matches!(renamed.load(&file), Err(Error::Checkpoint(_))));
    assert_eq!(renamed.step_count(0), Some(0));

    let missing = path("missing");
    assert!(matches!(opt.load(&missing), Err(Error::Checkpoint(_))));
    assert_eq!(opt.step_count(0), Some(1));
    std::fs::remove_file(file).unwrap();
}

/// Loading a file forgets a learning rate that `set_learning_rate` refused: the file's is set.
#[test]
fn loading_replaces_a_refused_learning_rate() {
    let (w, b) = (var(&[0.5f32; 960], &W), var(&[0.5f32; 40], &B));
    let mut opt = optimizer(&w, &b, 4e-3);
    let file = path("lr");
    opt.save(&file).unwrap();
    opt.set_learning_rate(-1.0);
    opt.load(&file).unwrap();
    assert_eq!(opt.learning_rate(), 4e-3);
    step::<f32>(&mut opt, &w, &b, &mut Rng::new(1));
    assert_eq!(opt.step_count(0), Some(1));
    std::fs::remove_file(file).unwrap();
}

/// An optimizer without vars saves and loads its groups.
#[test]
fn an_empty_optimizer_round_trips() {
    let opt = Came::new(vec![], params(7e-4)).unwrap();
    let file = path("empty");
    opt.save(&file).unwrap();
    let mut other = Came::new(vec![], params(1e-3)).unwrap();
    other.load(&file).unwrap();
    assert_eq!(other.learning_rate(), 7e-4);
    std::fs::remove_file(file).unwrap();
}
