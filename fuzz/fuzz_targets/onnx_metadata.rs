//! What moco-infer reads from a model file before handing it to a runtime: the protobuf, the
//! input/output shapes and the `moco.*` metadata.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::onnx_metadata(data));
