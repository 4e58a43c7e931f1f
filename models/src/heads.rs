//! What sits on the pooled backbone features: MoCo v2's projection MLP and the linear classifier.

use std::path::Path;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::layers::{BatchNorm2d, Linear, TensorSpec};
use crate::preprocess::META_CLASSES;
use crate::weights::TensorMap;

/// MoCo v2's head: official code replaces torchvision's `fc` with
/// `Sequential(Linear(d, d), ReLU(), Linear(d, dim))`, hence the names `fc.0` and `fc.2`.
/// With [`HeadNorm`] it is MoCo v3's projector instead:
/// `Sequential(Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d(affine=False))`, names `fc.0`,
/// `fc.1`, `fc.3`, `fc.4`. Its output is l2-normalised by the MoCo loss, not here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlpHead {
    pub fc1: Linear,
    pub fc2: Linear,
    pub norm: Option<HeadNorm>,
}

/// The projector's two BatchNorm1d layers (the spec type is shared with BatchNorm2d: same
/// tensors, same arithmetic per channel). `out` has no affine parameters: a learned bias there
/// would give the embeddings back the common offset the normalisation removes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadNorm {
    pub hidden: BatchNorm2d,
    pub out: BatchNorm2d,
}

/// MoCo's default embedding width.
pub const MOCO_DIM: usize = 128;

fn linear(name: &str, in_features: usize, out_features: usize) -> Linear {
    Linear {
        name: name.into(),
        in_features,
        out_features,
    }
}

impl MlpHead {
    pub fn new(feature_dim: usize, out_dim: usize) -> Self {
        MlpHead {
            fc1: linear("fc.0", feature_dim, feature_dim),
            fc2: linear("fc.2", feature_dim, out_dim),
            norm: None,
        }
    }

    /// The projector with BatchNorm after each linear layer (MoCo v3's).
    pub fn with_norm(feature_dim: usize, out_dim: usize) -> Self {
        MlpHead {
            fc1: linear("fc.0", feature_dim, feature_dim),
            fc2: linear("fc.3", feature_dim, out_dim),
            norm: Some(HeadNorm {
                hidden: BatchNorm2d::new("fc.1".into(), feature_dim),
                out: BatchNorm2d::new("fc.4".into(), out_dim),
            }),
        }
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut t = self.fc1.tensors();
        t.extend(self.fc2.tensors());
        if let Some(n) = &self.norm {
            t.extend(n.hidden.tensors());
            t.extend(
                n.out
                    .tensors()
                    .into_iter()
                    .filter(|s| s.role != crate::layers::TensorRole::Parameter),
            );
        }
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
