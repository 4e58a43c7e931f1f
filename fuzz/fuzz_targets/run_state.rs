//! A resume state of `pretrain` or `linear` edited by hand, as `--resume` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::run_state(data));
