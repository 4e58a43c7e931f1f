//! The image path of every command: decode (PNG/JPEG of any colour type, bit depth and size),
//! then the eval transform (resize the shorter side, center crop, CHW floats).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = datasets::decode::decode_bytes(data, Path::new("fuzz.png")) {
        let p = models::Preprocess::default();
        let t = datasets::transform::eval_tensor(img, &p);
        assert_eq!(t.len(), 3 * (p.crop * p.crop) as usize);
    }
});
