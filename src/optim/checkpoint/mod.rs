//! Checkpoints as `.safetensors` files, in the layout of the reference's mid-run files.
//!
//! Tensors `state.<i>.<key>` (the reference's state names, `i` the tensor's registration
//! position) and optionally `param.<i>`; metadata `optimizer`, `config` (JSON of group 0),
//! `step.<i>`, `shape.<i>` (JSON), and, written by this crate, `groups` (JSON array of every
//! group's config), `group.<i>`, `name.<i>`, `source`, and the checksums `crc32.<tensor>` and
//! `crc32.metadata` (`checksum.rs`). A file written by came-pytorch's conversion script
//! (`scripts/convert_checkpoint.py`), by the reference fixtures or by an earlier version of
//! this crate has only some of these; the rest default to one group, unchecked names and no
//! checksum. The same state always gives the same bytes: the header's keys are in order.

mod checksum;
mod error;
mod file;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::format;
use std::fs;
use std::path::Path;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

pub use error::CheckpointError;
pub(crate) use file::write_atomic;
use file::{
    Bytes, canonical, check_complete, decode, dtype_label, dtype_of, swap_to_little_endian, widen,
    widens_to,
};

use super::cpu::CpuOptimizer;
use super::rule::Steps;
use crate::Element;
use crate::{FACTORED_KEYS, PieceType, SCALE_KEY};

fn json_string(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// The bytes of a file of the named tensors of `E` (name, shape, values) and `meta`, in this
/// format: checksums added, the header's keys in order.
pub(crate) fn encode<E: Element>(
    tensors: &[(String, Vec<usize>, &[E])],
    meta: BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let tensors: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(k, shape, values)| (k.clone(), Bytes::new(shape.clone(), values)))
        .collect();
    sealed(&tensors, meta)
}

/// The bytes of a file of `tensors` and `meta`: checksums added, the header's keys in order.
fn sealed(
    tensors: &[(String, Bytes)],
    mut meta: BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    checksum::sign(
        &mut meta,
        tensors.iter().map(|(k, b)| (k.as_str(), b.data.as_slice())),
    );
    let views = tensors.iter().map(|(k, b)| (k.as_str(), b));
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::Format(e.to_string()))?;
    canonical(&bytes)
}

/// A file's tensors and metadata, checked to be complete and to match its checksums.
pub(crate) fn open(
    bytes: &[u8],
) -> Result<(SafeTensors<'_>, BTreeMap<String, String>), CheckpointError> {
    check_complete(bytes)?;
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    checksum::verify(&meta, &file)?;
    Ok((file, meta))
}

/// The values of a tensor of `E` read from a file, or [`CheckpointError::WrongDtype`].
pub(crate) fn values<E: Element>(
    key: &str,
    view: &TensorView<'_>,
) -> Result<Vec<E>, CheckpointError> {
    if view.dtype() != dtype_of::<E>() {
        return Err(CheckpointError::WrongDtype {
            key: key.to_string(),
            expected: dtype_label::<E>(),
            found: dtype_name(view.dtype()),
        });
    }
    Ok(decode(view.data()))
}

/// A tensor's state and metadata read from a file, not yet committed.
struct Staged<T, P> {
    state: Vec<T>,
    step: u64,
    param: Option<Vec<P>>,
}

impl<P: Element, C: Steps<P, G>, G: Element> CpuOptimizer<P, C, G> {
    /// Saves the whole optimizer state to `path`, atomically, with the parameters when given
    /// (the trait's [`save`](super::Optimizer::save) gives none).
    pub(crate) fn save_to(
        &self,
        path: &Path,
        params: Option<&[&[P]]>,
    ) -> Result<(), CheckpointError> {
        let write = || -> Result<(), CheckpointError> {
            let bytes = self.to_safetensors(params)?;
            Ok(write_atomic(path, &bytes)?)
        };
        write().map_err(|e| e.in_file(path))
    }

    /// [`Optimizer::save`](super::Optimizer::save), with the parameters too (`param.<i>`, in
    /// registration order), so the file alone resumes a run.
    ///
    /// # Errors
    /// [`CheckpointError::ParamCount`] or [`CheckpointError::ParamLength`] if `params` does not
    /// match the registered tensors; [`CheckpointError::Io`]; each inside
    /// [`CheckpointError::File`].
    pub fn save_with_params(
        &self,
        path: impl AsRef<Path>,
        params: &[&[P]],
    ) -> Result<(), CheckpointError> {
        self.save_to(path.as_ref(), Some(params))
    }

    /// The checkpoint as the bytes of a `.safetensors` file.
    ///
    /// # Errors
    /// [`CheckpointError::ParamCount`] or [`CheckpointError::ParamLength`] if `params` does not
    /// match the registered tensors; [`CheckpointError::Format`] if serialisation fails.
    pub fn to_safetensors(&self, params: Option<&[&[P]]>) -> Result<Vec<u8>, CheckpointError> {
        if let Some(params) = params {
            self.check_params(params.iter().map(|p| p.len()))?;
        }
        let mut meta = BTreeMap::new();
        meta.insert("optimizer".to_string(), C::NAME.to_string());
        meta.insert(
            "source".to_string(),
            concat!("came (Rust) ", env!("CARGO_PKG_VERSION")).to_string(),
        );
        let registry = &self.registry;
        meta.insert(
            "config".to_string(),
            json_string(&registry.groups()[0].to_json()),
        );
        let groups: Vec<Value> = registry
            .groups()
            .iter()
            .zip(registry.base_lrs())
            .map(|(g, &base)| {
                let mut v = g.to_json();
                // PyTorch's name for a scheduler's base lr; written only where it differs
                if base.to_bits() != g.lr().to_bits() {
                    v["initial_lr"] = Value::from(base);
                }
                v
            })
            .collect();
        meta.insert("groups".to_string(), json_string(&Value::from(groups)));
        let mut tensors: Vec<(String, Bytes)> = Vec::new();
        for (i, (t, slot)) in registry.tensors().iter().zip(&self.slots).enumerate() {
            meta.insert(format!("step.{i}"), t.step.to_string());
            meta.insert(
                format!("shape.{i}"),
                json_string(&Value::from(t.dims.clone())),
            );
            meta.insert(format!("group.{i}"), t.group.to_string());
            meta.insert(format!("name.{i}"), t.name.clone());
            for piece in t.state.pieces() {
                let dims: Vec<usize> = piece.dims.of(&t.dims).collect();
                let words = &slot.state[piece.range.clone()];
                let bytes = match packed_dtype(piece.dtype) {
                    // packed momentum: its values' bytes, without the last word's padding
                    Some(dtype) => {
                        let len = t.shape.numel() * dtype.bitsize() / 8;
                        Bytes::raw(dtype, dims, &bytemuck::cast_slice(words)[..len])
                    }
                    None => Bytes::new(dims, words),
                };
                tensors.push((format!("state.{i}.{}", piece.key), bytes));
            }
            if let Some(params) = params {
                tensors.push((format!("param.{i}"), Bytes::new(t.dims.clone(), params[i])));
            }
        }
        sealed(&tensors, meta)
    }

    /// Loads a checkpoint written by [`save`](super::Optimizer::save) or in the reference's
    /// layout; the registered tensors must match the file's, in order and shape. Parameters
    /// stored in the file are restored into `params` when given, else ignored. Group configs
    /// are replaced by the file's, as PyTorch's `load_state_dict` does.
    pub(crate) fn load_from(
        &mut self,
        path: &Path,
        params: Option<&mut [&mut [P]]>,
    ) -> Result<(), CheckpointError> {
        let load = || -> Result<(), CheckpointError> {
            let bytes = fs::read(path)?;
            self.load_safetensors(&bytes, params)
        };
        load().map_err(|e| e.in_file(path))
    }

    /// [`Optimizer::load`](super::Optimizer::load), also restoring the parameters from the
    /// file's `param.<i>`.
    ///
    /// # Errors
    /// Any [`CheckpointError`] ([`CheckpointError::MissingKey`] if the file has no
    /// parameters), inside [`CheckpointError::File`]; on error neither the optimizer nor
    /// `params` is changed.
    pub fn load_with_params(
        &mut self,
        path: impl AsRef<Path>,
        params: &mut [&mut [P]],
    ) -> Result<(), CheckpointError> {
        self.load_from(path.as_ref(), Some(params))
    }

    /// Loads a checkpoint from the bytes of a `.safetensors` file (see
    /// [`Optimizer::load`](super::Optimizer::load)).
    ///
    /// # Errors
    /// Any [`CheckpointError`]; on error neither the optimizer nor `params` is changed.
    pub fn load_safetensors(
        &mut self,
        bytes: &[u8],
        params: Option<&mut [&mut [P]]>,
    ) -> Result<(), CheckpointError> {
        if let Some(p) = &params {
            self.check_params(p.iter().map(|p| p.len()))?;
        }
        let (file, meta) = open(bytes)?;
        let (groups, base_lrs) = self.read_groups(&meta)?;
        let want_params = params.is_some();
        let mut known_meta: BTreeSet<String> = ["optimizer", "source", "config", "groups"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let mut known_tensors = BTreeSet::new();
        let count = self.registry.tensors().len();
        let mut staged = Vec::with_capacity(count);
        for i in 0..count {
            for key in ["step", "shape", "group", "name"] {
                known_meta.insert(format!("{key}.{i}"));
            }
            staged.push(self.stage(i, &file, &meta, want_params, &mut known_tensors)?);
        }
        if let Some(k) = meta
            .keys()
            .find(|k| !known_meta.contains(*k) && !checksum::is_checksum(k))
        {
            return Err(CheckpointError::UnknownKey(k.clone()));
        }
        if let Some(k) = file
            .names()
            .into_iter()
            .find(|k| !known_tensors.contains(*k))
        {
            return Err(CheckpointError::UnknownKey(k.to_string()));
        }
        // everything is checked: commit
        self.registry.replace_groups(groups, base_lrs);
        let tensors = self.registry.tensors_mut().iter_mut();
        for ((t, slot), s) in tensors.zip(&mut self.slots).zip(&mut staged) {
            slot.state = core::mem::take(&mut s.state);
            t.step = s.step;
        }
        if let Some(params) = params {
            for (p, s) in params.iter_mut().zip(staged) {
                if let Some(values) = s.param {
                    p.copy_from_slice(&values);
                }
            }
        }
        Ok(())
    }

    /// Reads and checks tensor `i`'s metadata, state and (when wanted) parameters.
    fn stage(
        &self,
        i: usize,
        file: &SafeTensors<'_>,
        meta: &BTreeMap<String, String>,
        want_params: bool,
        known_tensors: &mut BTreeSet<String>,
    ) -> Result<Staged<P::Compute, P>, CheckpointError> {
        let t = &self.registry.tensors()[i];
        let shape_key = format!("shape.{i}");
        let dims = parse_dims(&shape_key, meta_get(meta, &shape_key)?)?;
        if dims != t.dims {
            return Err(CheckpointError::ShapeMismatch {
                index: i,
                name: t.name.clone(),
                key: shape_key,
                optimizer: t.dims.clone(),
                file: dims,
            });
        }
        let step_key = format!("step.{i}");
        let step = meta_get(meta, &step_key)?
            .trim()
            .parse::<u64>()
            .map_err(|e| bad(&step_key, &e.to_string()))?;
        if let Some(g) = meta.get(&format!("group.{i}")) {
            let g: usize = g
                .trim()
                .parse()
                .map_err(|_| bad(&format!("group.{i}"), g))?;
            if g != t.group {
                return Err(bad(
                    &format!("group.{i}"),
                    &format!("tensor {i} is in group {}, the file says {g}", t.group),
                ));
            }
        }
        if let Some(name) = meta.get(&format!("name.{i}"))
            && *name != t.name
        {
            return Err(bad(
                &format!("name.{i}"),
                &format!(
                    "tensor {i} is registered as {:?}, the file says {name:?}",
                    t.name
                ),
            ));
        }
        let mut state = vec![<P::Compute as num_traits::Zero>::zero(); t.state.len()];
        for piece in t.state.pieces() {
            let key = format!("state.{i}.{}", piece.key);
            let dims: Vec<usize> = piece.dims.of(&t.dims).collect();
            if let Some(dtype) = packed_dtype(piece.dtype) {
                let bytes = read_packed(file, (&key, dtype), &dims, (i, &t.name))?;
                known_tensors.insert(key);
                let words: &mut [u8] = bytemuck::cast_slice_mut(&mut state[piece.range]);
                words[..bytes.len()].copy_from_slice(&bytes);
                continue;
            }
            let values = read_tensor::<P::Compute>(file, &key, &dims, (i, &t.name))?;
            known_tensors.insert(key.clone());
            if t.shape.numel() == 0 {
                // a tensor without elements never reads its state: came-pytorch stores NaN for
                // the statistics over its empty dim (the mean of nothing); they load as zeros
                continue;
            }
            if values.iter().any(|v| !num_traits::Float::is_finite(*v)) {
                return Err(CheckpointError::NonFinite { key });
            }
            let signed = [FACTORED_KEYS[0], SCALE_KEY].contains(&piece.key);
            if !signed && values.iter().any(|&v| v < num_traits::Zero::zero()) {
                return Err(CheckpointError::NegativeStatistic { key });
            }
            state[piece.range].copy_from_slice(&values);
        }
        let param_key = format!("param.{i}");
        known_tensors.insert(param_key.clone());
        let param = if want_params {
            Some(read_tensor::<P>(file, &param_key, &t.dims, (i, &t.name))?)
        } else {
            None
        };
        Ok(Staged { state, step, param })
    }

    fn check_params(
        &self,
        lens: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), CheckpointError> {
        let tensors = self.registry.tensors();
        if lens.len() != tensors.len() {
            return Err(CheckpointError::ParamCount {
                expected: tensors.len(),
                actual: lens.len(),
            });
        }
        for (index, (len, t)) in lens.zip(tensors).enumerate() {
            if len != t.shape.numel() {
                return Err(CheckpointError::ParamLength {
                    index,
                    name: t.name.clone(),
                    expected: t.shape.numel(),
                    actual: len,
                });
            }
        }
        Ok(())
    }

    /// The groups a file holds, with their base learning rates: `groups` if present, else the
    /// one `config`.
    #[allow(clippy::type_complexity)]
    fn read_groups(
        &self,
        meta: &BTreeMap<String, String>,
    ) -> Result<(Vec<C>, Vec<f64>), CheckpointError> {
        let optimizer = meta_get(meta, "optimizer")?;
        if optimizer != C::NAME {
            return Err(CheckpointError::WrongOptimizer {
                expected: C::NAME,
                found: optimizer.clone(),
            });
        }
        // the file's tensors are shape.0, shape.1, ...
        let file = meta
            .keys()
            .filter_map(|k| k.strip_prefix("shape.")?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1);
        let optimizer = self.registry.tensors().len();
        if file != optimizer {
            return Err(CheckpointError::TensorCount { file, optimizer });
        }
        let parse = |key: &str, v: &Value| -> Result<C, CheckpointError> {
            let c = C::from_json(v).ok_or_else(|| bad(key, "not a config of this optimizer"))?;
            c.validate().map_err(CheckpointError::Config)?;
            Ok(c)
        };
        let config_json: Value = serde_json::from_str(meta_get(meta, "config")?)
            .map_err(|e| bad("config", &e.to_string()))?;
        let config = parse("config", &config_json)?;
        // a group's base lr: its `initial_lr` where the file has one, else its lr
        let base_lr = |v: &Value, c: &C| -> Result<f64, CheckpointError> {
            match v.get("initial_lr") {
                None => Ok(c.lr()),
                Some(x) => {
                    let lr = x
                        .as_f64()
                        .ok_or_else(|| bad("groups", "initial_lr: not a number"))?;
                    crate::config::check_lr(lr).map_err(CheckpointError::Config)?;
                    Ok(lr)
                }
            }
        };
        let (groups, base_lrs) = match meta.get("groups") {
            None => (vec![config], vec![config.lr()]),
            Some(text) => {
                let v: Value =
                    serde_json::from_str(text).map_err(|e| bad("groups", &e.to_string()))?;
                let list = v.as_array().ok_or_else(|| bad("groups", "not an array"))?;
                let groups = list
                    .iter()
                    .map(|g| parse("groups", g))
                    .collect::<Result<Vec<C>, _>>()?;
                if groups.first() != Some(&config) {
                    return Err(bad("config", "differs from the first of groups"));
                }
                let base_lrs = list
                    .iter()
                    .zip(&groups)
                    .map(|(v, c)| base_lr(v, c))
                    .collect::<Result<Vec<f64>, _>>()?;
                (groups, base_lrs)
            }
        };
        let here = self.registry.groups().len();
        if groups.len() != here {
            return Err(bad(
                "groups",
                &format!(
                    "the file has {} parameter groups, the optimizer {}",
                    groups.len(),
                    here
                ),
            ));
        }
        Ok((groups, base_lrs))
    }
}

fn bad(key: &str, reason: &str) -> CheckpointError {
    CheckpointError::BadMetadata {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn meta_get<'m>(
    meta: &'m BTreeMap<String, String>,
    key: &str,
) -> Result<&'m String, CheckpointError> {
    meta.get(key)
        .ok_or_else(|| CheckpointError::MissingKey(key.to_string()))
}

fn parse_dims(key: &str, text: &str) -> Result<Vec<usize>, CheckpointError> {
    let v: Value = serde_json::from_str(text).map_err(|e| bad(key, &e.to_string()))?;
    v.as_array()
        .ok_or_else(|| bad(key, "not an array"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| bad(key, "not a list of sizes"))
        })
        .collect()
}

/// The safetensors dtype of a packed piece of state; `None` for the compute type.
fn packed_dtype(piece: PieceType) -> Option<Dtype> {
    match piece {
        PieceType::Bf16 => Some(Dtype::BF16),
        PieceType::U8 => Some(Dtype::U8),
        _ => None,
    }
}

/// The little-endian bytes of packed momentum `key` (bf16 values or 8-bit codes), in this
/// machine's order; its dtype must be `dtype` exactly (a packed format is never converted).
fn read_packed(
    file: &SafeTensors<'_>,
    (key, dtype): (&str, Dtype),
    dims: &[usize],
    owner: (usize, &str),
) -> Result<Vec<u8>, CheckpointError> {
    let expected = if dtype == Dtype::U8 { "U8" } else { "BF16" };
    let view = checked_view(file, key, dims, owner, (|d| d == dtype, expected))?;
    Ok(swap_to_little_endian(dtype, view.data()))
}

/// Tensor `key`, which belongs to registered tensor `(index, name)`, once its dtype is one
/// `accepts` takes ([`CheckpointError::WrongDtype`] naming `expected` otherwise) and its shape is
/// `dims`, with data of that length.
fn checked_view<'f>(
    file: &SafeTensors<'f>,
    key: &str,
    dims: &[usize],
    (index, name): (usize, &str),
    (accepts, expected): (impl Fn(Dtype) -> bool, &'static str),
) -> Result<TensorView<'f>, CheckpointError> {
    let view = file
        .tensor(key)
        .map_err(|_| CheckpointError::MissingKey(key.to_string()))?;
    if !accepts(view.dtype()) {
        return Err(CheckpointError::WrongDtype {
            key: key.to_string(),
            expected,
            found: dtype_name(view.dtype()),
        });
    }
    if view.shape() != dims {
        return Err(CheckpointError::ShapeMismatch {
            index,
            name: name.to_string(),
            key: key.to_string(),
            optimizer: dims.to_vec(),
            file: view.shape().to_vec(),
        });
    }
    let numel: usize = dims.iter().product();
    if view.data().len() != numel * view.dtype().bitsize() / 8 {
        return Err(CheckpointError::Format(format!(
            "{key}: data length does not match its shape"
        )));
    }
    Ok(view)
}

/// The values of tensor `key`, which belongs to registered tensor `(index, name)`.
///
/// A tensor stored in another dtype is converted where every value of the file's dtype is one
/// of `E` (bf16 or f16 into f32 or f64, f32 into f64), and refused otherwise
/// ([`CheckpointError::WrongDtype`]): nothing is ever rounded on load.
fn read_tensor<E: Element>(
    file: &SafeTensors<'_>,
    key: &str,
    dims: &[usize],
    owner: (usize, &str),
) -> Result<Vec<E>, CheckpointError> {
    let accepts = |d| d == dtype_of::<E>() || widens_to::<E>(d);
    let view = checked_view(file, key, dims, owner, (accepts, dtype_label::<E>()))?;
    let widens = widens_to::<E>(view.dtype());
    Ok(if widens {
        widen(view.dtype(), view.data())
    } else {
        decode(view.data())
    })
}
