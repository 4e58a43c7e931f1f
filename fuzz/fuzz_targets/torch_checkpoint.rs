//! `--encoder FILE`: a `torch.save` archive (or anything else) through the path knn, linear,
//! label-request and export take — sniffing, the zip, the restricted pickle, the state_dict and
//! backbone prefix, storages with offsets and strides, f16/bf16 widening — then the
//! architecture's names and shapes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::torch_checkpoint(data));
