//! The MoCo projection MLP and the linear classifier as tch modules.

use tch::nn::{self, Init};
use tch::Tensor;

use models::heads::{Classifier, MlpHead};
use models::layers::Linear;

use crate::batch_norm::BatchNorm;
use crate::path_for;

#[derive(Debug)]
pub struct LinearModule {
    pub weight: Tensor,
    pub bias: Tensor,
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
            bias: p.var("bias", &[o], init),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

#[derive(Debug)]
pub struct MlpHeadModule {
    pub fc1: LinearModule,
    pub fc2: LinearModule,
    /// The projector's BatchNorm1d pair ([`models::HeadNorm`]), shuffle-BN split like the
    /// backbone's: a whole-batch BN here would let the query and key batches share statistics.
    pub norm: Option<(BatchNorm, BatchNorm)>,
}

impl MlpHeadModule {
    pub fn new(root: &nn::Path, spec: &MlpHead, bn_splits: i64) -> Self {
        MlpHeadModule {
            fc1: LinearModule::new(root, &spec.fc1),
            fc2: LinearModule::new(root, &spec.fc2),
            norm: spec.norm.as_ref().map(|n| {
                (
                    BatchNorm::new(root, &n.hidden, bn_splits),
                    BatchNorm::without_affine(root, &n.out, bn_splits),
                )
            }),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.fc1.forward(x);
        match &self.norm {
            None => self.fc2.forward(&h.relu()),
            Some((hidden, out)) => {
                let h = hidden.forward_t(&h, train).relu();
                out.forward_t(&self.fc2.forward(&h), train)
            }
        }
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

    /// MoCo's linear protocol init: weight N(0, 0.01), bias 0.
    pub fn reset_moco(&mut self) {
        tch::no_grad(|| {
            let _ = self.fc.weight.normal_(0.0, 0.01);
            let _ = self.fc.bias.zero_();
        });
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        self.fc.forward(features)
    }
}
