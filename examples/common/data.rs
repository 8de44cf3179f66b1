//! The plays (embedded: no files or network at run time), the character vocabulary and the
//! train/validation splits.

/// The pretraining plays.
pub const PRETRAIN: [(&str, &str); 5] = [
    ("Hamlet", include_str!("../../data/hamlet.txt")),
    ("Macbeth", include_str!("../../data/macbeth.txt")),
    (
        "Julius Caesar",
        include_str!("../../data/julius_caesar.txt"),
    ),
    ("Othello", include_str!("../../data/othello.txt")),
    (
        "Romeo and Juliet",
        include_str!("../../data/romeo_and_juliet.txt"),
    ),
];

/// The held-out play, for fine-tuning.
pub const FINETUNE: (&str, &str) = ("The Tempest", include_str!("../../data/tempest.txt"));

/// The characters the model knows (every character of the six plays; all ASCII).
#[derive(Clone, Debug)]
pub struct Vocab {
    chars: Vec<u8>,
    index: [u8; 256],
}

impl Vocab {
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut seen = [false; 256];
        for text in texts {
            for b in text.bytes() {
                seen[usize::from(b)] = true;
            }
        }
        let chars: Vec<u8> = (0..=255u8).filter(|&b| seen[usize::from(b)]).collect();
        let mut index = [0u8; 256];
        for (i, &c) in chars.iter().enumerate() {
            index[usize::from(c)] = u8::try_from(i).expect("fewer than 256 characters");
        }
        Self { chars, index }
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Token ids of a text (characters outside the vocabulary become the first one).
    pub fn encode(&self, text: &str) -> Vec<u8> {
        text.bytes().map(|b| self.index[usize::from(b)]).collect()
    }

    pub fn decode(&self, id: u8) -> char {
        char::from(self.chars[usize::from(id)])
    }
}

/// Token ids for training and for validation.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
}

impl Split {
    /// The last `val_fraction` of every text is validation, the rest training.
    pub fn new<'a>(
        vocab: &Vocab,
        texts: impl IntoIterator<Item = &'a str>,
        val_fraction: f64,
    ) -> Self {
        let mut split = Split {
            train: Vec::new(),
            val: Vec::new(),
        };
        for text in texts {
            let ids = vocab.encode(text);
            let cut = ids.len() - (ids.len() as f64 * val_fraction) as usize;
            split.train.extend_from_slice(&ids[..cut]);
            split.val.extend_from_slice(&ids[cut..]);
        }
        split
    }

    /// Validation loss (nats per character) of the unigram model of the training text (with
    /// add-one smoothing): the loss a model that ignores its context cannot beat.
    pub fn unigram_loss(&self, vocab_len: usize) -> f64 {
        let mut counts = vec![1.0f64; vocab_len];
        for &t in &self.train {
            counts[usize::from(t)] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        let nll: f64 = self
            .val
            .iter()
            .map(|&t| -(counts[usize::from(t)] / total).ln())
            .sum();
        nll / self.val.len() as f64
    }
}

/// The vocabulary and both phases' splits.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub vocab: Vocab,
    pub pretrain: Split,
    pub finetune: Split,
}

impl Corpus {
    pub fn load(val_fraction: f64) -> Self {
        let all = PRETRAIN.iter().map(|p| p.1).chain([FINETUNE.1]);
        let vocab = Vocab::from_texts(all);
        let pretrain = Split::new(&vocab, PRETRAIN.iter().map(|p| p.1), val_fraction);
        let finetune = Split::new(&vocab, [FINETUNE.1], val_fraction);
        Self {
            vocab,
            pretrain,
            finetune,
        }
    }
}
