//! `train_label_tensor.pt` as a stranger could write it: any bytes must give labels or an error,
//! never a panic, a hang or an unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(labels) = datasets::pt_labels::parse_label_tensor(data) {
        // What parsed must be what a later reader sees: parsing is a pure function of the bytes.
        assert_eq!(
            Some(labels),
            datasets::pt_labels::parse_label_tensor(data).ok()
        );
    }
});
