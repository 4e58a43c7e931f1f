//! `--config FILE`: a stranger's config.json expanded into a command line and parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::config_json(data));
