//! The network, described once.
//!
//! [`ResNetDesc`], [`MlpHead`] and [`Classifier`] are plain data: layer shapes, strides and
//! torchvision's parameter names. Two lowerings read them: `models_tch` (crate `moco-models-tch`) builds
//! trainable libtorch modules for the trainer, and the exporter walks the same structs to emit ONNX
//! nodes without linking libtorch. [`weights`] moves named tensors to and from safetensors;
//! [`torch_save`] reads PyTorch's files without executing them, and [`EncoderFile`] finds a
//! backbone in either.

pub mod arch;
pub mod encoder_file;
pub mod error;
pub mod heads;
pub mod layers;
pub mod preprocess;
pub mod random_weights;
pub mod resnet;
pub mod torch_save;
pub mod weights;

pub use arch::{Arch, BlockKind};
pub use encoder_file::EncoderFile;
pub use error::{ModelError, Result};
pub use heads::{Classifier, ClassifierFile, MlpHead, MlpLayer, MlpShape, MOCO_DIM};
pub use layers::{
    BatchNorm2d, Conv2d, ConvBn, Linear, TensorRole, TensorSpec, SPLIT_GROUPS_SUFFIX,
};
pub use preprocess::Preprocess;
pub use resnet::{Block, Lowering, ResNetDesc, Stage, Stem};
pub use weights::{DType, TensorData, TensorMap};
