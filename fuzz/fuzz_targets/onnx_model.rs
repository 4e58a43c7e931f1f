//! An ONNX model as moco-infer loads it: the interface and `moco.*` metadata checks, then
//! tract's import, optimisation and one batch of one image at the model's crop (bounded: a crop
//! past 128 pixels is not run).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::onnx_model(data));
