//! `ResNetDesc` lowered to tch: torchvision's forward, over the description's units.

use std::collections::HashMap;

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;

use models::layers::ConvBn;
use models::resnet::{Lowering, ResNetDesc};

use crate::batch_norm::{BatchNorm, Mode};
use crate::path_for;

/// torchvision's `ResNet.__init__`: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

#[derive(Debug)]
struct ConvBnModule {
    weight: Tensor,
    stride: i64,
    padding: i64,
    bn: BatchNorm,
}

impl ConvBnModule {
    fn new(root: &nn::Path, unit: &ConvBn, bn_splits: i64) -> Self {
        let c = &unit.conv;
        let dims: Vec<i64> = c.weight_shape().iter().map(|&d| d as i64).collect();
        ConvBnModule {
            weight: path_for(root, &c.name).var("weight", &dims, CONV_INIT),
            stride: c.stride as i64,
            padding: c.padding as i64,
            bn: BatchNorm::new(root, &unit.bn, bn_splits),
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = x.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        self.bn.forward(&y, mode)
    }
}

/// The backbone up to global average pooling: `forward_t` returns `[N, feature_dim]`.
#[derive(Debug)]
pub struct ResNet {
    pub desc: ResNetDesc,
    stem: ConvBnModule,
    /// Every block unit by its conv's name (`layer1.0.conv1`, `layer2.0.downsample.0`).
    units: HashMap<String, ConvBnModule>,
}

/// The libtorch side of [`Lowering`]: values are tensors.
struct TchLowering<'a> {
    units: &'a HashMap<String, ConvBnModule>,
    mode: Mode,
}

impl Lowering for TchLowering<'_> {
    type Value = Tensor;

    fn share(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn conv_bn(&mut self, unit: &ConvBn, x: &Tensor) -> Tensor {
        self.units[&unit.conv.name].forward(x, self.mode)
    }

    fn relu(&mut self, x: &Tensor, _: &str) -> Tensor {
        x.relu()
    }

    fn add(&mut self, a: &Tensor, b: &Tensor, _: &str) -> Tensor {
        a + b
    }
}

impl ResNet {
    /// Creates the variables under `root` (use `vs.root()` for torchvision's top-level names).
    /// `bn_splits > 1` turns every BatchNorm into MoCo's SplitBatchNorm for training.
    pub fn new(root: &nn::Path, desc: &ResNetDesc, bn_splits: i64) -> Self {
        let stem = ConvBnModule::new(root, &desc.stem.conv_bn, bn_splits);
        // Created in the description's order, so the random draws land where torchvision's
        // constructor puts them.
        let mut units = HashMap::new();
        for b in desc.stages.iter().flat_map(|s| &s.blocks) {
            for u in b.convs.iter().chain(&b.downsample) {
                units.insert(u.conv.name.clone(), ConvBnModule::new(root, u, bn_splits));
            }
        }
        ResNet {
            desc: desc.clone(),
            stem,
            units,
        }
    }

    /// The feature map before pooling, `[N, feature_dim, H/32, W/32]`.
    pub fn feature_map(&self, x: &Tensor, mode: Mode) -> Tensor {
        let s = &self.desc.stem;
        let (k, st, p) = (
            s.pool_kernel as i64,
            s.pool_stride as i64,
            s.pool_padding as i64,
        );
        let mut x =
            self.stem
                .forward(x, mode)
                .relu()
                .max_pool2d([k, k], [st, st], [p, p], [1, 1], false);
        let mut l = TchLowering {
            units: &self.units,
            mode,
        };
        for block in self.desc.stages.iter().flat_map(|s| &s.blocks) {
            x = block.lower(&mut l, &x);
        }
        x
    }

    /// Globally average-pooled features, `[N, feature_dim]` (torchvision's input to `fc`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, Mode::from_train(train))
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.feature_map(x, mode)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }

    /// The stem's convolution output (after BN and ReLU), for feature-map figures.
    pub fn stem_activations(&self, x: &Tensor) -> Tensor {
        self.stem.forward(x, Mode::Eval).relu()
    }
}

impl nn::ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        ResNet::forward_t(self, xs, train)
    }
}
