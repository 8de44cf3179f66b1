//! A small GPT (Radford et al. 2019) from candle-nn layers: token and position embeddings,
//! pre-norm blocks of causal multi-head self-attention and a GELU MLP, a final layer norm and
//! a linear head over the characters.

use candle::{D, DType, Device, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, Module, VarBuilder, VarMap};

use crate::rng::Rng;

/// The model's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub vocab: usize,
    pub context: usize,
    pub embed: usize,
    pub layers: usize,
    pub heads: usize,
}

/// candle-nn's `LayerNorm` holds the weights; its forward pass here is candle-nn's
/// differentiable `layer_norm_slow` (the fused `LayerNorm::forward` has no backward pass).
fn norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let bias = ln.bias().expect("layer norms are built with a bias");
    candle_nn::ops::layer_norm_slow(x, ln.weight(), bias, 1e-5)
}

struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc: Linear,
    out: Linear,
    heads: usize,
}

impl Block {
    fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let e = c.embed;
        Ok(Self {
            ln1: candle_nn::layer_norm(e, 1e-5, vb.pp("ln1"))?,
            qkv: candle_nn::linear(e, 3 * e, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(e, e, vb.pp("attn.proj"))?,
            ln2: candle_nn::layer_norm(e, 1e-5, vb.pp("ln2"))?,
            fc: candle_nn::linear(e, 4 * e, vb.pp("mlp.fc"))?,
            out: candle_nn::linear(4 * e, e, vb.pp("mlp.proj"))?,
            heads: c.heads,
        })
    }

    /// `x`: (batch, time, embed); `mask`: (time, time), 0 where a position may look, -inf
    /// where it may not (the future).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let hd = e / self.heads;
        let qkv = self.qkv.forward(&norm(&self.ln1, x)?)?;
        // (batch, time, 3, heads, head dim) -> (3, batch, heads, time, head dim)
        let qkv = qkv
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let weights = candle_nn::ops::softmax(&scores.broadcast_add(mask)?, D::Minus1)?;
        let y = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, e))?;
        let x = (x + self.proj.forward(&y)?)?;
        let h = self.fc.forward(&norm(&self.ln2, &x)?)?.gelu()?;
        x + self.out.forward(&h)?
    }
}

/// The model, its weights in a `VarMap`.
pub struct Gpt {
    tokens: Embedding,
    positions: Embedding,
    blocks: Vec<Block>,
    ln: LayerNorm,
    head: Linear,
    mask: Tensor,
    context: usize,
}

impl Gpt {
    /// Builds the model in `varmap` and sets every weight from `seed` (the same weights on
    /// every run and for every optimizer): GPT-2's initialisation, normal with standard
    /// deviation 0.02 (the residual projections 0.02 / sqrt(2 layers)), zero biases, unit
    /// layer-norm weights.
    pub fn new(c: &Config, varmap: &VarMap, seed: u64) -> Result<Self> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
        let model = Self {
            tokens: candle_nn::embedding(c.vocab, c.embed, vb.pp("wte"))?,
            positions: candle_nn::embedding(c.context, c.embed, vb.pp("wpe"))?,
            blocks: (0..c.layers)
                .map(|i| Block::new(c, vb.pp(format!("h.{i}"))))
                .collect::<Result<_>>()?,
            ln: candle_nn::layer_norm(c.embed, 1e-5, vb.pp("ln_f"))?,
            head: candle_nn::linear(c.embed, c.vocab, vb.pp("lm_head"))?,
            mask: causal_mask(c.context, &dev)?,
            context: c.context,
        };
        let mut rng = Rng::new(seed);
        let residual = 0.02 / ((2 * c.layers) as f32).sqrt();
        for (name, var) in came_candle::named_vars(varmap) {
            let n = var.elem_count();
            let values: Vec<f32> = if name.contains("ln") {
                let one = if name.ends_with("weight") { 1.0 } else { 0.0 };
                vec![one; n]
            } else if name.ends_with("bias") {
                vec![0.0; n]
            } else {
                let std = if name.ends_with("proj.weight") {
                    residual
                } else {
                    0.02
                };
                (0..n).map(|_| std * rng.normal()).collect()
            };
            var.set(&Tensor::from_vec(values, var.shape(), &dev)?)?;
        }
        Ok(model)
    }

    /// Logits (batch, time, vocab) of token ids (batch, time).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&pos)?)?;
        let mask = if t == self.context {
            self.mask.clone()
        } else {
            self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?
        };
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        self.head.forward(&norm(&self.ln, &x)?)
    }

    /// Mean cross-entropy (nats per character) of predicting `targets` from `ids`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        let (b, t, v) = logits.dims3()?;
        candle_nn::loss::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }
}

fn causal_mask(t: usize, dev: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(values, (t, t), dev)
}
