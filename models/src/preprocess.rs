//! The eval transform and the ONNX metadata keys that carry it (SPEC "ONNX model").
//!
//! One definition for the three places that must agree: the trainer's eval transform, the
//! exporter that writes `moco.*` metadata, and `moco-infer` that reads it back.

use serde::{Deserialize, Serialize};

/// torchvision's ImageNet statistics, used by MoCo's Normalize.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub const META_MEAN: &str = "moco.mean";
pub const META_STD: &str = "moco.std";
pub const META_RESIZE: &str = "moco.resize";
pub const META_CROP: &str = "moco.crop";
pub const META_CLASSES: &str = "moco.classes";
pub const META_ARCH: &str = "moco.arch";
pub const META_SOURCE: &str = "moco.source";
/// How the model was quantized (a JSON object; absent: fp32).
pub const META_QUANTIZATION: &str = "moco.quantization";

/// Resize the shorter side to `resize` (bilinear, antialiased), center-crop `crop`, scale to
/// [0,1], then normalise with `mean`/`std` (inside the ONNX graph).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: u32,
    pub crop: u32,
}

impl Default for Preprocess {
    /// For 96×96 data: the identity resize and crop, as the competition's eval transform.
    fn default() -> Self {
        Preprocess {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            resize: 96,
            crop: 96,
        }
    }
}

impl Preprocess {
    pub fn validate(&self) -> Result<(), String> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(format!(
                "crop {} must be positive and at most resize {}",
                self.crop, self.resize
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(format!(
                "mean {:?} / std {:?} must be finite with std > 0",
                self.mean, self.std
            ));
        }
        Ok(())
    }

    /// The metadata entries this transform writes into an ONNX model.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (META_MEAN.into(), json_floats(&self.mean)),
            (META_STD.into(), json_floats(&self.std)),
            (META_RESIZE.into(), self.resize.to_string()),
            (META_CROP.into(), self.crop.to_string()),
        ]
    }

    /// Reads the transform back; `get` looks a key up in the model's metadata_props.
    pub fn from_metadata(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let field = |k: &str| get(k).ok_or_else(|| format!("metadata `{k}` is missing"));
        let triple = |k: &str| -> Result<[f32; 3], String> {
            serde_json::from_str(&field(k)?)
                .map_err(|e| format!("metadata `{k}` is not a JSON array of 3 numbers: {e}"))
        };
        let int = |k: &str| -> Result<u32, String> {
            field(k)?
                .trim()
                .parse()
                .map_err(|e| format!("metadata `{k}` is not a positive integer: {e}"))
        };
        let p = Preprocess {
            mean: triple(META_MEAN)?,
            std: triple(META_STD)?,
            resize: int(META_RESIZE)?,
            crop: int(META_CROP)?,
        };
        p.validate()?;
        Ok(p)
    }
}

/// f32 values as JSON with the shortest representation that round-trips.
fn json_floats(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn metadata_round_trip() {
        let p = Preprocess {
            resize: 110,
            crop: 96,
            ..Preprocess::default()
        };
        let m: HashMap<String, String> = p.to_metadata().into_iter().collect();
        assert_eq!(m[META_MEAN], "[0.485,0.456,0.406]");
        let back = Preprocess::from_metadata(|k| m.get(k).cloned()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let mut m: HashMap<String, String> =
            Preprocess::default().to_metadata().into_iter().collect();
        m.insert(META_CROP.into(), "-3".into());
        let e = Preprocess::from_metadata(|k| m.get(k).cloned()).unwrap_err();
        assert!(e.contains("moco.crop"), "{e}");
        m.remove(META_STD);
        let e = Preprocess::from_metadata(|k| m.get(k).cloned()).unwrap_err();
        assert!(e.contains("moco.std"), "{e}");
    }
}
