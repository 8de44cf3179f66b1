//! Bytes in and out of a checkpoint file: tensors as little-endian bytes, a header in a fixed
//! order, the check that a file is complete, and atomic writes.

use std::borrow::Cow;
use std::format;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use safetensors::tensor::{Dtype, View};
use serde_json::Value;

use super::CheckpointError;
use half::{bf16, f16};

use crate::Element;

/// The safetensors dtype of `E`.
pub(super) fn dtype_of<E: Element>() -> Dtype {
    match E::DTYPE {
        "float64" => Dtype::F64,
        "bfloat16" => Dtype::BF16,
        "float16" => Dtype::F16,
        _ => Dtype::F32,
    }
}

/// The safetensors name of `E`'s dtype (`F32`, `F64`, `BF16`, `F16`).
pub(super) fn dtype_label<E: Element>() -> &'static str {
    match E::DTYPE {
        "float64" => "F64",
        "bfloat16" => "BF16",
        "float16" => "F16",
        _ => "F32",
    }
}

/// Whether every value of `dtype` is exactly a value of `E` (another dtype than `E`'s own).
pub(super) fn widens_to<E: Element>(dtype: Dtype) -> bool {
    matches!(
        (dtype, dtype_of::<E>()),
        (Dtype::BF16 | Dtype::F16, Dtype::F32 | Dtype::F64) | (Dtype::F32, Dtype::F64)
    )
}

/// The little-endian values of a `dtype` tensor as `E`s, which hold them exactly
/// ([`widens_to`]).
pub(super) fn widen<E: Element>(dtype: Dtype, bytes: &[u8]) -> Vec<E> {
    let exact = |x: f64| E::from_compute(<E::Compute as crate::Float>::from_f64(x));
    match dtype {
        Dtype::BF16 => decode::<bf16>(bytes)
            .into_iter()
            .map(|v| exact(v.to_f64()))
            .collect(),
        Dtype::F16 => decode::<f16>(bytes)
            .into_iter()
            .map(|v| exact(v.to_f64()))
            .collect(),
        _ => decode::<f32>(bytes)
            .into_iter()
            .map(|v| exact(f64::from(v)))
            .collect(),
    }
}

/// The file with its JSON header rewritten with every object's keys in order, so that the
/// same state gives the same bytes (safetensors writes its metadata in a hash map's order).
/// The header is padded with spaces to a multiple of 8 bytes, as safetensors pads it.
pub(super) fn canonical(bytes: &[u8]) -> Result<Vec<u8>, CheckpointError> {
    let bad = |e: &dyn std::fmt::Display| CheckpointError::Format(e.to_string());
    let n = header_len(bytes).ok_or_else(|| bad(&"no header length"))?;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(&e))?;
    let mut text = String::new();
    write_sorted(&header, &mut text);
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// JSON with every object's keys sorted.
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                write_sorted(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The header length a file declares, if the file has its 8 bytes and the header.
fn header_len(bytes: &[u8]) -> Option<usize> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    (bytes.len() >= n.checked_add(8)?).then_some(n)
}

/// [`CheckpointError::Truncated`] if the file ends before its header length, its header, or
/// the data its header places (the first tensor that does not fit is named).
pub(super) fn check_complete(bytes: &[u8]) -> Result<(), CheckpointError> {
    let truncated = |needed: usize, place: String| CheckpointError::Truncated {
        actual: bytes.len(),
        needed,
        place,
    };
    let Some(len) = bytes.get(..8) else {
        return Err(truncated(8, "the header length".to_string()));
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let needed = usize::try_from(n).ok().and_then(|n| n.checked_add(8));
    match needed {
        Some(needed) if needed <= bytes.len() => {}
        // a length that cannot be real is a corrupt header, not a cut file
        Some(needed) if needed <= 1 << 30 => {
            return Err(truncated(needed, "the header".to_string()));
        }
        _ => return Ok(()),
    }
    let start = 8 + usize::try_from(n).unwrap_or(0);
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes[8..start]) else {
        return Ok(()); // not JSON: the parser says what is wrong
    };
    let mut ends: Vec<(u64, &String)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, v)| Some((v.get("data_offsets")?.get(1)?.as_u64()?, k)))
        .collect();
    ends.sort();
    for (end, name) in ends {
        let needed = usize::try_from(end).ok().and_then(|e| e.checked_add(start));
        if needed.is_none_or(|needed| needed > bytes.len()) {
            let needed = needed.unwrap_or(usize::MAX);
            return Err(truncated(needed, format!("tensor {name:?}")));
        }
    }
    Ok(())
}

/// A tensor to write: dtype, shape and little-endian bytes.
pub(super) struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    pub(super) data: Vec<u8>,
}

impl Bytes {
    pub(super) fn new<E: Element>(shape: Vec<usize>, values: &[E]) -> Self {
        Self::raw(dtype_of::<E>(), shape, bytemuck::cast_slice(values))
    }

    /// A tensor of `dtype` from its values' bytes in this machine's order (written
    /// little-endian, as safetensors stores them).
    pub(super) fn raw(dtype: Dtype, shape: Vec<usize>, native: &[u8]) -> Self {
        let data = swap_to_little_endian(dtype, native);
        Self { dtype, shape, data }
    }
}

/// Values of `dtype` as bytes in this machine's order turned into little-endian ones, or back
/// (the same swap both ways; nothing to do on a little-endian machine).
pub(super) fn swap_to_little_endian(dtype: Dtype, bytes: &[u8]) -> Vec<u8> {
    let mut data = bytes.to_vec();
    if cfg!(target_endian = "big") {
        for v in data.chunks_exact_mut(dtype.bitsize() / 8) {
            v.reverse();
        }
    }
    data
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

/// Little-endian values of `E` (or of any plain-old-data type).
pub(super) fn decode<E: bytemuck::Pod>(bytes: &[u8]) -> Vec<E> {
    bytes
        .chunks_exact(size_of::<E>())
        .map(|b| {
            let mut v = b.to_vec();
            if cfg!(target_endian = "big") {
                v.reverse();
            }
            bytemuck::pod_read_unaligned(&v)
        })
        .collect()
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, then renamed
/// over `path`, so a crash at any point leaves either the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Came, CameConfig, Optimizer};
    use std::string::ToString;
    use std::vec;

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
