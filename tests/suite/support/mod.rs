pub mod golden;
pub mod reference;
#[cfg(feature = "std")]
pub mod shard;

/// `(parameters, gradient)` slice pairs, as the owned optimizer's `step` takes them.
#[allow(dead_code)]
pub fn pairs<'a>(
    params: &'a mut [Vec<f32>],
    grads: &'a [Vec<f32>],
) -> Vec<(&'a mut [f32], &'a [f32])> {
    params
        .iter_mut()
        .zip(grads)
        .map(|(p, g)| (p.as_mut_slice(), g.as_slice()))
        .collect()
}
