//! Files written by `torch.save` (the zip format of PyTorch ≥ 1.6), read without libtorch and
//! without executing their pickle: the official MoCo `checkpoint_NNNN.pth.tar`, torchvision
//! `state_dict` files (`.pth`, `.pt`), Lightning `.ckpt` files, and the label tensors of the
//! competition layout.
//!
//! The pickle is evaluated by the restricted machine in [`pickle`]; tensors stay references into
//! the archive's storages until one is asked for, so a checkpoint's optimizer state is never read.

pub mod pickle;

use std::collections::HashMap;
use std::io::{Read, Seek};

pub use pickle::{StorageDtype, TensorRef, Value};

use crate::weights::{widen_half, DType, Half, TensorData};

/// What the first bytes of a weight file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Safetensors,
    /// `torch.save` since PyTorch 1.6: a zip archive.
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)` or PyTorch < 1.6: a bare pickle
    /// stream whose tensors follow it unframed.
    TorchLegacy,
    Unknown,
}

pub fn sniff(head: &[u8]) -> FileKind {
    if head.starts_with(b"PK\x03\x04") {
        FileKind::TorchZip
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        FileKind::TorchLegacy
    } else if head.len() >= 9 && head[8] == b'{' {
        FileKind::Safetensors
    } else {
        FileKind::Unknown
    }
}

pub const LEGACY_MESSAGE: &str = "written by torch.save in the legacy format (PyTorch < 1.6 or \
     _use_new_zipfile_serialization=False), which is not read here: load it in PyTorch and \
     torch.save it again";

/// The pickle of a saved object is bounded (a resnet50 checkpoint's is ≈ 200 kB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// One storage's bytes are bounded by its zip entry, itself bounded here.
const MAX_STORAGE_BYTES: u64 = 16 << 30;

/// An opened `torch.save` archive: the evaluated pickle and the storages behind its tensors.
pub struct Archive<R> {
    zip: zip::ZipArchive<R>,
    prefix: String,
    pub root: Value,
    storages: HashMap<String, Vec<u8>>,
    max_storage_bytes: u64,
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    if f.size() > limit {
        return Err(format!("{name}: {} bytes is more than {limit}", f.size()));
    }
    // The declared size is the archive's word, not a fact: past 64 MiB the buffer grows as
    // bytes arrive.
    let mut buf = Vec::with_capacity(f.size().min(64 << 20) as usize);
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(buf)
}

impl<R: Read + Seek> Archive<R> {
    pub fn open(reader: R) -> Result<Self, String> {
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| format!("not a torch.save zip archive: {e}"))?;
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        if names
            .iter()
            .any(|n| n.ends_with("/constants.pkl") || n.contains("/code/"))
        {
            return Err(
                "a TorchScript archive (torch.jit.save), not a torch.save file: save \
                        the model's state_dict() with torch.save"
                    .into(),
            );
        }
        let pkl = names
            .iter()
            .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
            .ok_or("no data.pkl in the archive: not written by torch.save")?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), 16) {
            if order != b"little" {
                return Err("big-endian tensors are not supported".into());
            }
        }
        let code = read_entry(&mut zip, pkl, MAX_PICKLE_BYTES)?;
        let root = pickle::evaluate(&code)?;
        Ok(Archive {
            zip,
            prefix,
            root,
            storages: HashMap::new(),
            max_storage_bytes: MAX_STORAGE_BYTES,
        })
    }

    /// A tighter bound on one storage's bytes, for files that are known to be small.
    pub fn with_storage_limit(mut self, bytes: u64) -> Self {
        self.max_storage_bytes = bytes;
        self
    }

    /// The storage's bytes, read once: views of one storage (tied weights, slices) share them.
    fn storage(&mut self, key: &str) -> Result<&[u8], String> {
        if !self.storages.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let bytes = read_entry(&mut self.zip, &name, self.max_storage_bytes)?;
            self.storages.insert(key.to_string(), bytes);
        }
        Ok(&self.storages[key])
    }

    /// The tensor's values, copied out of its storage in row-major order: f32 for every floating
    /// type but f64 (f16 and bf16 widen exactly), i64 for the integer and bool types.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<TensorData, String> {
        let size = t.dtype.size();
        let end = storage_end(t).ok_or("a tensor's shape overflows")?;
        let storage = self.storage(&t.key)?;
        if end.checked_mul(size).is_none_or(|b| b > storage.len()) {
            return Err(format!(
                "a tensor reaches past its storage `{}` ({} bytes)",
                t.key,
                storage.len()
            ));
        }
        let mut elements = Vec::with_capacity(t.shape.iter().product::<usize>() * size);
        for_each_index(&t.shape, &t.stride, t.offset, |i| {
            elements.extend_from_slice(&storage[i * size..(i + 1) * size])
        });
        Ok(convert(t.dtype, t.shape.clone(), &elements))
    }
}

/// One past the last element a view reads (0 for an empty tensor).
fn storage_end(t: &TensorRef) -> Option<usize> {
    if t.shape.contains(&0) {
        return Some(0);
    }
    t.shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        })?
        .checked_add(1)
}

/// Calls `f` with the storage index of every element of the view, in row-major order.
fn for_each_index(shape: &[usize], stride: &[usize], offset: usize, mut f: impl FnMut(usize)) {
    if shape.contains(&0) {
        return;
    }
    let mut at = vec![0usize; shape.len()];
    loop {
        f(offset + at.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>());
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            at[d] += 1;
            if at[d] < shape[d] {
                break;
            }
            at[d] = 0;
        }
    }
}

fn convert(dtype: StorageDtype, shape: Vec<usize>, e: &[u8]) -> TensorData {
    use StorageDtype as S;
    let int = |f: &dyn Fn(&[u8]) -> i64, w: usize| -> Vec<u8> {
        e.chunks_exact(w).flat_map(|c| f(c).to_le_bytes()).collect()
    };
    let (dtype, bytes) = match dtype {
        S::F32 => (DType::F32, e.to_vec()),
        S::F64 => (DType::F64, e.to_vec()),
        S::I64 => (DType::I64, e.to_vec()),
        S::F16 => (DType::F32, widen_half(e, Half::F16)),
        S::BF16 => (DType::F32, widen_half(e, Half::BF16)),
        S::I32 => (
            DType::I64,
            int(&|c| i32::from_le_bytes(c.try_into().unwrap()).into(), 4),
        ),
        S::I16 => (
            DType::I64,
            int(&|c| i16::from_le_bytes([c[0], c[1]]).into(), 2),
        ),
        S::I8 => (DType::I64, int(&|c| (c[0] as i8).into(), 1)),
        S::U8 | S::Bool => (DType::I64, int(&|c| c[0].into(), 1)),
    };
    TensorData {
        dtype,
        shape,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transposed_view_is_read_in_row_major_order() {
        let mut seen = vec![];
        // A [2, 3] storage seen as its [3, 2] transpose.
        for_each_index(&[3, 2], &[1, 3], 0, |i| seen.push(i));
        assert_eq!(seen, [0, 3, 1, 4, 2, 5]);
        let t = TensorRef {
            dtype: StorageDtype::F32,
            key: "0".into(),
            offset: 1,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(storage_end(&t), Some(7));
    }

    #[test]
    fn files_are_told_apart_by_their_first_bytes() {
        assert_eq!(sniff(b"PK\x03\x04rest"), FileKind::TorchZip);
        assert_eq!(sniff(&[0x80, 2, 0x8a, 10]), FileKind::TorchLegacy);
        assert_eq!(sniff(b"\x10\0\0\0\0\0\0\0{\"a\":1}"), FileKind::Safetensors);
        assert_eq!(sniff(b"hello"), FileKind::Unknown);
    }
}
