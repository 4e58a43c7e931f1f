//! `merge-labels` with a stranger's CSV files: the request CSV and the returned labels CSV,
//! split at the first NUL byte (without one, a valid request and the input as the labels). A
//! refused merge leaves no new root behind.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moco_fuzz::exercise::merge_labels_csv(data));
