//! The image path of every command: decode (PNG/JPEG of any colour type, bit depth and size),
//! then the eval transform (resize the shorter side, center crop, CHW floats).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::image_decode(data));
