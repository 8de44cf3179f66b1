//! Borrowing candle's buffers: a gradient's elements for reading, a var's for writing.
//!
//! candle gives `&mut` access to a tensor's buffer only inside an in-place op, for the duration
//! of the op's call. A step of many vars that must be all or nothing (the non-finite guard
//! checks every var before it changes any) needs every var's buffer at once, so the vars are
//! locked one inside the in-place op of the one before ([`with_vars_mut`]): the innermost call
//! holds all of them and runs the step there. Nothing is copied; each level of the nesting
//! costs a frame of the stack, and a step of many vars runs on a thread with a stack sized for
//! them. (A public two-phase step of the core crate over one tensor at a time, its `prepare`
//! and `finish`, would let the vars be locked one after the other instead.)

use std::cell::RefCell;

use candle::backend::BackendStorage as _;
use candle::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use half::{bf16, f16};

/// A float type a var can be stepped in: the candle dtypes that are [`came::Element`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    F32,
    F64,
    Bf16,
    F16,
}

impl Kind {
    /// The kind of `dtype`, if CAME steps it.
    pub(crate) fn of(dtype: DType) -> Option<Kind> {
        match dtype {
            DType::F32 => Some(Kind::F32),
            DType::F64 => Some(Kind::F64),
            DType::BF16 => Some(Kind::Bf16),
            DType::F16 => Some(Kind::F16),
            _ => None,
        }
    }

    pub(crate) fn dtype(self) -> DType {
        match self {
            Kind::F32 => DType::F32,
            Kind::F64 => DType::F64,
            Kind::Bf16 => DType::BF16,
            Kind::F16 => DType::F16,
        }
    }
}

/// A borrowed run of elements of one of the four types.
#[derive(Debug)]
pub(crate) enum Elements<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// A mutably borrowed run of elements of one of the four types.
#[derive(Debug)]
pub(crate) enum ElementsMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

/// The elements of a contiguous layout, `None` for a strided one.
fn range(layout: &Layout) -> Option<core::ops::Range<usize>> {
    let (start, end) = layout.contiguous_offsets()?;
    Some(start..end)
}

/// A CPU buffer's elements under `layout`, which must be contiguous.
pub(crate) fn elements<'a>(storage: &'a Storage, layout: &Layout) -> candle::Result<Elements<'a>> {
    let Storage::Cpu(cpu) = storage else {
        candle::bail!("came-candle: a tensor to read is not in CPU memory");
    };
    let Some(r) = range(layout) else {
        candle::bail!("came-candle: a tensor to read is strided");
    };
    let out = match cpu {
        CpuStorage::F32(v) => v.get(r).map(Elements::F32),
        CpuStorage::F64(v) => v.get(r).map(Elements::F64),
        CpuStorage::BF16(v) => v.get(r).map(Elements::Bf16),
        CpuStorage::F16(v) => v.get(r).map(Elements::F16),
        other => candle::bail!("came-candle: a tensor to read is {:?}", other.dtype()),
    };
    out.ok_or_else(|| candle::Error::msg("came-candle: a layout outside its buffer"))
}

/// [`elements`], for writing.
fn elements_mut<'a>(cpu: &'a mut CpuStorage, layout: &Layout) -> candle::Result<ElementsMut<'a>> {
    let Some(r) = range(layout) else {
        candle::bail!("came-candle: a var is strided");
    };
    let out = match cpu {
        CpuStorage::F32(v) => v.get_mut(r).map(ElementsMut::F32),
        CpuStorage::F64(v) => v.get_mut(r).map(ElementsMut::F64),
        CpuStorage::BF16(v) => v.get_mut(r).map(ElementsMut::Bf16),
        CpuStorage::F16(v) => v.get_mut(r).map(ElementsMut::F16),
        other => candle::bail!("came-candle: a var is {:?}", other.dtype()),
    };
    out.ok_or_else(|| candle::Error::msg("came-candle: a layout outside its buffer"))
}

/// The address of a tensor's buffer: equal for two tensors exactly when they share it.
pub(crate) fn buffer_key(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    std::ptr::from_ref::<Storage>(&storage).addr()
}

/// [`buffer_key`] of a buffer that is locked already.
pub(crate) fn locked_key(storage: &Storage) -> usize {
    std::ptr::from_ref::<Storage>(storage).addr()
}

/// Every var of a step, each with its gradient where it has one, borrowed at once: the pairs
/// of each element type in the order the vars were given.
#[derive(Debug, Default)]
pub(crate) struct Held<'a> {
    pub f32: Vec<(&'a mut [f32], Option<&'a [f32]>)>,
    pub f64: Vec<(&'a mut [f64], Option<&'a [f64]>)>,
    pub bf16: Vec<(&'a mut [bf16], Option<&'a [bf16]>)>,
    pub f16: Vec<(&'a mut [f16], Option<&'a [f16]>)>,
}

impl<'a> Held<'a> {
    /// Adds a var's elements and its gradient's; their types must agree.
    fn push(&mut self, param: ElementsMut<'a>, grad: Option<&Elements<'a>>) -> candle::Result<()> {
        match param {
            ElementsMut::F32(p) => push(&mut self.f32, p, grad),
            ElementsMut::F64(p) => push(&mut self.f64, p, grad),
            ElementsMut::Bf16(p) => push(&mut self.bf16, p, grad),
            ElementsMut::F16(p) => push(&mut self.f16, p, grad),
        }
    }
}

/// Adds `(param, grad)` to `pairs`.
fn push<'a, T: Typed>(
    pairs: &mut Vec<(&'a mut [T], Option<&'a [T]>)>,
    param: &'a mut [T],
    grad: Option<&Elements<'a>>,
) -> candle::Result<()> {
    let grad = match grad {
        Some(g) => Some(T::of(g).ok_or_else(|| {
            candle::Error::msg("came-candle: a gradient's dtype differs from its var's")
        })?),
        None => None,
    };
    pairs.push((param, grad));
    Ok(())
}

/// The four element types, each with its place in [`Elements`] and [`Held`].
pub(crate) trait Typed: came::Element {
    /// The elements, if they are of this type.
    fn of<'a>(e: &Elements<'a>) -> Option<&'a [Self]>;
    /// The held pairs of this type.
    fn held<'h, 'a>(h: &'h mut Held<'a>) -> &'h mut Vec<(&'a mut [Self], Option<&'a [Self]>)>;
}

macro_rules! typed {
    ($t:ty, $variant:ident, $field:ident) => {
        impl Typed for $t {
            fn of<'a>(e: &Elements<'a>) -> Option<&'a [Self]> {
                match e {
                    Elements::$variant(x) => Some(x),
                    _ => None,
                }
            }

            fn held<'h, 'a>(
                h: &'h mut Held<'a>,
            ) -> &'h mut Vec<(&'a mut [Self], Option<&'a [Self]>)> {
                &mut h.$field
            }
        }
    };
}

typed!(f32, F32, f32);
typed!(f64, F64, f64);
typed!(bf16, Bf16, bf16);
typed!(f16, F16, f16);

/// One var to lock, with its gradient's elements (read-locked by the caller) if it has one.
pub(crate) struct Target<'a> {
    pub var: &'a Var,
    pub grad: Option<Elements<'a>>,
}

/// What the innermost level runs, once, with every var held.
type Body<'b> = dyn for<'x> FnMut(&mut Held<'x>) + Send + 'b;

/// Levels of nesting run on the caller's stack; a step of more vars runs on a thread of its own
/// with a stack sized for them (a level takes under 1 KiB of stack in an optimised build and
/// about 4.5 KiB in a debug build).
const LEVELS_ON_THE_CALLERS_STACK: usize = 64;
/// The stack of that thread: a base for the step itself and a share per level, generous for
/// debug builds (reserved address space; only the pages used are backed by memory).
const STACK_BASE: usize = 1 << 20;
const STACK_PER_LEVEL: usize = 16 << 10;

/// Locks every target's var for writing, one inside the in-place op of the one before, and
/// runs `body` once with all of them held (in the order of `targets`).
///
/// The caller guarantees that no two vars share a buffer and that no gradient shares a var's
/// (a lock taken twice would never be granted).
///
/// # Errors
/// candle's errors taking a lock (a var with repeated elements), a var that is not a
/// contiguous CPU buffer of one of the four float types, and the system's refusal to start the
/// thread of a step of many vars.
pub(crate) fn with_vars_mut(targets: &[Target<'_>], body: &mut Body<'_>) -> candle::Result<()> {
    if targets.len() <= LEVELS_ON_THE_CALLERS_STACK {
        return descend(targets, Held::default(), &RefCell::new(body));
    }
    let stack = STACK_BASE + targets.len().saturating_mul(STACK_PER_LEVEL);
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("came-step".into())
            .stack_size(stack)
            .spawn_scoped(scope, || {
                descend(targets, Held::default(), &RefCell::new(body))
            })?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn descend<'s>(
    targets: &[Target<'s>],
    held: Held<'s>,
    body: &RefCell<&mut Body<'_>>,
) -> candle::Result<()> {
    match targets.split_first() {
        None => {
            let mut held = held;
            (body.borrow_mut())(&mut held);
            Ok(())
        }
        Some((first, rest)) => {
            let level = Level {
                held: RefCell::new(Some(held)),
                target: first,
                rest,
                body,
            };
            first.var.inplace_op1(&level)
        }
    }
}

/// The in-place op of one level: adds its var to what the levels above hold and goes down.
struct Level<'s, 't, 'b, 'f> {
    held: RefCell<Option<Held<'s>>>,
    target: &'t Target<'s>,
    rest: &'t [Target<'s>],
    body: &'t RefCell<&'b mut Body<'f>>,
}

impl InplaceOp1 for Level<'_, '_, '_, '_> {
    fn name(&self) -> &'static str {
        "came-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle::Result<()> {
        let Some(held) = self.held.borrow_mut().take() else {
            candle::bail!("came-candle: an in-place op ran twice");
        };
        // the levels above hold their vars for longer than this one: their borrows shorten to
        // this var's
        let mut held: Held<'_> = held;
        held.push(elements_mut(storage, layout)?, self.target.grad.as_ref())?;
        descend(self.rest, held, self.body)
    }
}
