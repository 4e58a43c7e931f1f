//! What moco-infer reads from a model file before handing it to a runtime: the protobuf, the
//! input/output shapes and the `moco.*` metadata.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = infer::parse_model_info(data, Path::new("fuzz.onnx"));
});
