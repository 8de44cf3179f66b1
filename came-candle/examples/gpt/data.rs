//! The main job's Shakespeare plays (the workspace's `data/`), as character ids: five plays to
//! train on, the last tenth of each held out for validation.

use std::path::Path;

use candle::{Device, Result, Tensor};

use crate::rng::Rng;

/// The plays the main job pretrains on; `tempest.txt` only adds to the vocabulary.
const TRAIN: [&str; 5] = [
    "hamlet.txt",
    "macbeth.txt",
    "julius_caesar.txt",
    "othello.txt",
    "romeo_and_juliet.txt",
];
const VOCAB_ONLY: &str = "tempest.txt";

pub struct Corpus {
    pub vocab: usize,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        let texts = TRAIN
            .iter()
            .map(|n| read(n))
            .collect::<std::io::Result<Vec<_>>>()?;
        let extra = read(VOCAB_ONLY)?;
        let mut seen = [false; 256];
        for b in texts.iter().chain([&extra]).flat_map(|t| t.bytes()) {
            seen[usize::from(b)] = true;
        }
        let mut index = [0u32; 256];
        let mut vocab = 0;
        for (b, &s) in seen.iter().enumerate() {
            if s {
                index[b] = vocab;
                vocab += 1;
            }
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for text in &texts {
            let ids: Vec<u32> = text.bytes().map(|b| index[usize::from(b)]).collect();
            let cut = ids.len() - ids.len() / 10;
            train.extend_from_slice(&ids[..cut]);
            val.extend_from_slice(&ids[cut..]);
        }
        Ok(Self {
            vocab: vocab as usize,
            train,
            val,
        })
    }
}

/// `batch` windows of `context` ids from random places of `ids`, and the ids that follow each.
pub fn batch(ids: &[u32], batch: usize, context: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let starts: Vec<usize> = (0..batch)
        .map(|_| rng.below(ids.len() - context - 1))
        .collect();
    windows(ids, &starts, context)
}

/// The windows of `ids` starting at `starts`, and their targets.
pub fn windows(ids: &[u32], starts: &[usize], context: usize) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(starts.len() * context);
    let mut y = Vec::with_capacity(starts.len() * context);
    for &s in starts {
        x.extend_from_slice(&ids[s..s + context]);
        y.extend_from_slice(&ids[s + 1..s + context + 1]);
    }
    let shape = (starts.len(), context);
    Ok((
        Tensor::from_vec(x, shape, &Device::Cpu)?,
        Tensor::from_vec(y, shape, &Device::Cpu)?,
    ))
}
