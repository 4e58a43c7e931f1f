//! What sits on the pooled backbone features: MoCo v2's projection MLP and the linear classifier.

use serde::Serialize;

use crate::layers::{Linear, TensorSpec};

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
