//! The classifier: a two-layer perceptron over the features of one accelerometer window,
//! `softmax(W2 relu(W1 x + b1) + b2)`, with its cross-entropy gradient, in fixed-size arrays.

use crate::sensor::{CLASSES, FEATURES as INPUTS};

/// Hidden units.
pub const HIDDEN: usize = 32;
/// Windows per step.
pub const BATCH: usize = 16;

/// `W1`, `HIDDEN x INPUTS`, factored by CAME.
pub const W1_DIMS: [usize; 2] = [HIDDEN, INPUTS];
/// `b1`, a vector.
pub const B1_DIMS: [usize; 1] = [HIDDEN];
/// `W2`, `CLASSES x HIDDEN`, factored by CAME.
pub const W2_DIMS: [usize; 2] = [CLASSES, HIDDEN];
/// `b2`, a vector.
pub const B2_DIMS: [usize; 1] = [CLASSES];

/// Parameters, or their gradients.
pub struct Weights {
    /// `W1`, row-major.
    pub w1: [f32; HIDDEN * INPUTS],
    /// `b1`.
    pub b1: [f32; HIDDEN],
    /// `W2`, row-major.
    pub w2: [f32; CLASSES * HIDDEN],
    /// `b2`.
    pub b2: [f32; CLASSES],
}

/// CAME's state of each parameter, sized by `came::state_len` at compile time.
pub struct States {
    /// Of `W1`.
    pub w1: [f32; came::state_len(&W1_DIMS)],
    /// Of `b1`.
    pub b1: [f32; came::state_len(&B1_DIMS)],
    /// Of `W2`.
    pub w2: [f32; came::state_len(&W2_DIMS)],
    /// Of `b2`.
    pub b2: [f32; came::state_len(&B2_DIMS)],
}

impl Weights {
    /// All zeros.
    pub const ZERO: Self = Self {
        w1: [0.0; HIDDEN * INPUTS],
        b1: [0.0; HIDDEN],
        w2: [0.0; CLASSES * HIDDEN],
        b2: [0.0; CLASSES],
    };

    /// Parameters, in all.
    pub const LEN: usize = HIDDEN * INPUTS + HIDDEN + CLASSES * HIDDEN + CLASSES;

    /// He-style uniform initialisation from `rng`.
    pub fn init(&mut self, rng: &mut crate::sensor::Lcg) {
        let r1 = libm::sqrtf(6.0 / INPUTS as f32);
        self.w1.iter_mut().for_each(|w| *w = rng.between(-r1, r1));
        let r2 = libm::sqrtf(6.0 / HIDDEN as f32);
        self.w2.iter_mut().for_each(|w| *w = rng.between(-r2, r2));
        self.b1 = [0.0; HIDDEN];
        self.b2 = [0.0; CLASSES];
    }

    /// Scores of the classes for window `x`, with the hidden activations in `h`.
    fn forward(&self, x: &[f32; INPUTS], h: &mut [f32; HIDDEN]) -> [f32; CLASSES] {
        for ((h, row), b) in h.iter_mut().zip(self.w1.chunks_exact(INPUTS)).zip(&self.b1) {
            let z = b + row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>();
            *h = z.max(0.0);
        }
        let mut scores = self.b2;
        for (s, row) in scores.iter_mut().zip(self.w2.chunks_exact(HIDDEN)) {
            *s += row.iter().zip(h.iter()).map(|(w, h)| w * h).sum::<f32>();
        }
        scores
    }

    /// The most likely class of window `x`.
    pub fn predict(&self, x: &[f32; INPUTS]) -> usize {
        let scores = self.forward(x, &mut [0.0; HIDDEN]);
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        best
    }

    /// Mean cross-entropy of the batch (nats), its gradient written to `grad`.
    pub fn loss_and_grad(
        &self,
        xs: &[[f32; INPUTS]; BATCH],
        labels: &[usize; BATCH],
        grad: &mut Weights,
    ) -> f32 {
        *grad = Weights::ZERO;
        let mut loss = 0.0;
        let scale = 1.0 / BATCH as f32;
        for (x, &label) in xs.iter().zip(labels) {
            let mut h = [0.0; HIDDEN];
            let scores = self.forward(x, &mut h);
            let (p, nll) = softmax_nll(&scores, label);
            loss += nll * scale;
            // d loss / d scores = p - onehot
            let mut dh = [0.0; HIDDEN];
            for (c, &pc) in p.iter().enumerate() {
                let d = (pc - if c == label { 1.0 } else { 0.0 }) * scale;
                grad.b2[c] += d;
                let rows = grad.w2[c * HIDDEN..(c + 1) * HIDDEN].iter_mut();
                for ((g, &hj), (dhj, &w)) in
                    rows.zip(&h).zip(dh.iter_mut().zip(&self.w2[c * HIDDEN..]))
                {
                    *g += d * hj;
                    *dhj += d * w;
                }
            }
            for (j, (&dhj, &hj)) in dh.iter().zip(&h).enumerate() {
                if hj <= 0.0 {
                    continue;
                }
                grad.b1[j] += dhj;
                for (g, &xi) in grad.w1[j * INPUTS..(j + 1) * INPUTS].iter_mut().zip(x) {
                    *g += dhj * xi;
                }
            }
        }
        loss
    }
}

/// Class probabilities and the negative log-likelihood of `label`.
fn softmax_nll(scores: &[f32; CLASSES], label: usize) -> ([f32; CLASSES], f32) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut p = [0.0; CLASSES];
    let mut total = 0.0;
    for (p, &s) in p.iter_mut().zip(scores) {
        *p = libm::expf(s - max);
        total += *p;
    }
    p.iter_mut().for_each(|p| *p /= total);
    (p, libm::logf(total) - (scores[label] - max))
}

impl States {
    /// All zeros: a fresh state.
    pub const ZERO: Self = Self {
        w1: [0.0; came::state_len(&W1_DIMS)],
        b1: [0.0; came::state_len(&B1_DIMS)],
        w2: [0.0; came::state_len(&W2_DIMS)],
        b2: [0.0; came::state_len(&B2_DIMS)],
    };
}
