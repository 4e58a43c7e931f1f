//! The layer vocabulary of the network description. Each spec carries its full torchvision
//! parameter prefix, so both lowerings (tch modules, ONNX nodes) name tensors identically.

use serde::Serialize;

/// torchvision's `nn.BatchNorm2d` defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// How a tensor of the description is stored and trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TensorRole {
    /// Learned by SGD (`weight`, `bias`).
    Parameter,
    /// Float buffer updated by the forward pass (`running_mean`, `running_var`).
    Buffer,
    /// int64 scalar buffer (`num_batches_tracked`).
    Counter,
}

/// One named tensor the description expects in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

fn spec(prefix: &str, leaf: &str, shape: Vec<usize>, role: TensorRole) -> TensorSpec {
    TensorSpec {
        name: format!("{prefix}.{leaf}"),
        shape,
        role,
    }
}

/// A bias-free 2-D convolution, square kernel, symmetric padding (all ResNet convolutions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conv2d {
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        vec![spec(
            &self.name,
            "weight",
            self.weight_shape(),
            TensorRole::Parameter,
        )]
    }
}

/// The suffix of a SplitBatchNorm's per-group running statistics in a training checkpoint
/// (`bn1.running_mean_groups`, `[splits · C]`): the trainer's bookkeeping, not part of the
/// torchvision model, whose `running_mean` holds their mean. Readers of a backbone skip them.
pub const SPLIT_GROUPS_SUFFIX: &str = "_groups";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchNorm2d {
    pub name: String,
    pub channels: usize,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    pub fn new(name: String, channels: usize) -> Self {
        BatchNorm2d {
            name,
            channels,
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
        }
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        let c = vec![self.channels];
        vec![
            spec(&self.name, "weight", c.clone(), TensorRole::Parameter),
            spec(&self.name, "bias", c.clone(), TensorRole::Parameter),
            spec(&self.name, "running_mean", c.clone(), TensorRole::Buffer),
            spec(&self.name, "running_var", c, TensorRole::Buffer),
            spec(
                &self.name,
                "num_batches_tracked",
                vec![],
                TensorRole::Counter,
            ),
        ]
    }
}

/// A convolution followed by its BatchNorm: the unit that the exporter folds into one Conv.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut t = self.conv.tensors();
        t.extend(self.bn.tensors());
        t
    }
}

/// `nn.Linear(in_features, out_features, bias=bias)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Linear {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

impl Linear {
    /// With a bias, as `nn.Linear` defaults.
    pub fn new(name: &str, in_features: usize, out_features: usize) -> Self {
        Linear {
            name: name.into(),
            in_features,
            out_features,
            bias: true,
        }
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut t = vec![spec(
            &self.name,
            "weight",
            vec![self.out_features, self.in_features],
            TensorRole::Parameter,
        )];
        if self.bias {
            t.push(spec(
                &self.name,
                "bias",
                vec![self.out_features],
                TensorRole::Parameter,
            ));
        }
        t
    }
}
