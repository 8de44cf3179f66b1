//! Several tensors and steps through the no-alloc multi-tensor step: never panics; an error
//! changes nothing in any tensor (all or nothing); the pool's parallel step gives the same bits
//! as the serial one.
#![no_main]

use std::sync::OnceLock;

use came::{CameState, Error, Pool, Shape, TensorStep};
use came_fuzz::{Input, bits, moderate, moderate_state, pieces};
use libfuzzer_sys::fuzz_target;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(3).expect("threads"))
}

/// Up to four tensors: the input's shape, then its trailing dims, then a vector and a scalar.
fn shapes(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![dims.to_vec()];
    if dims.len() > 1 {
        out.push(dims[1..].to_vec());
    }
    out.push(vec![dims.iter().sum::<usize>() % 70]);
    out.push(vec![]);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(mut input) = Input::decode(data) else {
        return;
    };
    let all: Vec<Vec<usize>> = shapes(&input.dims);
    let shapes: Vec<Shape> = all.iter().map(|d| Shape::new(d).expect("small")).collect();
    let config = input.header.config.came();
    let mut params: Vec<Vec<f32>> = shapes.iter().map(|s| input.take(s.numel())).collect();
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.state_len()]).collect();
    if !input.fresh_state() {
        for b in &mut bufs {
            let v = input.take(b.len());
            b.copy_from_slice(&v);
        }
    }
    let mut twins = (params.clone(), bufs.clone());
    for _ in 0..input.steps() {
        let grads: Vec<Vec<f32>> = shapes.iter().map(|s| input.take(s.numel())).collect();
        let serial = step(&shapes, &config, &mut params, &mut bufs, &grads, None);
        let parallel = step(
            &shapes,
            &config,
            &mut twins.0,
            &mut twins.1,
            &grads,
            Some(pool()),
        );
        assert_eq!(
            serial, parallel,
            "pool and serial steps disagree on the outcome"
        );
        for (a, b) in params.iter().zip(&twins.0) {
            assert_eq!(bits(a), bits(b), "pool and serial steps disagree");
        }
        if serial.is_err() {
            return;
        }
    }
});

/// One step of every tensor; checks the all-or-nothing rule and finiteness.
fn step(
    shapes: &[Shape],
    config: &came::CameConfig,
    params: &mut [Vec<f32>],
    bufs: &mut [Vec<f32>],
    grads: &[Vec<f32>],
    pool: Option<&Pool>,
) -> Result<(), came::TensorError> {
    let mut states: Vec<CameState<'_, f32>> = bufs
        .iter_mut()
        .map(|b| CameState::from_parts(b, 0))
        .collect();
    let healthy = input_healthy(shapes, config, params, grads, &states);
    let before: Vec<(Vec<u8>, Vec<u32>)> = params
        .iter()
        .zip(shapes.iter().zip(&states))
        .map(|(p, (s, st))| (bits(p), pieces(s, st)))
        .collect();
    let mut tensors: heapless::Vec<TensorStep<'_, '_, f32>, 4> = heapless::Vec::new();
    for ((shape, p), (g, st)) in shapes
        .iter()
        .zip(params.iter_mut())
        .zip(grads.iter().zip(&mut states))
    {
        let t = TensorStep {
            shape: *shape,
            param: p,
            grad: g,
            state: st,
        };
        assert!(tensors.push(t).is_ok());
    }
    let result = match pool {
        Some(pool) => pool.step_all(config, &mut tensors),
        None => came::step_all(config, &mut tensors),
    };
    drop(tensors);
    match &result {
        Ok(()) if healthy => {
            assert!(
                params.iter().flatten().all(|x| x.is_finite()),
                "non-finite parameters"
            );
        }
        Ok(()) => {}
        Err(e) if e.error != Error::NonFiniteState => {
            for ((p, (s, st)), b) in params.iter().zip(shapes.iter().zip(&states)).zip(&before) {
                assert_eq!((bits(p), pieces(s, st)), *b, "{e}: a tensor changed");
            }
        }
        Err(_) => {}
    }
    result
}

fn input_healthy(
    shapes: &[Shape],
    config: &came::CameConfig,
    params: &[Vec<f32>],
    grads: &[Vec<f32>],
    states: &[CameState<'_, f32>],
) -> bool {
    came_fuzz::moderate_config(config)
        && params.iter().all(|p| moderate(p))
        && grads.iter().all(|g| moderate(g))
        && shapes
            .iter()
            .zip(states)
            .all(|(s, st)| moderate_state(s, st))
}
