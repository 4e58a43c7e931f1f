//! The training lowering of `models`: the description built as libtorch modules through tch. A
//! crate of its own (not a feature of `models`) so that a workspace build, where cargo unifies
//! features, still leaves the exporter and moco-infer free of libtorch.
//!
//! Variables live in a `tch::nn::VarStore` under torchvision's dotted names, so
//! `vs.variables()` is a torchvision state_dict and [`convert`] moves it to and from safetensors.

pub mod batch_norm;
pub mod convert;
pub mod device;
pub mod heads;
pub mod resnet;

pub use batch_norm::{BatchNorm, Mode};
pub use convert::{load_into, tensor_to_data, to_tensor_map};
pub use device::parse_device;
pub use heads::{ClassifierModule, MlpHeadModule};
pub use resnet::ResNet;

use tch::nn;

/// The VarStore path of a dotted torchvision name (`layer1.0.conv1` → root/layer1/0/conv1):
/// tch refuses dots inside one path component.
pub fn path_for<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = parts.next().unwrap_or_default();
    parts.fold(root / first, |p, part| &p / part)
}
