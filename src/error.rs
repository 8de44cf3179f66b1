//! The crate's error type.

use core::fmt;

/// Which caller-supplied buffer a [`Error::LengthMismatch`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// The parameter slice.
    Param,
    /// The gradient slice.
    Grad,
    /// The optimizer-state slice.
    State,
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Buffer::Param => "parameter",
            Buffer::Grad => "gradient",
            Buffer::State => "state",
        })
    }
}

/// Everything that can go wrong in a step, with what it means.
///
/// A step that returns an error has not changed the parameters, and has not changed the state
/// except where a variant says otherwise ([`Error::NonFiniteState`]).
///
/// Equality compares the offending values bit for bit, so an error holding a NaN equals itself.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The learning rate is not finite or not positive, or it (or its product with the weight
    /// decay) overflows the tensor's float type (1e300 in `f32`).
    InvalidLearningRate(f64),
    /// A beta is outside `[0, 1)` or not finite. `index` is its position in `betas` (0 for β1).
    InvalidBeta {
        /// Position in the config's `betas` (0-based).
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// β1 is 0. CAME's confidence statistics then see `u - m = 0` on every step and collapse to
    /// ε2, so every step is multiplied by about `1 / sqrt(ε2 (1 - β3))`, roughly 1e10 with the
    /// default ε2 = 1e-16 and β3 = 0.9999: training diverges at once. Use β1 > 0 (0.9 is the
    /// reference default).
    ZeroBeta1,
    /// An epsilon is negative or not finite. `index` is its position in `eps` (0 for ε1). Also
    /// ε2 (index 1) when, with the confidence term, `(1 - β3) ε2` is zero in the tensor's float
    /// type (ε2 = 0, or 1e-320 in `f32`): a zero gradient would then give the confidence
    /// factors `0 / 0` and NaN parameters (the reference writes them).
    InvalidEpsilon {
        /// Position in the config's `eps` (0-based).
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The clip threshold is not finite or not positive (in the tensor's float type: 1e-50
    /// is zero in `f32`).
    InvalidClipThreshold(f64),
    /// The weight decay is negative or not finite.
    InvalidWeightDecay(f64),
    /// The shape's element count (or the state length derived from it) does not fit in `usize`.
    ShapeOverflow,
    /// A buffer's length does not match the shape: `expected` elements were needed.
    LengthMismatch {
        /// Which buffer is wrong.
        buffer: Buffer,
        /// The length the shape requires.
        expected: usize,
        /// The length that was passed.
        actual: usize,
    },
    /// The gradient holds a NaN or an infinity at flat position `index`. Nothing was changed;
    /// the usual remedy is to skip the step (mixed-precision trainers do) or lower the loss scale.
    NonFiniteGradient {
        /// Flat, row-major position of the first non-finite element.
        index: usize,
    },
    /// The optimizer state holds a NaN or an infinity, or a negative second-moment statistic
    /// (they are averages of squares): it was corrupted before this step, for example by
    /// writing into the buffer by hand. Parameters were not changed. A corrupt factored
    /// statistic is found before anything is written; a corrupt momentum `exp_avg` of a
    /// factored tensor only shows once the momentum and the squared-gradient statistics have
    /// been updated, so restore the state from a checkpoint or reset it. A negative element of
    /// a vector's `exp_avg_sq` is reported when it makes the update non-finite (it is not
    /// scanned for otherwise).
    NonFiniteState,
    /// Gradient and state are finite but the step would produce a NaN or an infinity: the square
    /// of a gradient element overflows the float type (`|g| > 1.8e19` in `f32`), or, with
    /// ε1 = 0, a zero gradient meets a zero statistic (0 / 0). The reference implementation
    /// produces NaN here; this crate refuses the step and changes nothing. Scale the loss (and
    /// so the gradients) down, run the tensor in `f64`, or keep ε1 > 0.
    NonFiniteUpdate,
    /// An 8-bit momentum block size that is not a multiple of 32 from 32 to
    /// [`crate::momentum::MAX_BLOCK`] ([`crate::Shape::with_momentum`]).
    InvalidMomentum(crate::Momentum),
    /// A tensor whose momentum is packed (bf16 or 8-bit, [`crate::Momentum`]) was stepped with
    /// `f64` arithmetic: packed momentum is laid out in 4-byte words, for `f32` compute only.
    PackedMomentumNeedsF32,
    /// After the step the parameter at flat position `index` (the first such) is infinite: the
    /// update took it beyond the largest finite value of its 16-bit type (65504 for `f16`,
    /// 3.39e38 for bf16), or it was infinite before. Checked for 16-bit parameters. Unlike
    /// every other error this one is found after the step was taken: the state and the other
    /// parameters hold the step, and the overflowing parameters hold an infinity, as the
    /// reference writes them. Lower the learning rate, scale the weights down, or keep them in
    /// bf16 or `f32`.
    ParameterOverflow {
        /// Flat, row-major position of the first infinite parameter.
        index: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::InvalidLearningRate(lr) => {
                write!(f, "learning rate must be finite and > 0, got {lr}")
            }
            Error::InvalidBeta { index, value } => {
                write!(
                    f,
                    "beta{} must be finite and in [0, 1), got {value}",
                    index + 1
                )
            }
            Error::ZeroBeta1 => f.write_str(
                "beta1 = 0 makes CAME's confidence statistics collapse to eps2 and scales every \
                 step by about 1/sqrt(eps2 * (1 - beta3)); use beta1 > 0",
            ),
            Error::InvalidEpsilon { index, value } => {
                write!(f, "eps{} must be finite and >= 0, got {value}", index + 1)
            }
            Error::InvalidClipThreshold(c) => {
                write!(f, "clip threshold must be finite and > 0, got {c}")
            }
            Error::InvalidWeightDecay(wd) => {
                write!(f, "weight decay must be finite and >= 0, got {wd}")
            }
            Error::ShapeOverflow => f.write_str("shape size overflows usize"),
            Error::LengthMismatch {
                buffer,
                expected,
                actual,
            } => write!(
                f,
                "{buffer} buffer has {actual} elements, the shape needs {expected}"
            ),
            Error::NonFiniteGradient { index } => {
                write!(f, "gradient is not finite at flat index {index}")
            }
            Error::NonFiniteState => f.write_str(
                "optimizer state is corrupt: a NaN, an infinity or a negative statistic",
            ),
            Error::NonFiniteUpdate => f.write_str(
                "the update is not finite although gradient and state are \
                 (gradient squared overflows the float type, or eps1 = 0 with a zero gradient)",
            ),
            Error::InvalidMomentum(m) => write!(
                f,
                "momentum format {m:?}: an 8-bit block must be a multiple of 32 from 32 to {}",
                crate::momentum::MAX_BLOCK
            ),
            Error::PackedMomentumNeedsF32 => f.write_str(
                "bf16 and 8-bit momentum are laid out for f32 arithmetic; step this tensor in f32",
            ),
            Error::ParameterOverflow { index } => write!(
                f,
                "the step took the parameter at flat index {index} beyond its 16-bit type's range \
                 (it now holds an infinity; the rest of the step was taken)"
            ),
        }
    }
}

impl Error {
    /// The variant and its payload as plain integers (floats by their bits), for equality.
    fn key(&self) -> (u8, u64, usize, usize) {
        match *self {
            Error::InvalidLearningRate(v) => (0, v.to_bits(), 0, 0),
            Error::InvalidBeta { index, value } => (1, value.to_bits(), index, 0),
            Error::ZeroBeta1 => (2, 0, 0, 0),
            Error::InvalidEpsilon { index, value } => (3, value.to_bits(), index, 0),
            Error::InvalidClipThreshold(v) => (4, v.to_bits(), 0, 0),
            Error::InvalidWeightDecay(v) => (5, v.to_bits(), 0, 0),
            Error::ShapeOverflow => (6, 0, 0, 0),
            Error::LengthMismatch {
                buffer,
                expected,
                actual,
            } => (7, buffer as u64, expected, actual),
            Error::NonFiniteGradient { index } => (8, 0, index, 0),
            Error::NonFiniteState => (9, 0, 0, 0),
            Error::NonFiniteUpdate => (10, 0, 0, 0),
            Error::InvalidMomentum(m) => (11, momentum_key(m), 0, 0),
            Error::PackedMomentumNeedsF32 => (12, 0, 0, 0),
            Error::ParameterOverflow { index } => (13, 0, index, 0),
        }
    }
}

/// A momentum format as one number, for [`Error`]'s equality.
fn momentum_key(m: crate::Momentum) -> u64 {
    match m {
        crate::Momentum::Int8 { code, block } => (1 + code as u64) << 16 | u64::from(block),
        crate::Momentum::Bf16 => 3 << 16,
        _ => 0,
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Error {}

impl core::error::Error for Error {}

/// An error of a borrowed multi-tensor step ([`crate::step_all`], [`crate::adamw::step_all`]),
/// with the position of the tensor it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorError {
    /// Position of the tensor in the slice that was stepped.
    pub tensor: usize,
    /// What went wrong with it.
    pub error: Error,
}

impl core::fmt::Display for TensorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "tensor {}: {}", self.tensor, self.error)
    }
}

impl core::error::Error for TensorError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}
