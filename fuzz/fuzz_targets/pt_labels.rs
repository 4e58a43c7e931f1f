//! `train_label_tensor.pt`: labels or an error; parsing is a pure function of the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::pt_labels(data));
