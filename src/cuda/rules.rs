//! What the GPU path accepts, and the CPU's rules in the device's terms: the configs and
//! momentum formats the kernels run, each tensor's stochastic-rounding key for a step (as the
//! CPU optimizer derives it), and what a tensor's device status means as the CPU's [`Error`].

use std::vec;
use std::vec::Vec;

use super::CudaError;
use super::abi::{STATUS_GRAD, STATUS_OVERFLOW, STATUS_STATE};
use crate::config::Coefficients;
use crate::optim::OptimizerError;
use crate::optim::registry::Registry;
use crate::{CameConfig, Error, Momentum, Rounding};

/// A config the kernels can run.
pub(super) fn check_config(config: &CameConfig) -> Result<(), CudaError> {
    config
        .validate()
        .map_err(|e| CudaError::Optimizer(OptimizerError::Config(e)))?;
    if !config.confidence {
        return Err(CudaError::Unsupported(
            "confidence = false (the Adafactor baseline) runs on the CPU only",
        ));
    }
    if config.instability != crate::Instability::Reference {
        return Err(CudaError::Unsupported(
            "a corrected start of the instability statistics runs on the CPU only",
        ));
    }
    Ok(())
}

/// The stochastic-rounding key of every device tensor for the coming step, as the CPU optimizer
/// derives it (`Coefficients::for_tensor`): from its group's seed, its position in registration
/// order (tensors without elements count) and its step count before the step; 0 where its
/// group rounds to nearest (the kernels do not read it there).
pub(super) fn rounding_keys(
    registry: &Registry<CameConfig>,
    device: &[Option<usize>],
    n_device: usize,
) -> Vec<u64> {
    let mut keys = vec![0; n_device];
    for (i, (t, d)) in registry.tensors().iter().zip(device).enumerate() {
        let Some(d) = *d else { continue };
        let config = &registry.groups()[t.group];
        let k = Coefficients::<f32>::new(config, t.step).for_tensor(config, t.step, i);
        keys[d] = k.rounding_key.unwrap_or(0);
    }
    keys
}

/// What a device status (`STATUS_*` bits, the skip bit cleared) means for the tensor, with the
/// first bad flat index the kernels found (`i64::MAX`: none): `None` when it took its step.
pub(super) fn status_error(status: i32, first_bad: i64) -> Option<Error> {
    let index = usize::try_from(first_bad).unwrap_or(usize::MAX);
    if status == 0 {
        None
    } else if status & STATUS_GRAD != 0 && first_bad != i64::MAX {
        Some(Error::NonFiniteGradient { index })
    } else if status & STATUS_STATE != 0 {
        Some(Error::NonFiniteState)
    } else if status & STATUS_OVERFLOW != 0 {
        Some(Error::ParameterOverflow { index })
    } else {
        Some(Error::NonFiniteUpdate)
    }
}

/// Whether a group rounds 16-bit parameters stochastically.
pub(super) fn stochastic(config: &CameConfig) -> bool {
    matches!(config.rounding, Rounding::Stochastic { .. })
}

/// The one momentum format the kernels run: the compute type's ([`Momentum::Full`]).
pub(super) fn check_momentum(momentum: Momentum) -> Result<(), CudaError> {
    if momentum == Momentum::Full {
        Ok(())
    } else {
        Err(CudaError::Unsupported(
            "bf16 or 8-bit momentum (Momentum::Bf16, Momentum::Int8) runs on the CPU only: the \
             GPU keeps exp_avg in the compute type (Momentum::Full)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::cuda::plan::Plan;
    use crate::element::rounding_key;
    use crate::optim::GroupId;

    /// The keys the kernels get are the CPU optimizer's: registration position (empty tensors
    /// count), step count before the step, the group's seed; 0 for groups rounding to nearest.
    #[test]
    fn rounding_keys_are_the_cpu_optimizers() {
        let config = CameConfig::new(1e-3).with_rounding(Rounding::Stochastic { seed: 5 });
        let mut r = Registry::new(config).unwrap();
        let nearest = r.add_group(CameConfig::new(1e-3)).unwrap();
        r.register(GroupId(0), "w", &[4, 3]).unwrap();
        r.register(GroupId(0), "empty", &[0, 5]).unwrap();
        r.register(nearest, "b", &[3]).unwrap();
        r.register(GroupId(0), "v", &[7]).unwrap();
        r.tensors_mut()[0].step = 2;
        r.tensors_mut()[3].step = 9;
        let mut plan = Plan::default();
        let device: Vec<_> = r
            .tensors()
            .iter()
            .map(|t| plan.add(&t.shape, t.group))
            .collect();
        assert_eq!(device, [Some(0), None, Some(1), Some(2)]);
        let keys = rounding_keys(&r, &device, 3);
        assert_eq!(keys, [rounding_key(5, 0, 2), 0, rounding_key(5, 3, 9)]);
        assert!(stochastic(&r.groups()[0]) && !stochastic(&r.groups()[1]));
    }

    #[test]
    fn device_statuses_become_the_cpus_errors() {
        let none = i64::MAX;
        assert_eq!(status_error(0, none), None);
        assert_eq!(
            status_error(STATUS_GRAD, 12),
            Some(Error::NonFiniteGradient { index: 12 })
        );
        // a finite gradient whose square overflows: no element to name
        assert_eq!(
            status_error(STATUS_GRAD, none),
            Some(Error::NonFiniteUpdate)
        );
        assert_eq!(
            status_error(STATUS_GRAD | STATUS_STATE, none),
            Some(Error::NonFiniteState)
        );
        assert_eq!(
            status_error(STATUS_STATE, none),
            Some(Error::NonFiniteState)
        );
        assert_eq!(
            status_error(STATUS_OVERFLOW, 3),
            Some(Error::ParameterOverflow { index: 3 })
        );
    }

    #[test]
    fn packed_momentum_is_refused_by_name() {
        assert!(check_momentum(Momentum::Full).is_ok());
        for m in [Momentum::Bf16, Momentum::INT8] {
            let Err(CudaError::Unsupported(why)) = check_momentum(m) else {
                panic!("{m:?} accepted");
            };
            assert!(why.contains("Momentum::Bf16") && why.contains("Momentum::Int8"));
        }
    }
}
