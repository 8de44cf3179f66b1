//! A Bengio-style character-level MLP language model (Bengio et al. 2003) over flat `f32`
//! buffers: the embeddings of the last `context` characters, concatenated, go through one
//! `tanh` hidden layer to a softmax over the vocabulary. Forward and backward are written by
//! hand; every buffer is allocated once, before training. (Parameters stored in another type
//! are widened to `f32` by the trainer before they get here.)
//!
//! Tensors, in the order of the parameter buffer (weights are `inputs x outputs`):
//!
//! | name | dims | CAME state |
//! |---|---|---|
//! | `embedding` | vocab x embed | factored |
//! | `hidden.weight` | context·embed x hidden | factored |
//! | `hidden.bias` | hidden | vector |
//! | `output.weight` | hidden x vocab | factored |
//! | `output.bias` | vocab | vector |

use came::Element;

use super::linalg::{matmul_acc, matmul_nt, matmul_tn_acc};
use super::rng::Rng;

/// Tensors in a model.
pub const TENSORS: usize = 5;

/// The model's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub vocab: usize,
    pub context: usize,
    pub embed: usize,
    pub hidden: usize,
}

impl Config {
    fn inputs(&self) -> usize {
        self.context * self.embed
    }

    /// Names and dims of the tensors.
    pub fn tensors(&self) -> [(&'static str, Vec<usize>); TENSORS] {
        [
            ("embedding", vec![self.vocab, self.embed]),
            ("hidden.weight", vec![self.inputs(), self.hidden]),
            ("hidden.bias", vec![self.hidden]),
            ("output.weight", vec![self.hidden, self.vocab]),
            ("output.bias", vec![self.vocab]),
        ]
    }

    /// Elements of every tensor.
    pub fn lens(&self) -> [usize; TENSORS] {
        self.tensors().map(|(_, dims)| dims.iter().product())
    }

    pub fn numel(&self) -> usize {
        self.lens().iter().sum()
    }
}

/// Cuts a parameter (or gradient) buffer, of any element type, into the five tensors.
pub fn split_mut<'a, T>(config: &Config, mut buf: &'a mut [T]) -> [&'a mut [T]; TENSORS] {
    config.lens().map(|len| {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(len);
        buf = rest;
        head
    })
}

/// [`split_mut`] for shared buffers.
pub fn split<'a, T>(config: &Config, mut buf: &'a [T]) -> [&'a [T]; TENSORS] {
    config.lens().map(|len| {
        let (head, rest) = buf.split_at(len);
        buf = rest;
        head
    })
}

/// Fresh parameters stored in `P` (drawn in `f32`, then rounded to nearest in a 16-bit `P`):
/// embeddings N(0, 1), hidden weights scaled for `tanh` (gain 5/3 over sqrt(fan-in)), a small
/// output layer (so the first loss is about ln(vocab)), zero biases.
pub fn init<P: Element<Compute = f32>>(config: &Config, seed: u64) -> Vec<P> {
    let mut rng = Rng::new(seed);
    let mut params = vec![0.0f32; config.numel()];
    let [emb, w1, _, w2, _] = split_mut(config, &mut params);
    emb.iter_mut().for_each(|x| *x = rng.normal());
    let scale = 5.0 / 3.0 / (config.inputs() as f32).sqrt();
    w1.iter_mut().for_each(|x| *x = rng.normal() * scale);
    w2.iter_mut().for_each(|x| *x = rng.normal() * 0.01);
    params.into_iter().map(P::from_compute).collect()
}

/// Activations of up to `capacity` examples: one per thread, allocated once.
#[derive(Clone, Debug)]
pub struct Workspace {
    capacity: usize,
    x: Vec<f32>,
    h: Vec<f32>,
    z: Vec<f32>,
    dh: Vec<f32>,
    dx: Vec<f32>,
}

impl Workspace {
    pub fn new(config: &Config, capacity: usize) -> Self {
        Self {
            capacity,
            x: vec![0.0; capacity * config.inputs()],
            h: vec![0.0; capacity * config.hidden],
            z: vec![0.0; capacity * config.vocab],
            dh: vec![0.0; capacity * config.hidden],
            dx: vec![0.0; capacity * config.inputs()],
        }
    }
}

/// The summed cross-entropy (nats) of predicting `data[t]` from the `context` characters before
/// it, for every `t` in `positions` (each `>= context`). With `grad`, also adds `scale` times
/// the gradient of that sum to `grad`.
pub fn loss(
    config: &Config,
    params: &[f32],
    data: &[u8],
    positions: &[usize],
    ws: &mut Workspace,
    grad: Option<(&mut [f32], f32)>,
) -> f64 {
    pulp::Arch::new().dispatch(Pass {
        config,
        params,
        data,
        positions,
        ws,
        grad,
    })
}

/// [`loss`], run under the best instruction set of this CPU.
struct Pass<'a> {
    config: &'a Config,
    params: &'a [f32],
    data: &'a [u8],
    positions: &'a [usize],
    ws: &'a mut Workspace,
    grad: Option<(&'a mut [f32], f32)>,
}

impl pulp::WithSimd for Pass<'_> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f64 {
        let Pass {
            config,
            params,
            data,
            positions,
            ws,
            mut grad,
        } = self;
        let mut total = 0.0;
        for chunk in positions.chunks(ws.capacity) {
            total += forward(config, params, data, chunk, ws);
            if let Some((grad, scale)) = &mut grad {
                backward(simd, config, params, data, chunk, ws, (grad, *scale));
            }
        }
        total
    }
}

/// Fills the activations and turns the logits `z` into probabilities; returns the summed loss.
#[inline(always)]
fn forward(
    config: &Config,
    params: &[f32],
    data: &[u8],
    positions: &[usize],
    ws: &mut Workspace,
) -> f64 {
    let Config {
        vocab,
        context,
        embed,
        hidden,
    } = *config;
    let inputs = config.inputs();
    let b = positions.len();
    let [emb, w1, b1, w2, b2] = split(config, params);
    let (x, h, z) = (
        &mut ws.x[..b * inputs],
        &mut ws.h[..b * hidden],
        &mut ws.z[..b * vocab],
    );
    for (&t, x) in positions.iter().zip(x.chunks_exact_mut(inputs)) {
        for (&token, x) in data[t - context..t].iter().zip(x.chunks_exact_mut(embed)) {
            let row = usize::from(token) * embed;
            x.copy_from_slice(&emb[row..row + embed]);
        }
    }
    for h in h.chunks_exact_mut(hidden) {
        h.copy_from_slice(b1);
    }
    matmul_acc(x, w1, h, inputs, hidden);
    h.iter_mut().for_each(|v| *v = v.tanh());
    for z in z.chunks_exact_mut(vocab) {
        z.copy_from_slice(b2);
    }
    matmul_acc(h, w2, z, hidden, vocab);
    let mut total = 0.0f64;
    for (&t, z) in positions.iter().zip(z.chunks_exact_mut(vocab)) {
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let target = z[usize::from(data[t])];
        let mut sum = 0.0f32;
        for v in z.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        total += f64::from(sum.ln() + max - target);
        let inv = 1.0 / sum;
        z.iter_mut().for_each(|v| *v *= inv);
    }
    total
}

/// Adds `scale` times the gradient of the summed loss of the examples [`forward`] just saw
/// to `grad`.
#[inline(always)]
fn backward<S: pulp::Simd>(
    simd: S,
    config: &Config,
    params: &[f32],
    data: &[u8],
    positions: &[usize],
    ws: &mut Workspace,
    (grad, scale): (&mut [f32], f32),
) {
    let Config {
        vocab,
        context,
        embed,
        hidden,
    } = *config;
    let inputs = config.inputs();
    let b = positions.len();
    let [_, w1, _, w2, _] = split(config, params);
    let [g_emb, g_w1, g_b1, g_w2, g_b2] = split_mut(config, grad);
    let x = &ws.x[..b * inputs];
    let h = &ws.h[..b * hidden];
    let dz = &mut ws.z[..b * vocab];
    let dh = &mut ws.dh[..b * hidden];
    let dx = &mut ws.dx[..b * inputs];
    // softmax and cross-entropy: dz = scale (p - onehot)
    for (&t, dz) in positions.iter().zip(dz.chunks_exact_mut(vocab)) {
        dz.iter_mut().for_each(|v| *v *= scale);
        dz[usize::from(data[t])] -= scale;
        g_b2.iter_mut().zip(&*dz).for_each(|(g, &d)| *g += d);
    }
    matmul_tn_acc(h, dz, g_w2, hidden, vocab);
    matmul_nt(simd, dz, w2, dh, hidden, vocab);
    // through tanh: dh (1 - h^2)
    for (d, &h) in dh.iter_mut().zip(h) {
        *d *= 1.0 - h * h;
    }
    for dh in dh.chunks_exact(hidden) {
        g_b1.iter_mut().zip(dh).for_each(|(g, &d)| *g += d);
    }
    matmul_tn_acc(x, dh, g_w1, inputs, hidden);
    matmul_nt(simd, dh, w1, dx, inputs, hidden);
    for (&t, dx) in positions.iter().zip(dx.chunks_exact(inputs)) {
        for (&token, dx) in data[t - context..t].iter().zip(dx.chunks_exact(embed)) {
            let row = usize::from(token) * embed;
            g_emb[row..row + embed]
                .iter_mut()
                .zip(dx)
                .for_each(|(g, &d)| *g += d);
        }
    }
}

/// Samples `len` characters after `prompt` (token ids, at least `context` of them) at the given
/// temperature.
pub fn sample(
    config: &Config,
    params: &[f32],
    prompt: &[u8],
    len: usize,
    temperature: f32,
    rng: &mut Rng,
) -> Vec<u8> {
    let mut ws = Workspace::new(config, 1);
    let mut text = prompt.to_vec();
    for _ in 0..len {
        // forward() reads data[t - context..t] and the target data[t]: give it a dummy target
        let t = text.len();
        text.push(0);
        forward(config, params, &text, &[t], &mut ws);
        let z = &ws.z[..config.vocab];
        // p^(1/T), renormalised
        let weights: Vec<f32> = z.iter().map(|&p| p.powf(1.0 / temperature)).collect();
        let total: f32 = weights.iter().sum();
        let mut r = rng.uniform() * total;
        let mut pick = weights.len() - 1;
        for (i, &w) in weights.iter().enumerate() {
            if r < w {
                pick = i;
                break;
            }
            r -= w;
        }
        text[t] = u8::try_from(pick).expect("vocabulary under 256");
    }
    text.split_off(prompt.len())
}
