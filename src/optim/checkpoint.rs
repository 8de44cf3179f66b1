//! Checkpoints as `.safetensors` files, in the layout of the reference's mid-run files.
//!
//! Tensors `state.<i>.<key>` (the reference's state names, `i` the tensor's registration
//! position) and optionally `param.<i>`; metadata `optimizer`, `config` (JSON of group 0),
//! `step.<i>`, `shape.<i>` (JSON), and, written by this crate, `groups` (JSON array of every
//! group's config), `group.<i>`, `name.<i>` and `source`. A file written by came-pytorch's
//! conversion script (`scripts/convert_checkpoint.py`) or by the reference fixtures has only the
//! first set; the rest default to one group and unchecked names.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::format;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde_json::Value;

use super::rule::sealed::RuleImpl;
use super::{Optimizer, Rule};
use crate::{Error, Float};

/// Why a checkpoint could not be saved or loaded. A failed load leaves the optimizer (and the
/// parameters passed to it) exactly as they were.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// Not a valid safetensors file: truncated, a corrupt header, offsets out of range.
    Format(String),
    /// The file holds another optimizer's state (`optimizer` metadata).
    WrongOptimizer {
        /// This optimizer's name.
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// A tensor or metadata entry the optimizer needs is missing.
    MissingKey(String),
    /// A tensor or metadata entry the optimizer does not know (another model's checkpoint,
    /// more tensors than are registered, a typo).
    UnknownKey(String),
    /// A tensor is stored in another dtype than the optimizer's.
    WrongDtype {
        /// The tensor.
        key: String,
        /// The optimizer's dtype.
        expected: &'static str,
        /// The file's.
        found: String,
    },
    /// A tensor's shape disagrees with the registered tensor's.
    ShapeMismatch {
        /// The tensor (or `shape.<i>` metadata).
        key: String,
        /// The registered shape.
        expected: Vec<usize>,
        /// The file's.
        found: Vec<usize>,
    },
    /// A metadata entry cannot be parsed or contradicts the optimizer (group count, a name).
    BadMetadata {
        /// The entry.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state tensor holds a NaN or an infinity.
    NonFinite {
        /// The tensor.
        key: String,
    },
    /// A second-moment statistic (every state tensor but `exp_avg`) holds a negative value:
    /// they are averages of squares, so the file is corrupt.
    NegativeStatistic {
        /// The tensor.
        key: String,
    },
    /// A config in the file is invalid.
    Config(Error),
    /// The parameter slices passed do not match the registered tensors.
    Params {
        /// The first tensor that does not match, or the count when the count is wrong.
        tensor: usize,
        /// Elements (or tensors) expected.
        expected: usize,
        /// Elements (or tensors) passed.
        actual: usize,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io(e) => write!(f, "checkpoint i/o: {e}"),
            CheckpointError::Format(e) => write!(f, "not a valid safetensors file: {e}"),
            CheckpointError::WrongOptimizer { expected, found } => {
                write!(
                    f,
                    "checkpoint of optimizer {found:?}, expected {expected:?}"
                )
            }
            CheckpointError::MissingKey(k) => write!(f, "checkpoint lacks {k:?}"),
            CheckpointError::UnknownKey(k) => write!(f, "checkpoint has unknown entry {k:?}"),
            CheckpointError::WrongDtype {
                key,
                expected,
                found,
            } => write!(f, "{key}: dtype {found}, expected {expected}"),
            CheckpointError::ShapeMismatch {
                key,
                expected,
                found,
            } => write!(f, "{key}: shape {found:?}, expected {expected:?}"),
            CheckpointError::BadMetadata { key, reason } => write!(f, "metadata {key}: {reason}"),
            CheckpointError::NonFinite { key } => write!(f, "{key} holds a NaN or an infinity"),
            CheckpointError::NegativeStatistic { key } => {
                write!(
                    f,
                    "{key} is a second-moment statistic but holds a negative value"
                )
            }
            CheckpointError::Config(e) => write!(f, "checkpoint config: {e}"),
            CheckpointError::Params {
                tensor,
                expected,
                actual,
            } => write!(
                f,
                "parameters: tensor {tensor} has {actual} elements (or tensors), expected {expected}"
            ),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io(e) => Some(e),
            CheckpointError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for CheckpointError {
    fn from(e: io::Error) -> Self {
        CheckpointError::Io(e)
    }
}

fn dtype_of<T: Float>() -> Dtype {
    if size_of::<T>() == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// A tensor to write: dtype, shape and little-endian bytes.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Bytes {
    fn new<T: Float>(shape: Vec<usize>, values: &[T]) -> Self {
        let mut data = Vec::with_capacity(size_of_val(values));
        for &v in values {
            if size_of::<T>() == 4 {
                data.extend_from_slice(&(v.as_f64() as f32).to_le_bytes());
            } else {
                data.extend_from_slice(&v.as_f64().to_le_bytes());
            }
        }
        Self {
            dtype: dtype_of::<T>(),
            shape,
            data,
        }
    }
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn decode<T: Float>(bytes: &[u8]) -> Vec<T> {
    if size_of::<T>() == 4 {
        bytes
            .chunks_exact(4)
            .map(|b| T::from_f64(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))))
            .collect()
    } else {
        bytes
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                T::from_f64(f64::from_le_bytes(a))
            })
            .collect()
    }
}

fn json_string(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, then renamed
/// over `path`, so a crash at any point leaves either the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_until(path, bytes, None)
}

/// [`write_atomic`], stopping (like a crash) after `crash_after` bytes when given.
fn write_atomic_until(path: &Path, bytes: &[u8], crash_after: Option<usize>) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        match crash_after {
            Some(n) => {
                file.write_all(&bytes[..n.min(bytes.len())])?;
                return Err(io::Error::other("simulated crash during save"));
            }
            None => file.write_all(bytes)?,
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // make the rename itself durable where the platform allows it
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() && crash_after.is_none() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// A tensor's state and metadata read from a file, not yet committed.
struct Staged<T> {
    state: Vec<T>,
    step: u64,
    param: Option<Vec<T>>,
}

impl<T: Float, C: Rule> Optimizer<T, C> {
    /// Saves the whole optimizer state to `path`, atomically.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if the file cannot be written; the previous file at `path`, if
    /// any, is then untouched.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let bytes = self.to_safetensors(None)?;
        Ok(write_atomic(path.as_ref(), &bytes)?)
    }

    /// [`Optimizer::save`], with the parameters too (`param.<i>`, in registration order), so
    /// the file alone resumes a run.
    ///
    /// # Errors
    /// [`CheckpointError::Params`] if `params` does not match the registered tensors;
    /// [`CheckpointError::Io`].
    pub fn save_with_params(
        &self,
        path: impl AsRef<Path>,
        params: &[&[T]],
    ) -> Result<(), CheckpointError> {
        let bytes = self.to_safetensors(Some(params))?;
        Ok(write_atomic(path.as_ref(), &bytes)?)
    }

    /// The checkpoint as the bytes of a `.safetensors` file.
    ///
    /// # Errors
    /// [`CheckpointError::Params`] if `params` does not match the registered tensors;
    /// [`CheckpointError::Format`] if serialisation fails.
    pub fn to_safetensors(&self, params: Option<&[&[T]]>) -> Result<Vec<u8>, CheckpointError> {
        if let Some(params) = params {
            self.check_params(params.iter().map(|p| p.len()))?;
        }
        let mut meta = HashMap::new();
        meta.insert("optimizer".to_string(), C::NAME.to_string());
        meta.insert(
            "source".to_string(),
            concat!("came (Rust) ", env!("CARGO_PKG_VERSION")).to_string(),
        );
        meta.insert("config".to_string(), json_string(&self.groups[0].to_json()));
        let groups: Vec<Value> = self.groups.iter().map(RuleImpl::to_json).collect();
        meta.insert("groups".to_string(), json_string(&Value::from(groups)));
        let mut tensors: Vec<(String, Bytes)> = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            meta.insert(format!("step.{i}"), t.step.to_string());
            meta.insert(
                format!("shape.{i}"),
                json_string(&Value::from(t.dims.clone())),
            );
            meta.insert(format!("group.{i}"), t.group.to_string());
            meta.insert(format!("name.{i}"), t.name.clone());
            for piece in C::pieces(&t.dims, &t.shape) {
                let values = &t.state[piece.range];
                tensors.push((
                    format!("state.{i}.{}", piece.key),
                    Bytes::new(piece.dims, values),
                ));
            }
            if let Some(params) = params {
                tensors.push((format!("param.{i}"), Bytes::new(t.dims.clone(), params[i])));
            }
        }
        let views = tensors.iter().map(|(k, b)| (k.as_str(), b));
        safetensors::serialize(views, Some(meta))
            .map_err(|e| CheckpointError::Format(e.to_string()))
    }

    /// Loads a checkpoint written by [`Optimizer::save`] or in the reference's layout; the
    /// registered tensors must match the file's, in order and shape. Parameters stored in the
    /// file are ignored (see [`Optimizer::load_with_params`]). Group configs are replaced by
    /// the file's, as PyTorch's `load_state_dict` does.
    ///
    /// # Errors
    /// Any [`CheckpointError`]; on error nothing is changed.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let bytes = fs::read(path)?;
        self.load_safetensors(&bytes, None)
    }

    /// [`Optimizer::load`], also restoring the parameters from the file's `param.<i>`.
    ///
    /// # Errors
    /// Any [`CheckpointError`] ([`CheckpointError::MissingKey`] if the file has no
    /// parameters); on error neither the optimizer nor `params` is changed.
    pub fn load_with_params(
        &mut self,
        path: impl AsRef<Path>,
        params: &mut [&mut [T]],
    ) -> Result<(), CheckpointError> {
        let bytes = fs::read(path)?;
        self.load_safetensors(&bytes, Some(params))
    }

    /// Loads a checkpoint from the bytes of a `.safetensors` file (see [`Optimizer::load`]).
    ///
    /// # Errors
    /// Any [`CheckpointError`]; on error neither the optimizer nor `params` is changed.
    pub fn load_safetensors(
        &mut self,
        bytes: &[u8],
        params: Option<&mut [&mut [T]]>,
    ) -> Result<(), CheckpointError> {
        if let Some(p) = &params {
            self.check_params(p.iter().map(|p| p.len()))?;
        }
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| CheckpointError::Format(e.to_string()))?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let groups = self.read_groups(&meta)?;
        let want_params = params.is_some();
        let mut known_meta: BTreeSet<String> = ["optimizer", "source", "config", "groups"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let mut known_tensors = BTreeSet::new();
        let mut staged = Vec::with_capacity(self.tensors.len());
        for i in 0..self.tensors.len() {
            for key in ["step", "shape", "group", "name"] {
                known_meta.insert(format!("{key}.{i}"));
            }
            staged.push(self.stage(i, &file, &meta, want_params, &mut known_tensors)?);
        }
        if let Some(k) = meta.keys().find(|k| !known_meta.contains(*k)) {
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
        self.groups = groups;
        for (t, s) in self.tensors.iter_mut().zip(&mut staged) {
            t.state = core::mem::take(&mut s.state);
            t.step = s.step;
            t.pending = None;
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
    ) -> Result<Staged<T>, CheckpointError> {
        let t = &self.tensors[i];
        let shape_key = format!("shape.{i}");
        let dims = parse_dims(&shape_key, meta_get(meta, &shape_key)?)?;
        if dims != t.dims {
            return Err(CheckpointError::ShapeMismatch {
                key: shape_key,
                expected: t.dims.clone(),
                found: dims,
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
        let mut state = vec![T::zero(); t.state.len()];
        for piece in C::pieces(&t.dims, &t.shape) {
            let key = format!("state.{i}.{}", piece.key);
            let values = read_tensor::<T>(file, &key, &piece.dims)?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(CheckpointError::NonFinite { key });
            }
            if piece.key != "exp_avg" && values.iter().any(|&v| v < T::zero()) {
                return Err(CheckpointError::NegativeStatistic { key });
            }
            state[piece.range].copy_from_slice(&values);
            known_tensors.insert(key);
        }
        let param_key = format!("param.{i}");
        known_tensors.insert(param_key.clone());
        let param = if want_params {
            Some(read_tensor::<T>(file, &param_key, &t.dims)?)
        } else {
            None
        };
        Ok(Staged { state, step, param })
    }

    fn check_params(
        &self,
        lens: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), CheckpointError> {
        if lens.len() != self.tensors.len() {
            return Err(CheckpointError::Params {
                tensor: self.tensors.len(),
                expected: self.tensors.len(),
                actual: lens.len(),
            });
        }
        for (i, (len, t)) in lens.zip(&self.tensors).enumerate() {
            if len != t.shape.numel() {
                return Err(CheckpointError::Params {
                    tensor: i,
                    expected: t.shape.numel(),
                    actual: len,
                });
            }
        }
        Ok(())
    }

    /// The groups a file holds: `groups` if present, else the one `config`.
    fn read_groups(&self, meta: &BTreeMap<String, String>) -> Result<Vec<C>, CheckpointError> {
        let optimizer = meta_get(meta, "optimizer")?;
        if optimizer != C::NAME {
            return Err(CheckpointError::WrongOptimizer {
                expected: C::NAME,
                found: optimizer.clone(),
            });
        }
        let parse = |key: &str, v: &Value| -> Result<C, CheckpointError> {
            let c = C::from_json(v).ok_or_else(|| bad(key, "not a config of this optimizer"))?;
            c.validate().map_err(CheckpointError::Config)?;
            Ok(c)
        };
        let config_json: Value = serde_json::from_str(meta_get(meta, "config")?)
            .map_err(|e| bad("config", &e.to_string()))?;
        let config = parse("config", &config_json)?;
        let groups = match meta.get("groups") {
            None => vec![config],
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
                groups
            }
        };
        if groups.len() != self.groups.len() {
            return Err(bad(
                "groups",
                &format!(
                    "the file has {} parameter groups, the optimizer {}",
                    groups.len(),
                    self.groups.len()
                ),
            ));
        }
        Ok(groups)
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

fn read_tensor<T: Float>(
    file: &SafeTensors<'_>,
    key: &str,
    dims: &[usize],
) -> Result<Vec<T>, CheckpointError> {
    let view = file
        .tensor(key)
        .map_err(|_| CheckpointError::MissingKey(key.to_string()))?;
    if view.dtype() != dtype_of::<T>() {
        return Err(CheckpointError::WrongDtype {
            key: key.to_string(),
            expected: T::DTYPE,
            found: dtype_name(view.dtype()),
        });
    }
    if view.shape() != dims {
        return Err(CheckpointError::ShapeMismatch {
            key: key.to_string(),
            expected: dims.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let numel: usize = dims.iter().product();
    if view.data().len() != numel * size_of::<T>() {
        return Err(CheckpointError::Format(format!(
            "{key}: data length does not match its shape"
        )));
    }
    Ok(decode(view.data()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Came, CameConfig};

    #[test]
    fn a_crash_during_save_leaves_the_previous_checkpoint() {
        let dir = std::env::temp_dir().join(format!("came-crash-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("opt.safetensors");
        let mut opt = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
        opt.register("w", &[3, 4]).unwrap();
        let mut w = vec![1.0f32; 12];
        opt.step(&mut [(&mut w, &[0.5f32; 12])]).unwrap();
        opt.save(&path).unwrap();
        let before = fs::read(&path).unwrap();

        opt.step(&mut [(&mut w, &[0.25f32; 12])]).unwrap();
        let newer = opt.to_safetensors(None).unwrap();
        for cut in [0, 8, newer.len() / 2, newer.len() - 1] {
            let err = write_atomic_until(&path, &newer, Some(cut)).unwrap_err();
            assert!(err.to_string().contains("simulated crash"));
            // the old checkpoint is intact and loads
            assert_eq!(fs::read(&path).unwrap(), before);
            let mut fresh = Came::<f32>::new(CameConfig::new(1e-2)).unwrap();
            fresh.register("w", &[3, 4]).unwrap();
            fresh.load(&path).unwrap();
            assert_eq!(fresh.tensor(crate::optim::TensorId(0)).unwrap().step, 1);
        }
        // the half-written temporary file is what a crash leaves behind
        assert!(temp_path(&path).exists());
        write_atomic(&path, &newer).unwrap();
        assert_eq!(fs::read(&path).unwrap(), newer);
        assert!(!temp_path(&path).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
