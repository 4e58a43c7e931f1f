//! What sits on the pooled backbone features: MoCo v2's projection MLP and the linear classifier.

use std::path::Path;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::layers::{Linear, TensorSpec};
use crate::preprocess::META_CLASSES;
use crate::weights::TensorMap;

/// MoCo v2's head: official code replaces torchvision's `fc` with
/// `Sequential(Linear(d, d), ReLU(), Linear(d, dim))`, hence the names `fc.0` and `fc.2`.
/// Its output is l2-normalised by the MoCo loss, not here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlpHead {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// MoCo's default embedding width.
pub const MOCO_DIM: usize = 128;

impl MlpHead {
    pub fn new(feature_dim: usize, out_dim: usize) -> Self {
        MlpHead {
            fc1: Linear {
                name: "fc.0".into(),
                in_features: feature_dim,
                out_features: feature_dim,
            },
            fc2: Linear {
                name: "fc.2".into(),
                in_features: feature_dim,
                out_features: out_dim,
            },
        }
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut t = self.fc1.tensors();
        t.extend(self.fc2.tensors());
        t
    }
}

/// The linear-evaluation classifier: torchvision's own `fc`, saved as `fc.weight`, `fc.bias`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classifier {
    pub fc: Linear,
}

impl Classifier {
    pub fn new(feature_dim: usize, num_classes: usize) -> Self {
        Classifier {
            fc: Linear {
                name: "fc".into(),
                in_features: feature_dim,
                out_features: num_classes,
            },
        }
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.fc.tensors()
    }
}

/// A classifier file (`linear`'s `classifier.safetensors`) read and checked against a backbone's
/// feature width — what `export` and `label-request` both take with `--classifier`.
#[derive(Debug)]
pub struct ClassifierFile {
    pub head: Classifier,
    pub map: TensorMap,
    /// From its metadata, when `linear` wrote them.
    pub class_names: Option<Vec<String>>,
}

impl ClassifierFile {
    pub fn load(path: &Path, feature_dim: usize) -> Result<ClassifierFile> {
        let map = TensorMap::load(path)?;
        let file = path.display().to_string();
        let classes = map
            .get("fc.bias")
            .and_then(|b| b.shape.first().copied())
            .ok_or_else(|| ModelError::MissingTensor {
                file: file.clone(),
                name: "fc.bias".into(),
            })?;
        // Said before the generic shape check: another feature width means another arch.
        if let Some(w) = map.get("fc.weight") {
            if w.shape.len() == 2 && w.shape[1] != feature_dim {
                return Err(ModelError::FeatureWidth {
                    file,
                    found: w.shape.clone(),
                    feature_dim,
                });
            }
        }
        let head = Classifier::new(feature_dim, classes);
        map.check(&head.tensors(), &file, "a linear classifier", |_| false)?;
        let class_names = map
            .metadata
            .get(META_CLASSES)
            .map(|json| {
                serde_json::from_str::<Vec<String>>(json).map_err(|e| ModelError::Metadata {
                    file: file.clone(),
                    key: META_CLASSES.into(),
                    message: e.to_string(),
                })
            })
            .transpose()?;
        Ok(ClassifierFile {
            head,
            map,
            class_names,
        })
    }
}
