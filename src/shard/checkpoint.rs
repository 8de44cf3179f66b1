//! Per-rank checkpoints of a sharded optimizer, and loading them into any number of ranks.
//!
//! Rank `r` of `N` writes `came-shard-<r>-of-<N>.safetensors` in a directory: tensors
//! `state.<i>.<key>` (the state names of [`crate::FACTORED_KEYS`] and [`crate::VECTOR_KEYS`],
//! flat) holding only the units (rows of a matrix, matrices of a batch, elements of a vector)
//! the rank owns, and a matrix's column statistics whole; metadata `optimizer`
//! (`came-sharded`), `ranks`, `rank`, `groups` (every group's config, JSON, as the core's
//! checkpoints write them), `base_lrs`, and per tensor `name.<i>`, `step.<i>`, `layout.<i>`
//! (the tensor's layout, JSON) and `units.<i>` (`[first, end)` of the units it owns). A rank that owns nothing of a tensor
//! writes nothing for it. Loading reads every rank's file of the directory and takes the units
//! the loading rank owns under its own shard map, so a run saved on `N` ranks resumes on `M`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use super::collective::Collective;
use super::map::Split;
use super::step::ShardedCame;
use crate::came::shard::Extent;
use crate::optim::RuleImpl;
use crate::optim::{CheckpointError, encode, open, values, write_atomic};
use crate::{CameConfig, Float, Layout, Shape};
use safetensors::SafeTensors;

/// The optimizer name in the files' metadata.
const NAME: &str = "came-sharded";

/// The file of rank `rank` of `ranks`.
fn file_name(rank: usize, ranks: usize) -> String {
    format!("came-shard-{rank}-of-{ranks}.safetensors")
}

/// A tensor's layout and how it is split, as the metadata spells them.
fn layout_json(shape: &Shape, split: Split) -> String {
    let split = match split {
        Split::Columns => ",\"split\":\"columns\"",
        _ => "",
    };
    match shape.layout() {
        Layout::Factored { batch, rows, cols } => {
            format!("{{\"batch\":{batch},\"rows\":{rows},\"cols\":{cols}{split}}}")
        }
        Layout::Vector { len } => format!("{{\"len\":{len}{split}}}"),
    }
}

fn bad(key: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::BadMetadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `[first, end)` as the metadata spells it.
fn parse_range(key: &str, text: &str) -> Result<(usize, usize), CheckpointError> {
    let v: Vec<usize> = serde_json::from_str(text).map_err(|e| bad(key, e.to_string()))?;
    match v[..] {
        [a, b] if a <= b => Ok((a, b)),
        _ => Err(bad(key, "not a range [first, end)")),
    }
}

impl<T: Float, C: Collective> ShardedCame<T, C> {
    /// Writes this rank's state to `dir` (created if missing), atomically; returns the file's
    /// path. Every rank calls it with the same directory.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] (inside [`CheckpointError::File`]).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<PathBuf, CheckpointError> {
        let (rank, ranks) = (self.rank(), self.map().ranks());
        let path = dir.as_ref().join(file_name(rank, ranks));
        let write = || -> Result<(), CheckpointError> {
            fs::create_dir_all(dir.as_ref())?;
            let mut meta = BTreeMap::new();
            meta.insert("optimizer".to_string(), NAME.to_string());
            meta.insert("ranks".to_string(), ranks.to_string());
            meta.insert("rank".to_string(), rank.to_string());
            let rule = |c: &CameConfig| RuleImpl::to_json(c);
            let groups: Vec<_> = self.registry().groups().iter().map(rule).collect();
            meta.insert(
                "groups".to_string(),
                serde_json::Value::from(groups).to_string(),
            );
            let base = serde_json::Value::from(self.registry().base_lrs().to_vec());
            meta.insert("base_lrs".to_string(), base.to_string());
            let mut tensors = Vec::new();
            for (t, part) in self.parts().iter().enumerate() {
                let shape = &self.map().shapes()[t];
                meta.insert(
                    format!("layout.{t}"),
                    layout_json(shape, self.map().split(t)),
                );
                let registered = &self.registry().tensors()[t];
                meta.insert(format!("name.{t}"), registered.name.clone());
                meta.insert(format!("step.{t}"), registered.step.to_string());
                let units = part.units_of(rank);
                meta.insert(
                    format!("units.{t}"),
                    format!("[{},{}]", units.start, units.end),
                );
                if units.is_empty() {
                    continue;
                }
                for (key, _, range) in part.pieces() {
                    let values = &part.state()[range.clone()];
                    tensors.push((format!("state.{t}.{key}"), vec![range.len()], values));
                }
            }
            let bytes = encode(&tensors, meta)?;
            Ok(write_atomic(&path, &bytes)?)
        };
        write().map_err(|e| e.in_file(&path))?;
        Ok(path)
    }

    /// Loads the state saved by [`Self::save_dir`] from `dir`, on any number of ranks: this rank
    /// takes its units from the files of the ranks that owned them. Every rank calls it. Nothing
    /// changes unless the whole load succeeds.
    ///
    /// # Errors
    /// [`CheckpointError::MissingKey`] naming a missing rank's file or state tensor;
    /// [`CheckpointError::BadMetadata`] for files of different runs in one directory, or of
    /// two numbers of ranks; [`CheckpointError::WrongOptimizer`];
    /// [`CheckpointError::TensorCount`]; [`CheckpointError::ShapeMismatch`] (a tensor's
    /// layout differs); [`CheckpointError::WrongDtype`]; [`CheckpointError::NonFinite`],
    /// [`CheckpointError::NegativeStatistic`]; an I/O or format error inside
    /// [`CheckpointError::File`].
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let dir = dir.as_ref();
        let ranks = saved_ranks(dir)?;
        let rank = self.rank();
        let mut staged: Vec<Vec<T>> = self.parts().iter().map(|p| p.state().to_vec()).collect();
        let mut covered: Vec<Vec<bool>> = self
            .parts()
            .iter()
            .map(|p| vec![false; p.units_of(rank).len()])
            .collect();
        let mut shared_set: Vec<bool> = vec![false; self.parts().len()];
        let mut first: Option<Run> = None;
        for old in 0..ranks {
            let path = dir.join(file_name(old, ranks));
            let bytes = fs::read(&path).map_err(|e| CheckpointError::from(e).in_file(&path))?;
            let run = self
                .take_file(
                    &bytes,
                    (old, ranks),
                    &mut staged,
                    &mut covered,
                    &mut shared_set,
                )
                .map_err(|e| e.in_file(&path))?;
            match &first {
                None => first = Some(run),
                Some(f) if *f == run => {}
                Some(_) => {
                    let e = bad(
                        "step, groups",
                        "differ from rank 0's file: files of two runs",
                    );
                    return Err(e.in_file(&path));
                }
            }
        }
        for (t, c) in covered.iter().enumerate() {
            if let Some(u) = c.iter().position(|&c| !c) {
                let first = self.parts()[t].units_of(rank).start;
                return Err(CheckpointError::MissingKey(format!(
                    "state.{t}: unit {} in no file of {}",
                    first + u,
                    dir.display()
                )));
            }
        }
        let Some(run) = first else {
            return Err(CheckpointError::MissingKey(dir.display().to_string()));
        };
        for (part, state) in self.parts_mut().iter_mut().zip(staged) {
            *part.state_mut() = state;
        }
        let registry = self.registry_mut();
        for (tensor, step) in registry.tensors_mut().iter_mut().zip(run.steps) {
            tensor.step = step;
        }
        registry.replace_groups(run.groups, run.base_lrs);
        Ok(())
    }

    /// Copies what this rank owns from one saved rank's file into `staged`; returns the file's
    /// step counts and groups.
    fn take_file(
        &self,
        bytes: &[u8],
        (old, ranks): (usize, usize),
        staged: &mut [Vec<T>],
        covered: &mut [Vec<bool>],
        shared_set: &mut [bool],
    ) -> Result<Run, CheckpointError> {
        let (file, meta) = open(bytes)?;
        let get = |key: &str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| CheckpointError::MissingKey(key.to_string()))
        };
        let optimizer = get("optimizer")?;
        if optimizer != NAME {
            return Err(CheckpointError::WrongOptimizer {
                expected: NAME,
                found: optimizer,
            });
        }
        for (key, want) in [("ranks", ranks), ("rank", old)] {
            if get(key)? != want.to_string() {
                return Err(bad(key, format!("the file's name says {want}")));
            }
        }
        let groups: Vec<CameConfig> = serde_json::from_str::<serde_json::Value>(&get("groups")?)
            .ok()
            .and_then(|v| {
                v.as_array()
                    .map(|a| a.iter().map(RuleImpl::from_json).collect())
            })
            .flatten()
            .ok_or_else(|| bad("groups", "not a list of CAME configs"))?;
        let base_lrs: Vec<f64> =
            serde_json::from_str(&get("base_lrs")?).map_err(|e| bad("base_lrs", e.to_string()))?;
        let count = self.registry().groups().len();
        if groups.len() != count || base_lrs.len() != count {
            return Err(bad(
                "groups",
                format!("{} groups, the optimizer has {count}", groups.len()),
            ));
        }
        let tensors = meta.keys().filter(|k| k.starts_with("layout.")).count();
        if tensors != self.parts().len() {
            return Err(CheckpointError::TensorCount {
                file: tensors,
                optimizer: self.parts().len(),
            });
        }
        let mut steps = Vec::new();
        for t in 0..self.parts().len() {
            steps.push(self.take_tensor(t, (&file, &meta), staged, covered, shared_set)?);
        }
        Ok(Run {
            steps,
            groups,
            base_lrs,
        })
    }

    /// Copies what this rank owns of tensor `t` from one saved rank's file into `staged`;
    /// returns the tensor's step count.
    fn take_tensor(
        &self,
        t: usize,
        (file, meta): (&SafeTensors<'_>, &BTreeMap<String, String>),
        staged: &mut [Vec<T>],
        covered: &mut [Vec<bool>],
        shared_set: &mut [bool],
    ) -> Result<u64, CheckpointError> {
        let get = |key: &str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| CheckpointError::MissingKey(key.to_string()))
        };
        let rank = self.rank();
        let part = &self.parts()[t];
        let shape = &self.map().shapes()[t];
        let key = format!("layout.{t}");
        let layout = get(&key)?;
        let ours = layout_json(shape, self.map().split(t));
        if layout != ours {
            return Err(bad(
                &key,
                format!("{layout}, where the optimizer has {ours}"),
            ));
        }
        let key = format!("name.{t}");
        let name = get(&key)?;
        if name != self.registry().tensors()[t].name {
            return Err(bad(
                &key,
                format!(
                    "{name}, where the optimizer has {}",
                    self.registry().tensors()[t].name
                ),
            ));
        }
        let key = format!("step.{t}");
        let step = get(&key)?
            .parse::<u64>()
            .map_err(|_| bad(&key, "not a step count"))?;
        let key = format!("units.{t}");
        let (a, b) = parse_range(&key, &get(&key)?)?;
        let mine = part.units_of(rank);
        if a == b {
            return Ok(step);
        }
        let (lo, hi) = (a.max(mine.start), b.min(mine.end));
        for (name, extent, range) in part.pieces() {
            let key = format!("state.{t}.{name}");
            let view = file
                .tensor(&key)
                .map_err(|_| CheckpointError::MissingKey(key.clone()))?;
            let values: Vec<T> = values(&key, &view)?;
            let expected = match extent {
                Extent::PerUnit(w) | Extent::Block(w) => (b - a) * w,
                Extent::Shared(n) => n,
            };
            if values.len() != expected {
                return Err(CheckpointError::ShapeMismatch {
                    index: t,
                    name: t.to_string(),
                    key,
                    optimizer: vec![expected],
                    file: vec![values.len()],
                });
            }
            if !values.iter().all(|v| v.is_finite()) {
                return Err(CheckpointError::NonFinite { key });
            }
            if name != "exp_avg" && values.iter().any(|&v| v < T::zero()) {
                return Err(CheckpointError::NegativeStatistic { key });
            }
            let into = &mut staged[t][range];
            match extent {
                Extent::PerUnit(w) if lo < hi => {
                    let from = &values[(lo - a) * w..(hi - a) * w];
                    into[(lo - mine.start) * w..(hi - mine.start) * w].copy_from_slice(from);
                }
                Extent::Shared(_) if !shared_set[t] => into.copy_from_slice(&values),
                Extent::Block(rows) if lo < hi => {
                    let (theirs, ours) = (b - a, mine.len());
                    for i in 0..rows {
                        let from = &values[i * theirs + lo - a..i * theirs + hi - a];
                        let to = i * ours + lo - mine.start..i * ours + hi - mine.start;
                        into[to].copy_from_slice(from);
                    }
                }
                _ => {}
            }
        }
        shared_set[t] = true;
        if lo < hi {
            for c in &mut covered[t][lo - mine.start..hi - mine.start] {
                *c = true;
            }
        }
        Ok(step)
    }
}

/// What every rank's file of one run says alike: step counts and groups.
#[derive(PartialEq)]
struct Run {
    steps: Vec<u64>,
    groups: Vec<CameConfig>,
    base_lrs: Vec<f64>,
}

/// The number of ranks of the checkpoint in `dir` (every rank's file must be there).
fn saved_ranks(dir: &Path) -> Result<usize, CheckpointError> {
    let entries = fs::read_dir(dir).map_err(|e| CheckpointError::from(e).in_file(dir))?;
    let mut found: Vec<(usize, usize)> = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| CheckpointError::from(e).in_file(dir))?
            .file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name
            .strip_prefix("came-shard-")
            .and_then(|r| r.strip_suffix(".safetensors"))
        else {
            continue;
        };
        if let Some((Ok(r), Ok(n))) = rest.split_once("-of-").map(|(r, n)| (r.parse(), n.parse())) {
            found.push((r, n));
        }
    }
    let Some(&(_, ranks)) = found.first() else {
        return Err(CheckpointError::MissingKey(format!(
            "{}/came-shard-*-of-*.safetensors",
            dir.display()
        )));
    };
    if let Some(&(_, other)) = found.iter().find(|f| f.1 != ranks) {
        return Err(bad(
            "ranks",
            format!("files of {ranks} and of {other} ranks in {}", dir.display()),
        ));
    }
    for r in 0..ranks {
        if !found.contains(&(r, ranks)) {
            return Err(CheckpointError::MissingKey(
                dir.join(file_name(r, ranks)).display().to_string(),
            ));
        }
    }
    Ok(ranks)
}
