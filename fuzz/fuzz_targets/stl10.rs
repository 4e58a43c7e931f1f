//! The STL-10 reader on real files: `train_X.bin`, `train_y.bin` and `class_names.txt` with any
//! contents, listed for each split and every image decoded.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
struct Files {
    /// Images, as a count of 3×96×96 records plus a ragged tail (most lengths are refused).
    images: u8,
    tail: u16,
    fill: u8,
    labels: Vec<u8>,
    class_names: Option<String>,
}

fuzz_target!(|f: Files| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let n = (f.images % 4) as usize;
    let x_len = n * datasets::layout::STL10_IMAGE_BYTES
        + (f.tail as usize % 7 == 0) as usize * f.tail as usize;
    std::fs::write(root.join("train_X.bin"), vec![f.fill; x_len]).unwrap();
    std::fs::write(root.join("train_y.bin"), &f.labels).unwrap();
    std::fs::write(root.join("unlabeled_X.bin"), vec![f.fill; x_len]).unwrap();
    let names = root.join("class_names.txt");
    match &f.class_names {
        Some(s) => std::fs::write(&names, s).unwrap(),
        None => {
            let _ = std::fs::remove_file(&names);
        }
    }
    for split in [datasets::Split::Train, datasets::Split::Unlabeled] {
        if let Ok(data) = datasets::open(root, split, None) {
            for s in &data.samples {
                if let Some(l) = s.label {
                    assert!(l < data.classes.len());
                }
                let img = datasets::decode::load(&s.source).unwrap();
                assert_eq!(img.dimensions(), (96, 96));
            }
        }
    }
});
