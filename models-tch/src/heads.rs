//! The pretraining heads (projector, predictor) and the linear classifier as tch modules.

use tch::nn::{self, Init};
use tch::Tensor;

use models::heads::{Classifier, MlpHead, MlpLayer};
use models::layers::Linear;

use crate::batch_norm::{BatchNorm, Mode};
use crate::path_for;

#[derive(Debug)]
pub struct LinearModule {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LinearModule {
    /// PyTorch's `nn.Linear` default init: weight and bias uniform in ±1/sqrt(in_features)
    /// (kaiming_uniform with a=sqrt(5) reduces to that bound).
    pub fn new(root: &nn::Path, spec: &Linear) -> Self {
        let bound = 1.0 / (spec.in_features as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let p = path_for(root, &spec.name);
        let (o, i) = (spec.out_features as i64, spec.in_features as i64);
        LinearModule {
            weight: p.var("weight", &[o, i], init),
            bias: spec.bias.then(|| p.var("bias", &[o], init)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug)]
enum LayerModule {
    Linear(LinearModule),
    Norm(BatchNorm),
    Relu,
}

/// A projector or predictor ([`MlpHead`]): its BatchNorm1d layers are split into `bn_splits`
/// groups like the backbone's (shuffle BN: a whole-batch BN here would let the query and key
/// batches share statistics).
#[derive(Debug)]
pub struct MlpHeadModule {
    layers: Vec<LayerModule>,
}

impl MlpHeadModule {
    /// Variables are created layer by layer, so the random draws of the linear layers come in the
    /// order PyTorch makes them (BatchNorm's constant init draws nothing).
    pub fn new(root: &nn::Path, spec: &MlpHead, bn_splits: i64) -> Self {
        let layers = spec
            .layers
            .iter()
            .map(|l| match l {
                MlpLayer::Linear(fc) => LayerModule::Linear(LinearModule::new(root, fc)),
                MlpLayer::Norm { bn, affine: true } => {
                    LayerModule::Norm(BatchNorm::new(root, bn, bn_splits))
                }
                MlpLayer::Norm { bn, affine: false } => {
                    LayerModule::Norm(BatchNorm::without_affine(root, bn, bn_splits))
                }
                MlpLayer::Relu => LayerModule::Relu,
            })
            .collect();
        MlpHeadModule { layers }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, Mode::from_train(train))
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.layers.iter().fold(x.shallow_clone(), |h, l| match l {
            LayerModule::Linear(fc) => fc.forward(&h),
            LayerModule::Norm(bn) => bn.forward(&h, mode),
            LayerModule::Relu => h.relu(),
        })
    }
}

#[derive(Debug)]
pub struct ClassifierModule {
    pub fc: LinearModule,
}

impl ClassifierModule {
    pub fn new(root: &nn::Path, spec: &Classifier) -> Self {
        ClassifierModule {
            fc: LinearModule::new(root, &spec.fc),
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.fc.weight
    }

    /// The classifier's `Linear` always has a bias ([`Classifier::new`]).
    pub fn bias(&self) -> &Tensor {
        self.fc
            .bias
            .as_ref()
            .expect("the classifier is built with a bias")
    }

    /// MoCo's linear protocol init: weight N(0, 0.01), bias 0.
    pub fn reset_moco(&mut self) {
        tch::no_grad(|| {
            let _ = self.fc.weight.normal_(0.0, 0.01);
            let _ = self.bias().shallow_clone().zero_();
        });
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        self.fc.forward(features)
    }
}
