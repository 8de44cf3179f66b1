//! The groups and tensors an owned optimizer knows, the same for the CPU and the GPU: names,
//! dims, groups, step counts, and the checks that keep them consistent.

use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use super::error::{Mismatch, OptimizerError};
use super::rule::Rule;
use super::{GroupId, TensorId, TensorInfo};
use crate::came::check_tensor_lens;
use crate::{Error, Momentum, Shape, StateLayout};

/// One registered tensor.
#[derive(Clone, Debug)]
pub(crate) struct Registered {
    pub name: String,
    pub dims: Vec<usize>,
    pub shape: Shape,
    /// Where the rule keeps each piece of its state.
    pub state: StateLayout,
    pub group: usize,
    /// Steps it has taken.
    pub step: u64,
}

/// Parameter groups (their configs) and registered tensors, in registration order.
#[derive(Clone, Debug)]
pub(crate) struct Registry<C> {
    groups: Vec<C>,
    /// Each group's base learning rate, which [`Registry::scale_lr`] multiplies (PyTorch's
    /// `initial_lr`)
    base_lrs: Vec<f64>,
    tensors: Vec<Registered>,
    /// How the momentum of tensors registered from now on is stored (CAME).
    momentum: Momentum,
}

impl<C: Rule> Registry<C> {
    /// One group of `config`, no tensors.
    pub fn new(config: C) -> Result<Self, OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        Ok(Self {
            base_lrs: vec![config.lr()],
            groups: vec![config],
            tensors: Vec::new(),
            momentum: Momentum::Full,
        })
    }

    /// Stores the momentum of the tensors registered from now on as `momentum`.
    pub fn set_momentum(&mut self, momentum: Momentum) -> Result<(), OptimizerError> {
        if !momentum.is_valid() {
            return Err(OptimizerError::Config(Error::InvalidMomentum(momentum)));
        }
        self.momentum = momentum;
        Ok(())
    }

    pub fn groups(&self) -> &[C] {
        &self.groups
    }

    pub fn tensors(&self) -> &[Registered] {
        &self.tensors
    }

    pub fn tensors_mut(&mut self) -> &mut [Registered] {
        &mut self.tensors
    }

    pub fn add_group(&mut self, config: C) -> Result<GroupId, OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        self.base_lrs.push(config.lr());
        self.groups.push(config);
        Ok(GroupId(self.groups.len() - 1))
    }

    pub fn set_group_config(&mut self, group: GroupId, config: C) -> Result<(), OptimizerError> {
        config.validate().map_err(OptimizerError::Config)?;
        *self.group_mut(group)? = config;
        self.base_lrs[group.0] = config.lr();
        Ok(())
    }

    /// Replaces every group's config and base lr (a loaded checkpoint's); the count must not
    /// change.
    pub fn replace_groups(&mut self, groups: Vec<C>, base_lrs: Vec<f64>) {
        debug_assert_eq!(groups.len(), self.groups.len());
        debug_assert_eq!(base_lrs.len(), groups.len());
        self.groups = groups;
        self.base_lrs = base_lrs;
    }

    /// Each group's base learning rate.
    pub fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }

    /// Group 0's learning rate.
    pub fn lr(&self) -> f64 {
        self.groups[0].lr()
    }

    /// Sets every group's lr and base lr.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), OptimizerError> {
        crate::config::check_lr(lr).map_err(OptimizerError::Config)?;
        for g in &mut self.groups {
            g.set_lr(lr);
        }
        self.base_lrs.fill(lr);
        Ok(())
    }

    /// Sets one group's lr and base lr.
    pub fn set_group_lr(&mut self, group: GroupId, lr: f64) -> Result<(), OptimizerError> {
        crate::config::check_lr(lr).map_err(OptimizerError::Config)?;
        self.group_mut(group)?.set_lr(lr);
        self.base_lrs[group.0] = lr;
        Ok(())
    }

    /// Sets every group's lr to its base lr times `factor`; checks every result first.
    pub fn scale_lr(&mut self, factor: f64) -> Result<(), OptimizerError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(OptimizerError::LrScale(factor));
        }
        for &base in &self.base_lrs {
            crate::config::check_lr(base * factor).map_err(OptimizerError::Config)?;
        }
        for (g, &base) in self.groups.iter_mut().zip(&self.base_lrs) {
            g.set_lr(base * factor);
        }
        Ok(())
    }

    fn group_mut(&mut self, group: GroupId) -> Result<&mut C, OptimizerError> {
        self.groups
            .get_mut(group.0)
            .ok_or(OptimizerError::UnknownGroup(group.0))
    }

    /// Registers a tensor (step count 0) once its group exists, its name is new and its shape
    /// fits.
    pub fn register(
        &mut self,
        group: GroupId,
        name: &str,
        dims: &[usize],
    ) -> Result<TensorId, OptimizerError> {
        if group.0 >= self.groups.len() {
            return Err(OptimizerError::UnknownGroup(group.0));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(OptimizerError::DuplicateName(name.to_string()));
        }
        let shape_error = |error| OptimizerError::Shape {
            name: name.to_string(),
            error,
        };
        let shape = Shape::new(dims)
            .and_then(|s| s.with_momentum(self.momentum))
            .map_err(shape_error)?;
        let state = C::state_layout(&shape).ok_or(shape_error(Error::ShapeOverflow))?;
        self.tensors.push(Registered {
            name: name.to_string(),
            dims: dims.to_vec(),
            shape,
            state,
            group: group.0,
            step: 0,
        });
        Ok(TensorId(self.tensors.len() - 1))
    }

    pub fn tensor(&self, id: TensorId) -> Option<TensorInfo<'_>> {
        self.tensors.get(id.0).map(|t| TensorInfo {
            name: &t.name,
            dims: &t.dims,
            group: GroupId(t.group),
            step: t.step,
        })
    }

    /// Checks a step's `(param, grad)` lengths against the registered tensors (a missing
    /// gradient leaves its tensor out of the step).
    pub fn check_step(
        &self,
        lens: impl ExactSizeIterator<Item = (usize, Option<usize>)>,
    ) -> Result<(), OptimizerError> {
        if lens.len() != self.tensors.len() {
            return Err(OptimizerError::TensorCount {
                expected: self.tensors.len(),
                actual: lens.len(),
            });
        }
        for (i, (t, (p, g))) in self.tensors.iter().zip(lens).enumerate() {
            let n = t.shape.numel();
            check_tensor_lens(n, p, g.unwrap_or(n)).map_err(|error| self.error(i, error))?;
        }
        Ok(())
    }

    /// Tensor `index`'s step failed with `error`.
    pub fn error(&self, index: usize, error: Error) -> OptimizerError {
        OptimizerError::Tensor {
            index,
            name: self.tensors[index].name.clone(),
            error,
        }
    }

    /// The first difference between this registry's groups and tensors and `other`'s.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn compare<D>(&self, other: &Registry<D>) -> Result<(), OptimizerError> {
        let mismatch = |m| Err(OptimizerError::Mismatch(m));
        let (here, there) = (self.groups.len(), other.groups.len());
        if here != there {
            return mismatch(Mismatch::GroupCount { here, there });
        }
        let (here, there) = (self.tensors.len(), other.tensors.len());
        if here != there {
            return mismatch(Mismatch::TensorCount { here, there });
        }
        for (index, (a, b)) in self.tensors.iter().zip(&other.tensors).enumerate() {
            if a.name != b.name {
                return mismatch(Mismatch::Name {
                    index,
                    here: a.name.clone(),
                    there: b.name.clone(),
                });
            }
            if a.dims != b.dims {
                return mismatch(Mismatch::Dims {
                    index,
                    name: a.name.clone(),
                    here: a.dims.clone(),
                    there: b.dims.clone(),
                });
            }
            if a.group != b.group {
                return mismatch(Mismatch::Group {
                    index,
                    name: a.name.clone(),
                    here: a.group,
                    there: b.group,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CameConfig;

    fn registry(tensors: &[(&str, &[usize], usize)]) -> Registry<CameConfig> {
        let mut r = Registry::new(CameConfig::default()).unwrap();
        r.add_group(CameConfig::new(1e-3)).unwrap();
        for &(name, dims, group) in tensors {
            r.register(GroupId(group), name, dims).unwrap();
        }
        r
    }

    #[test]
    fn each_difference_names_the_tensor_and_both_sides() {
        let a = registry(&[("w", &[4, 3], 0), ("b", &[3], 1)]);
        assert_eq!(a.compare(&a), Ok(()));
        let cases = [
            (
                registry(&[("w", &[4, 3], 0)]),
                Mismatch::TensorCount { here: 2, there: 1 },
            ),
            (
                registry(&[("w", &[4, 3], 0), ("bias", &[3], 1)]),
                Mismatch::Name {
                    index: 1,
                    here: "b".into(),
                    there: "bias".into(),
                },
            ),
            (
                registry(&[("w", &[3, 4], 0), ("b", &[3], 1)]),
                Mismatch::Dims {
                    index: 0,
                    name: "w".into(),
                    here: vec![4, 3],
                    there: vec![3, 4],
                },
            ),
            (
                registry(&[("w", &[4, 3], 0), ("b", &[3], 0)]),
                Mismatch::Group {
                    index: 1,
                    name: "b".into(),
                    here: 1,
                    there: 0,
                },
            ),
        ];
        for (other, expected) in cases {
            assert_eq!(a.compare(&other), Err(OptimizerError::Mismatch(expected)));
        }
        let mut three = registry(&[("w", &[4, 3], 0), ("b", &[3], 1)]);
        three.add_group(CameConfig::default()).unwrap();
        assert_eq!(
            a.compare(&three),
            Err(OptimizerError::Mismatch(Mismatch::GroupCount {
                here: 2,
                there: 3
            }))
        );
    }

    #[test]
    fn registration_is_checked() {
        let mut r = registry(&[("w", &[4, 3], 0)]);
        assert_eq!(
            r.register(GroupId(2), "x", &[1]),
            Err(OptimizerError::UnknownGroup(2))
        );
        assert_eq!(
            r.register(GroupId(0), "w", &[1]),
            Err(OptimizerError::DuplicateName("w".into()))
        );
        assert!(matches!(
            r.register(GroupId(0), "huge", &[usize::MAX, 2]),
            Err(OptimizerError::Shape { .. })
        ));
        assert_eq!(r.tensors().len(), 1);
        assert_eq!(
            r.check_step([(12, Some(12)), (1, Some(1))].into_iter()),
            Err(OptimizerError::TensorCount {
                expected: 1,
                actual: 2
            })
        );
        assert!(matches!(
            r.check_step([(12, Some(11))].into_iter()),
            Err(OptimizerError::Tensor { index: 0, .. })
        ));
    }
}
