//! Named tensors on disk as safetensors, without libtorch: the one format every crate reads and
//! writes (the trainer through `models_tch::convert`, the exporter directly).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};
use crate::layers::{TensorRole, TensorSpec};

/// Element type kept in memory. Half-precision files are widened to f32 on load; f64 stays f64
/// (the trainer's float64 check mode checkpoints its state without rounding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    I64,
}

impl DType {
    fn safetensors(self) -> Dtype {
        match self {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::I64 => Dtype::I64,
        }
    }
}

/// The two 16-bit float formats, kept as f32 in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    F16,
    BF16,
}

/// Little-endian half-precision values as little-endian f32 bytes (exact: every f16 and bf16
/// is an f32).
pub fn widen_half(data: &[u8], kind: Half) -> Vec<u8> {
    data.chunks_exact(2)
        .flat_map(|c| {
            let v = match kind {
                Half::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                Half::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            };
            v.to_le_bytes()
        })
        .collect()
}

/// One tensor: little-endian bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// `n` values of `dtype` already in little-endian bytes, checked against `shape`.
    fn packed(dtype: DType, shape: Vec<usize>, n: usize, bytes: Vec<u8>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), n);
        TensorData {
            dtype,
            shape,
            bytes,
        }
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::packed(DType::F32, shape, values.len(), bytes)
    }

    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::packed(DType::F64, shape, values.len(), bytes)
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::packed(DType::I64, shape, values.len(), bytes)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values as f32 (an int64 counter is converted, which is exact below 2^24).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => self.to_f64().into_iter().map(|v| v as f32).collect(),
            DType::I64 => self.to_i64().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// Values as f64 (f32 widened exactly).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            DType::F64 => self
                .bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
            DType::F32 => self.to_f32().into_iter().map(f64::from).collect(),
            DType::I64 => self.to_i64().into_iter().map(|v| v as f64).collect(),
        }
    }

    pub fn to_i64(&self) -> Vec<i64> {
        match self.dtype {
            DType::I64 => self
                .bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
            DType::F32 | DType::F64 => self.to_f64().into_iter().map(|v| v as i64).collect(),
        }
    }

    fn from_view(view: &TensorView<'_>) -> std::result::Result<Self, String> {
        let shape = view.shape().to_vec();
        let data = view.data();
        let (dtype, bytes) = match view.dtype() {
            Dtype::F32 => (DType::F32, data.to_vec()),
            Dtype::I64 => (DType::I64, data.to_vec()),
            Dtype::F16 => (DType::F32, widen_half(data, Half::F16)),
            Dtype::BF16 => (DType::F32, widen_half(data, Half::BF16)),
            Dtype::F64 => (DType::F64, data.to_vec()),
            other => return Err(format!("unsupported dtype {other:?}")),
        };
        Ok(TensorData {
            dtype,
            shape,
            bytes,
        })
    }
}

/// An ordered map of named tensors plus the file's string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorMap {
    pub tensors: BTreeMap<String, TensorData>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: TensorData) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_bytes(&bytes).map_err(|message| ModelError::Format {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let mut map = TensorMap::new();
        for (name, view) in st.iter() {
            let t = TensorData::from_view(&view).map_err(|e| format!("tensor `{name}`: {e}"))?;
            map.tensors.insert(name.to_string(), t);
        }
        if let Some(m) = meta.metadata() {
            map.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(map)
    }

    pub fn to_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        let views = self
            .tensors
            .iter()
            .map(|(name, t)| {
                TensorView::new(t.dtype.safetensors(), t.shape.clone(), &t.bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| format!("tensor `{name}`: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let meta: Option<HashMap<String, String>> = (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        safetensors::serialize(views, meta).map_err(|e| e.to_string())
    }

    /// Writes atomically: a reader sees the old file or the complete new one, never a torn one.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, |_| {})
    }

    /// `save`, reporting the stages of the atomic write (see `write_atomic_with`).
    pub fn save_with(&self, path: &Path, observe: impl FnMut(atomic_io::WriteStage)) -> Result<()> {
        let bytes = self.to_bytes().map_err(|message| ModelError::Format {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(atomic_io::write_atomic_with(path, &bytes, observe)?)
    }

    /// Checks that every spec is present with its shape and finite values. Tensors beyond the
    /// specs are refused unless `allow_extra` accepts their name (a checkpoint may carry a head).
    pub fn check(
        &self,
        specs: &[TensorSpec],
        file: &str,
        what: &str,
        allow_extra: impl Fn(&str) -> bool,
    ) -> Result<()> {
        for s in specs {
            let t = self
                .tensors
                .get(&s.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    file: file.into(),
                    name: s.name.clone(),
                })?;
            if t.shape != s.shape {
                return Err(ModelError::ShapeMismatch {
                    file: file.into(),
                    name: s.name.clone(),
                    found: t.shape.clone(),
                    expected: s.shape.clone(),
                });
            }
            if s.role != TensorRole::Counter && t.to_f32().iter().any(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite {
                    file: file.into(),
                    name: s.name.clone(),
                });
            }
        }
        let known: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !known.contains(k.as_str()) && !allow_extra(k))
        {
            return Err(ModelError::UnexpectedTensor {
                file: file.into(),
                name: extra.clone(),
                what: what.into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, ResNetDesc};

    #[test]
    fn round_trip_keeps_values_dtypes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut m = TensorMap::new();
        m.insert(
            "a.weight",
            TensorData::from_f32(vec![2, 2], &[1.0, -2.5, 3.0, 4.0]),
        );
        m.insert("a.num_batches_tracked", TensorData::from_i64(vec![], &[7]));
        m.metadata.insert("moco.arch".into(), "resnet18".into());
        m.save(&path).unwrap();
        let back = TensorMap::load(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get("a.num_batches_tracked").unwrap().to_i64(), vec![7]);
    }

    #[test]
    fn check_names_the_missing_and_misshapen_tensor() {
        let specs = ResNetDesc::new(Arch::Resnet18).tensors();
        let mut m = TensorMap::new();
        for s in &specs {
            let n = s.shape.iter().product();
            m.insert(
                s.name.clone(),
                TensorData::from_f32(s.shape.clone(), &vec![0.5; n]),
            );
        }
        m.check(&specs, "enc.safetensors", "resnet18", |_| false)
            .unwrap();

        let mut bad = m.clone();
        bad.tensors.remove("layer3.1.bn2.running_var");
        let e = bad
            .check(&specs, "enc.safetensors", "resnet18", |_| false)
            .unwrap_err();
        assert!(e.to_string().contains("layer3.1.bn2.running_var"), "{e}");

        let mut bad = m.clone();
        bad.insert("conv1.weight", TensorData::from_f32(vec![1], &[0.0]));
        let e = bad
            .check(&specs, "enc.safetensors", "resnet18", |_| false)
            .unwrap_err();
        assert!(e.to_string().contains("shape [1]"), "{e}");

        let mut bad = m.clone();
        let n = 64 * 3 * 7 * 7;
        let mut v = vec![0.1; n];
        v[5] = f32::NAN;
        bad.insert("conv1.weight", TensorData::from_f32(vec![64, 3, 7, 7], &v));
        let e = bad
            .check(&specs, "enc.safetensors", "resnet18", |_| false)
            .unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");

        let mut extra = m.clone();
        extra.insert("fc.weight", TensorData::from_f32(vec![1], &[0.0]));
        assert!(extra.check(&specs, "e", "resnet18", |_| false).is_err());
        extra
            .check(&specs, "e", "resnet18", |n| n.starts_with("fc."))
            .unwrap();
    }

    #[test]
    fn garbage_is_a_format_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        fs::write(&path, b"not a safetensors file at all").unwrap();
        let e = TensorMap::load(&path).unwrap_err();
        assert!(e.to_string().contains("junk.safetensors"), "{e}");
    }
}
