//! Bytes in and out of a checkpoint file: tensors as little-endian bytes, and atomic writes.

use std::borrow::Cow;
use std::format;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use safetensors::tensor::{Dtype, View};

use crate::Float;

/// The safetensors dtype of `T`.
pub(super) fn dtype_of<T: Float>() -> Dtype {
    if size_of::<T>() == 4 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// A tensor to write: dtype, shape and little-endian bytes.
pub(super) struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Bytes {
    pub(super) fn new<T: Float>(shape: Vec<usize>, values: &[T]) -> Self {
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

pub(super) fn decode<T: Float>(bytes: &[u8]) -> Vec<T> {
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

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, then renamed
/// over `path`, so a crash at any point leaves either the old file or the new one.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
