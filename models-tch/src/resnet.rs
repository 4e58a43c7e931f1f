//! `ResNetDesc` lowered to tch: torchvision's forward, over the description's units.

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;

use models::layers::ConvBn;
use models::resnet::ResNetDesc;

use crate::batch_norm::BatchNorm;
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

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        self.bn.forward_t(&y, train)
    }
}

#[derive(Debug)]
struct BlockModule {
    convs: Vec<ConvBnModule>,
    downsample: Option<ConvBnModule>,
}

/// The backbone up to global average pooling: `forward_t` returns `[N, feature_dim]`.
#[derive(Debug)]
pub struct ResNet {
    pub desc: ResNetDesc,
    stem: ConvBnModule,
    blocks: Vec<BlockModule>,
}

impl ResNet {
    /// Creates the variables under `root` (use `vs.root()` for torchvision's top-level names).
    /// `bn_splits > 1` turns every BatchNorm into MoCo's SplitBatchNorm for training.
    pub fn new(root: &nn::Path, desc: &ResNetDesc, bn_splits: i64) -> Self {
        let stem = ConvBnModule::new(root, &desc.stem.conv_bn, bn_splits);
        let blocks = desc
            .stages
            .iter()
            .flat_map(|s| &s.blocks)
            .map(|b| BlockModule {
                convs: b
                    .convs
                    .iter()
                    .map(|u| ConvBnModule::new(root, u, bn_splits))
                    .collect(),
                downsample: b
                    .downsample
                    .as_ref()
                    .map(|u| ConvBnModule::new(root, u, bn_splits)),
            })
            .collect();
        ResNet {
            desc: desc.clone(),
            stem,
            blocks,
        }
    }

    /// The feature map before pooling, `[N, feature_dim, H/32, W/32]`.
    pub fn feature_map_t(&self, x: &Tensor, train: bool) -> Tensor {
        let s = &self.desc.stem;
        let (k, st, p) = (
            s.pool_kernel as i64,
            s.pool_stride as i64,
            s.pool_padding as i64,
        );
        let mut x = self.stem.forward_t(x, train).relu().max_pool2d(
            [k, k],
            [st, st],
            [p, p],
            [1, 1],
            false,
        );
        for block in &self.blocks {
            let shortcut = match &block.downsample {
                Some(d) => d.forward_t(&x, train),
                None => x.shallow_clone(),
            };
            let last = block.convs.len() - 1;
            let mut y = x;
            for (i, unit) in block.convs.iter().enumerate() {
                y = unit.forward_t(&y, train);
                if i != last {
                    y = y.relu();
                }
            }
            x = (y + shortcut).relu();
        }
        x
    }

    /// Globally average-pooled features, `[N, feature_dim]` (torchvision's input to `fc`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.feature_map_t(x, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }

    /// The stem's convolution output (after BN and ReLU), for feature-map figures.
    pub fn stem_activations(&self, x: &Tensor) -> Tensor {
        self.stem.forward_t(x, false).relu()
    }
}

impl nn::ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        ResNet::forward_t(self, xs, train)
    }
}
