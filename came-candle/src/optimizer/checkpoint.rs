//! Checkpoints: the core crate's safetensors files.

use std::path::Path;

use came::optim::Optimizer as _;
use came::{CheckpointError, GroupId};

use super::{Came, Core, Error, KINDS, Part};
use crate::storage::{Held, Target, Typed, elements, with_vars_mut};

impl Came {
    /// Saves the state of every var, the step counts and the groups' hyperparameters to a
    /// safetensors file, atomically (the previous file stays whole until the new one is
    /// complete): the core crate's checkpoint, with the reference's state names, which
    /// `came::Came::<P>::load` reads into an optimizer with the same vars (names, dims, groups),
    /// `P` the vars' type.
    ///
    /// ```
    /// use candle::{DType, Device, Var};
    /// use came_candle::{Came, ParamGroup, ParamsCame};
    ///
    /// let w = Var::ones((4, 3), DType::F32, &Device::Cpu)?;
    /// let mut opt = Came::from_groups([ParamGroup::named([("w", w.clone())], ParamsCame::default())])?;
    /// opt.step_report(&w.sqr()?.sum_all()?.backward()?)?;
    /// let path = std::env::temp_dir().join("came-candle-doc.safetensors");
    /// opt.save(&path)?;
    ///
    /// // the core crate reads it
    /// use came::Optimizer as _;
    /// let mut core = came::Came::<f32>::new(came::CameConfig::default())?;
    /// core.register("w", &[4, 3])?;
    /// core.load(&path)?;
    /// assert_eq!(core.step_count(came::TensorId(0)), Some(1));
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::MixedDtypes`] if the vars are of several dtypes; [`Error::Checkpoint`] if the
    /// file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let part = &self.parts[self.checkpoint_part()?];
        on_core!(&part.core, o => o.save(path.as_ref()))?;
        Ok(())
    }

    /// Loads a checkpoint written by [`Came::save`] (or by the core crate, or converted from
    /// came-pytorch) into the registered vars' state, which must match the file's: the same
    /// number of vars, each with the same name (where the file has names), dims and group. The
    /// groups' hyperparameters are replaced by the file's, as PyTorch's `load_state_dict` does.
    /// The vars' values are not touched ([`Came::load_with_vars`] restores them too).
    ///
    /// # Errors
    /// [`Error::MixedDtypes`]; [`Error::Checkpoint`] for a missing, corrupt or mismatching file.
    /// Nothing is changed then.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let k = self.checkpoint_part()?;
        on_core!(&mut self.parts[k].core, o => o.load(path.as_ref()))?;
        self.loaded(k)
    }

    /// [`Came::save`], with every var's value too (`param.<i>`), so that the file alone
    /// resumes a run. The vars are read in place.
    ///
    /// # Errors
    /// As [`Came::save`], and [`Error::Candle`] if a var cannot be read.
    pub fn save_with_vars(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let k = self.checkpoint_part()?;
        let part = &self.parts[k];
        let locked: Vec<_> = part
            .members
            .iter()
            .map(|&i| self.entries[i].var.storage_and_layout())
            .collect();
        let values = locked
            .iter()
            .map(|(storage, layout)| elements(storage, layout))
            .collect::<candle::Result<Vec<_>>>()?;
        on_core!(&part.core, o => save_part(o, path.as_ref(), &values))?;
        Ok(())
    }

    /// [`Came::load`], writing the file's values (`param.<i>`) into the vars, in place.
    ///
    /// # Errors
    /// As [`Came::load`] ([`came::CheckpointError::MissingKey`] for a file without the vars'
    /// values), and [`Error::Candle`] if a var cannot be written. Neither the optimizer nor any
    /// var is changed then.
    pub fn load_with_vars(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let k = self.checkpoint_part()?;
        let path = path.as_ref();
        let Part { core, members } = &mut self.parts[k];
        let targets: Vec<Target<'_>> = members
            .iter()
            .map(|&i| Target {
                var: &self.entries[i].var,
                grad: None,
            })
            .collect();
        let mut outcome = None;
        with_vars_mut(&targets, &mut |held| {
            outcome = Some(on_core!(&mut *core, o => load_part(o, path, held)));
        })?;
        drop(targets);
        match outcome {
            Some(result) => result?,
            None => unreachable!("with_vars_mut runs its body once when it succeeds"),
        }
        self.loaded(k)
    }

    /// The part whose state a checkpoint holds: the one with vars (the `f32` one when no var is
    /// registered).
    fn checkpoint_part(&self) -> Result<usize, Error> {
        let used: Vec<usize> = (0..KINDS.len())
            .filter(|&k| !self.parts[k].members.is_empty())
            .collect();
        match used.as_slice() {
            [] => Ok(0),
            [k] => Ok(*k),
            _ => {
                let mut dtypes = Vec::new();
                for e in &self.entries {
                    if !dtypes.contains(&e.kind.dtype()) {
                        dtypes.push(e.kind.dtype());
                    }
                }
                Err(Error::MixedDtypes { dtypes })
            }
        }
    }

    /// After part `k` loaded a file: the other parts take its groups' configs, and a learning
    /// rate refused before is forgotten (the file's replaced it).
    fn loaded(&mut self, k: usize) -> Result<(), Error> {
        let configs = on_core!(&self.parts[k].core, o => o.groups().to_vec());
        for (j, part) in self.parts.iter_mut().enumerate() {
            if j == k {
                continue;
            }
            for (i, &config) in configs.iter().enumerate() {
                on_core!(&mut part.core, o => o.set_group_config(GroupId(i), config))?;
            }
        }
        self.bad_lr = None;
        Ok(())
    }
}

/// Saves a part's state with its vars' values.
fn save_part<P: Typed>(
    opt: &came::Came<P>,
    path: &Path,
    values: &[crate::storage::Elements<'_>],
) -> Result<(), CheckpointError> {
    let params: Vec<&[P]> = values.iter().filter_map(P::of).collect();
    opt.save_with_params(path, &params)
}

/// Loads a part's state and its vars' values.
fn load_part<P: Typed>(
    opt: &mut came::Came<P>,
    path: &Path,
    held: &mut Held<'_>,
) -> Result<(), CheckpointError> {
    let mut params: Vec<&mut [P]> = P::held(held).iter_mut().map(|(p, _)| &mut **p).collect();
    opt.load_with_params(path, &mut params)
}
