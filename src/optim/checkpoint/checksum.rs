//! Checksums that let a load find any changed byte before anything is changed: one CRC-32 per
//! tensor (`crc32.<tensor>` metadata) and one over every other metadata entry
//! (`crc32.metadata`, over `key`, a zero byte, `value`, a zero byte, in key order).

use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};

use safetensors::tensor::SafeTensors;

use super::CheckpointError;

const PREFIX: &str = "crc32.";
const METADATA: &str = "crc32.metadata";

fn crc(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

fn metadata_crc(meta: &BTreeMap<String, String>) -> String {
    let mut hasher = crc32fast::Hasher::new();
    for (k, v) in meta.iter().filter(|(k, _)| *k != METADATA) {
        hasher.update(k.as_bytes());
        hasher.update(&[0]);
        hasher.update(v.as_bytes());
        hasher.update(&[0]);
    }
    format!("{:08x}", hasher.finalize())
}

/// Adds the checksums of `tensors` and of the metadata to `meta`.
pub(super) fn sign<'a>(
    meta: &mut BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, &'a [u8])>,
) {
    for (key, data) in tensors {
        meta.insert(format!("{PREFIX}{key}"), crc(data));
    }
    let all = metadata_crc(meta);
    meta.insert(METADATA.to_string(), all);
}

/// Whether a metadata key is a checksum.
pub(super) fn is_checksum(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// Checks every checksum of a file that has them; a file without any (written before they
/// existed, or converted from PyTorch) is taken as it is.
pub(super) fn verify(
    meta: &BTreeMap<String, String>,
    file: &SafeTensors<'_>,
) -> Result<(), CheckpointError> {
    if !meta.keys().any(|k| is_checksum(k)) {
        return Ok(());
    }
    let corrupt = |key: &str| CheckpointError::Corrupt {
        key: key.to_string(),
    };
    if meta.get(METADATA) != Some(&metadata_crc(meta)) {
        return Err(corrupt("metadata"));
    }
    let mut names = file.names();
    names.sort_unstable();
    for name in names {
        let view = file.tensor(name).map_err(|_| corrupt(name))?;
        if meta.get(&format!("{PREFIX}{name}")) != Some(&crc(view.data())) {
            return Err(corrupt(name));
        }
    }
    // a checksum whose tensor is gone
    for key in meta.keys().filter(|k| is_checksum(k) && *k != METADATA) {
        let name = &key[PREFIX.len()..];
        if file.tensor(name).is_err() {
            return Err(CheckpointError::MissingKey(name.to_string()));
        }
    }
    Ok(())
}
