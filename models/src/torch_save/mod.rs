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
/// A zip entry may expand at most this many times (`torch.save` stores entries uncompressed;
/// a compressed archive made by hand stays far below it, a zip bomb far above).
pub const MAX_EXPANSION: u64 = 16;
/// A view may claim more elements than its storage holds (a broadcast view: stride 0) up to
/// this many bytes; a crafted 1.5 KB file otherwise claims gigabytes of a 16-byte storage.
pub const MAX_VIEW_BYTES: usize = 64 << 20;
/// No tensor is larger, whatever its storage (resnet50's largest weight is 9.4 MB).
pub const MAX_TENSOR_BYTES: usize = 4 << 30;

/// An opened `torch.save` archive: the evaluated pickle and the storages behind its tensors.
pub struct Archive<R> {
    zip: zip::ZipArchive<R>,
    prefix: String,
    pub root: Value,
    storages: HashMap<String, Vec<u8>>,
    max_storage_bytes: u64,
    /// Bytes the storages read so far may still grow by: the file's length × [`MAX_EXPANSION`].
    budget: u64,
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let claimed = f.size();
    if claimed > limit {
        return Err(format!("{name}: {claimed} bytes is more than {limit}"));
    }
    if claimed > f.compressed_size().saturating_mul(MAX_EXPANSION).max(4096) {
        return Err(format!(
            "{name}: {} compressed bytes claim to expand to {claimed} (more than {MAX_EXPANSION}×)",
            f.compressed_size()
        ));
    }
    // The declared size is the archive's word, not a fact: past 64 MiB the buffer grows as
    // bytes arrive, and no more than it declared are read.
    let mut buf = Vec::with_capacity(claimed.min(64 << 20) as usize);
    f.take(claimed)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{name}: {e}"))?;
    if buf.len() as u64 != claimed {
        return Err(format!(
            "{name}: {} of its {claimed} bytes (truncated)",
            buf.len()
        ));
    }
    Ok(buf)
}

impl<R: Read + Seek> Archive<R> {
    pub fn open(mut reader: R) -> Result<Self, String> {
        let length = reader
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| e.to_string())?;
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
            budget: length.saturating_mul(MAX_EXPANSION),
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
            let limit = self.max_storage_bytes.min(self.budget);
            let bytes = read_entry(&mut self.zip, &name, limit)?;
            self.budget -= bytes.len() as u64;
            self.storages.insert(key.to_string(), bytes);
        }
        Ok(&self.storages[key])
    }

    /// The tensor's values, copied out of its storage in row-major order: f32 for every floating
    /// type but f64 (f16 and bf16 widen exactly), i64 for the integer and bool types.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<TensorData, String> {
        let size = t.dtype.size();
        let end = storage_end(t).ok_or("a tensor's shape overflows")?;
        let bytes = t
            .shape
            .iter()
            .try_fold(size, |acc, &n| acc.checked_mul(n))
            .filter(|&b| b <= MAX_TENSOR_BYTES)
            .ok_or_else(|| {
                format!(
                    "a tensor of shape {:?} is larger than {MAX_TENSOR_BYTES} bytes",
                    t.shape
                )
            })?;
        let storage = self.storage(&t.key)?;
        if end.checked_mul(size).is_none_or(|b| b > storage.len()) {
            return Err(format!(
                "a tensor reaches past its storage `{}` ({} bytes)",
                t.key,
                storage.len()
            ));
        }
        if bytes > storage.len().max(MAX_VIEW_BYTES) {
            return Err(format!(
                "a tensor of shape {:?} claims {bytes} bytes of a {}-byte storage `{}` (a view \
                 repeating it is allowed up to {MAX_VIEW_BYTES} bytes)",
                t.shape,
                storage.len(),
                t.key
            ));
        }
        let mut elements = Vec::with_capacity(bytes);
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

    /// A `torch.save` archive whose pickle is `code`, with one storage `data/0`.
    fn archive(code: &[u8], storage: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in [("a/data.pkl", code), ("a/data/0", storage)] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// The pickle of one float tensor (as `torch.save(t)` writes it) with `shape` and `stride`
    /// over storage `0`.
    fn tensor_pickle(shape: &[usize], stride: &[usize]) -> Vec<u8> {
        let long = |code: &mut Vec<u8>, v: usize| {
            code.extend([0x8a, 8]);
            code.extend((v as i64).to_le_bytes());
        };
        let mut code = vec![0x80, 2];
        code.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        code.extend(b"\x8c\x07storagectorch\nFloatStorage\n\x8c\x010\x8c\x03cpu");
        long(&mut code, 4);
        code.extend(b"tQ");
        long(&mut code, 0);
        for dims in [shape, stride] {
            code.push(b'(');
            for &d in dims {
                long(&mut code, d);
            }
            code.push(b't');
        }
        code.extend(b"\x89ccollections\nOrderedDict\n)RtR.");
        code
    }

    fn read(bytes: Vec<u8>) -> Result<TensorData, String> {
        let mut a = Archive::open(std::io::Cursor::new(bytes))?;
        let Value::Tensor(t) = &a.root else {
            return Err("not a tensor".into());
        };
        let t = t.clone();
        a.tensor(&t)
    }

    const STORED: zip::CompressionMethod = zip::CompressionMethod::Stored;

    /// `torch.zeros(4).as_strided((2**20, 2**10), (0, 0))`: a legal view (torch.load returns it
    /// without copying) that would make the reader allocate 4 GiB.
    #[test]
    fn a_broadcast_view_cannot_claim_gigabytes_of_a_small_storage() {
        let bytes = archive(
            &tensor_pickle(&[1 << 20, 1 << 10], &[0, 0]),
            &[0; 16],
            STORED,
        );
        let err = read(bytes).unwrap_err();
        assert!(
            err.contains("claims") && err.contains("16-byte storage"),
            "{err}"
        );
    }

    /// (2**31, 2**31) elements: the byte count overflows `usize` arithmetic on the way.
    #[test]
    fn a_shape_past_any_tensor_is_refused_before_allocation() {
        let bytes = archive(
            &tensor_pickle(&[1 << 31, 1 << 31, 1 << 31], &[0, 0, 0]),
            &[0; 16],
            STORED,
        );
        let err = read(bytes).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    /// A small broadcast view (an expanded buffer) is still read, its values repeated.
    #[test]
    fn a_small_broadcast_view_is_read() {
        let storage: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = read(archive(&tensor_pickle(&[3, 4], &[0, 1]), &storage, STORED)).unwrap();
        assert_eq!(t.shape, vec![3, 4]);
        assert_eq!(&t.to_f32()[4..8], &[1.0, 2.0, 3.0, 4.0]);
    }

    /// 64 MiB of zeros deflate to 64 KiB: more than the whole file may expand to.
    #[test]
    fn a_zip_bomb_is_refused_before_it_expands() {
        let bytes = archive(
            &tensor_pickle(&[4], &[1]),
            &vec![0u8; 64 << 20],
            zip::CompressionMethod::Deflated,
        );
        assert!(bytes.len() < 1 << 20);
        let err = read(bytes).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    /// The same storage in a file padded to 8 MiB (whose budget would hold it): refused for its
    /// own expansion.
    #[test]
    fn an_entry_may_not_expand_more_than_the_bound() {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(STORED);
        let deflated = stored.compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("a/data.pkl", stored).unwrap();
        zip.write_all(&tensor_pickle(&[4], &[1])).unwrap();
        zip.start_file("a/data/0", deflated).unwrap();
        zip.write_all(&vec![0u8; 64 << 20]).unwrap();
        zip.start_file("a/padding", stored).unwrap();
        zip.write_all(&vec![7u8; 8 << 20]).unwrap();
        let err = read(zip.finish().unwrap().into_inner()).unwrap_err();
        assert!(err.contains("expand"), "{err}");
    }

    /// A storage whose entry holds fewer bytes than the tensor reads.
    #[test]
    fn a_tensor_past_its_storage_is_refused() {
        let err = read(archive(&tensor_pickle(&[8], &[1]), &[0; 16], STORED)).unwrap_err();
        assert!(err.contains("past its storage"), "{err}");
    }
}
