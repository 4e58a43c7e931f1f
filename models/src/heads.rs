//! What sits on the pooled backbone features: the projection and prediction MLPs of pretraining
//! and the linear classifier.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::layers::{BatchNorm2d, Linear, TensorSpec};
use crate::preprocess::META_CLASSES;
use crate::weights::TensorMap;

/// One entry of a head's `nn.Sequential`, in order; its index is its name (`fc.0`, `fc.1`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum MlpLayer {
    Linear(Linear),
    /// BatchNorm1d (the spec type is shared with BatchNorm2d: same tensors, same arithmetic per
    /// channel). Without affine parameters at a projector's output: a learned bias there would
    /// give the embeddings back the common offset the normalisation removes.
    Norm {
        bn: BatchNorm2d,
        affine: bool,
    },
    Relu,
}

/// What sits on the pooled features during pretraining: a projector or a predictor, described
/// as the published code's `nn.Sequential`, so its tensors carry the same names.
/// - MoCo v2 ([`MlpHead::new`]): `Sequential(Linear(d, d), ReLU(), Linear(d, dim))` replacing
///   torchvision's `fc`, names `fc.0`, `fc.2`;
/// - MoCo v1 ([`MlpHead::linear`]): torchvision's own `fc` with `dim` outputs;
/// - with BatchNorm ([`MlpHead::with_norm`], MoCo v3's projector shape):
///   `Sequential(Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d(affine=False))`;
/// - the general form ([`MlpHead::build`]): MoCo v3's `_build_mlp`, BYOL's projector and
///   predictor.
///
/// Its output is l2-normalised by the loss, not here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlpHead {
    pub layers: Vec<MlpLayer>,
}

/// The shape of an MLP head for [`MlpHead::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpShape {
    /// Linear layers (at least 1).
    pub layers: usize,
    pub hidden: usize,
    pub out: usize,
    /// Biases in the linear layers (MoCo v3 has none).
    pub bias: bool,
    /// BatchNorm1d after each hidden linear layer.
    pub hidden_norm: bool,
    /// BatchNorm1d without affine after the last linear layer.
    pub out_norm: bool,
}

/// MoCo's default embedding width.
pub const MOCO_DIM: usize = 128;

impl MlpHead {
    /// MoCo v2's projector: the plain two-layer MLP, hidden width = the feature width.
    pub fn new(feature_dim: usize, out_dim: usize) -> Self {
        Self::two_layer(feature_dim, out_dim, false)
    }

    /// The projector with BatchNorm after each linear layer (MoCo v3's shape, with biases).
    pub fn with_norm(feature_dim: usize, out_dim: usize) -> Self {
        Self::two_layer(feature_dim, out_dim, true)
    }

    fn two_layer(feature_dim: usize, out_dim: usize, norm: bool) -> Self {
        let shape = MlpShape {
            layers: 2,
            hidden: feature_dim,
            out: out_dim,
            bias: true,
            hidden_norm: norm,
            out_norm: norm,
        };
        Self::build("fc", feature_dim, shape)
    }

    /// One linear layer named `prefix` itself (torchvision's `fc` with `out_dim` classes).
    pub fn linear(prefix: &str, feature_dim: usize, out_dim: usize) -> Self {
        MlpHead {
            layers: vec![MlpLayer::Linear(Linear::new(prefix, feature_dim, out_dim))],
        }
    }

    /// `Sequential` of `shape.layers` linear layers under `prefix` (`prefix.0`, `prefix.1`, …):
    /// Linear, [BatchNorm1d], ReLU between layers; [BatchNorm1d(affine=False)] at the end.
    pub fn build(prefix: &str, input: usize, shape: MlpShape) -> Self {
        let mut layers = Vec::new();
        let name = |layers: &Vec<MlpLayer>| format!("{prefix}.{}", layers.len());
        for l in 0..shape.layers.max(1) {
            let last = l + 1 == shape.layers.max(1);
            let (i, o) = (
                if l == 0 { input } else { shape.hidden },
                if last { shape.out } else { shape.hidden },
            );
            layers.push(MlpLayer::Linear(Linear {
                bias: shape.bias,
                ..Linear::new(&name(&layers), i, o)
            }));
            let norm = if last {
                shape.out_norm
            } else {
                shape.hidden_norm
            };
            if norm {
                let bn = BatchNorm2d::new(name(&layers), o);
                layers.push(MlpLayer::Norm { bn, affine: !last });
            }
            if !last {
                layers.push(MlpLayer::Relu);
            }
        }
        MlpHead { layers }
    }

    pub fn out_dim(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match l {
                MlpLayer::Linear(fc) => Some(fc.out_features),
                _ => None,
            })
            .unwrap_or(0)
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.layers
            .iter()
            .flat_map(|l| match l {
                MlpLayer::Linear(fc) => fc.tensors(),
                MlpLayer::Norm { bn, affine } => bn
                    .tensors()
                    .into_iter()
                    .filter(|s| *affine || s.role != crate::layers::TensorRole::Parameter)
                    .collect(),
                MlpLayer::Relu => Vec::new(),
            })
            .collect()
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
            fc: Linear::new("fc", feature_dim, num_classes),
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
