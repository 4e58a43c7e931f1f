//! A safetensors file as an encoder (`--encoder`) and as a classifier (`--classifier`): header,
//! offsets, dtypes, shapes and the checks against resnet18's names.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::safetensors_weights(data));
