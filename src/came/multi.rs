//! Stepping several borrowed tensors at once, all or nothing.

use super::{check_tensor_lens, finish, prepare};
use crate::Element;
use crate::exec::{Executor, Serial, all_or_nothing};
use crate::state::check_len;
use crate::{CameConfig, CameState, Shape, TensorError};

/// One tensor of a multi-tensor step: its shape and borrowed parameter, gradient and state.
#[derive(Debug)]
pub struct TensorStep<'a, 's, P: Element, G = P> {
    /// The tensor's shape.
    pub shape: Shape,
    /// The parameters, `shape.numel()` elements.
    pub param: &'a mut [P],
    /// The gradient, `shape.numel()` elements.
    pub grad: &'a [G],
    /// The tensor's state.
    pub state: &'a mut CameState<'s, P::Compute>,
}

/// Steps every tensor with one config, without allocating, all or nothing.
///
/// The config and every buffer length are checked first. Then the first half of every
/// tensor's step runs (the squared-gradient statistics and the clip, written only to each
/// state's workspace): a NaN or infinite gradient, an overflow or a corrupt statistic in any
/// tensor stops the step there, with no parameter and no state changed, like the loss-scale
/// guard of a mixed-precision trainer. This costs nothing extra: those sweeps are part of the
/// step anyway. Only then are the tensors updated.
///
/// ```
/// use came::{CameConfig, CameState, Shape, TensorStep};
/// let shapes = [Shape::new(&[4, 3])?, Shape::new(&[3])?];
/// let (mut w, mut b) = ([0.5f32; 12], [0.1f32; 3]);
/// let (mut sw, mut sb) = ([0.0f32; came::state_len(&[4, 3])], [0.0f32; came::state_len(&[3])]);
/// let (mut state_w, mut state_b) = (CameState::new(&mut sw), CameState::new(&mut sb));
/// let (gw, gb) = ([0.1f32; 12], [0.2f32; 3]);
/// let mut tensors: heapless::Vec<TensorStep<'_, '_, f32>, 8> = heapless::Vec::new();
/// tensors.push(TensorStep { shape: shapes[0], param: &mut w, grad: &gw, state: &mut state_w }).unwrap();
/// tensors.push(TensorStep { shape: shapes[1], param: &mut b, grad: &gb, state: &mut state_b }).unwrap();
/// came::step_all(&CameConfig::new(1e-2), &mut tensors)?;
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
///
/// # Errors
/// The error of the first failing tensor, with its position; nothing was changed, except for a
/// [`crate::Error::NonFiniteState`] found in the second half (a momentum corrupted before the step,
/// see there).
pub fn step_all<P: Element, G: Element<Compute = P::Compute>>(
    config: &CameConfig,
    tensors: &mut [TensorStep<'_, '_, P, G>],
) -> Result<(), TensorError> {
    step_all_on(&Serial, config, tensors)
}

/// [`step_all`] with tensors and lanes run by `exec`.
pub(crate) fn step_all_on<P: Element, G: Element<Compute = P::Compute>, E: Executor>(
    exec: &E,
    config: &CameConfig,
    tensors: &mut [TensorStep<'_, '_, P, G>],
) -> Result<(), TensorError> {
    validate_all(config, tensors)?;
    let failed = all_or_nothing(
        exec,
        tensors,
        true,
        |_, t| {
            let steps = t.state.step_count();
            let state = t.state.as_mut_slice();
            let clip = prepare(exec, config, &t.shape, t.param, t.grad, state, steps)?;
            t.state.set_pending(Some(clip));
            Ok(())
        },
        |i, t| {
            let steps = t.state.step_count();
            let clip = if let Some(clip) = t.state.take_pending() {
                clip
            } else {
                let state = t.state.as_mut_slice();
                prepare(exec, config, &t.shape, t.param, t.grad, state, steps)?
            };
            let state = t.state.as_mut_slice();
            finish(
                exec,
                (config, i),
                &t.shape,
                clip,
                t.param,
                t.grad,
                state,
                steps,
            )?;
            t.state.advance();
            Ok(())
        },
        |t| t.state.set_pending(None),
    );
    failed.map_or(Ok(()), |(tensor, error)| Err(TensorError { tensor, error }))
}

/// Checks the config and every tensor's buffer lengths.
fn validate_all<P: Element, G>(
    config: &CameConfig,
    tensors: &[TensorStep<'_, '_, P, G>],
) -> Result<(), TensorError> {
    config
        .validate()
        .map_err(|error| TensorError { tensor: 0, error })?;
    for (i, t) in tensors.iter().enumerate() {
        check_tensor_lens(t.shape.numel(), t.param.len(), t.grad.len())
            .and_then(|()| check_len(&t.shape, t.state.as_slice().len()))
            .map_err(|error| TensorError { tensor: i, error })?;
    }
    Ok(())
}
