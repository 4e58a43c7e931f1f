//! Datasets without libtorch: the three layouts of SPEC (class folders, the competition's
//! numbered PNGs with `torch.save` label tensors, STL-10 binaries), image decoding, and the eval
//! transform shared by the trainer and `moco-infer`.

pub mod csv;
pub mod decode;
pub mod error;
pub mod layout;
pub mod merge_labels;
pub mod pt_labels;
pub mod synth;
pub mod transform;

pub use error::{DataError, Result};
pub use layout::{detect_format, open, Format, ImageSource, Sample, Split, SplitData};
