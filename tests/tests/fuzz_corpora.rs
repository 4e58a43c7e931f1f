//! The fuzz corpora replayed on the stable toolchain: every saved input of each byte-input target
//! (fuzz/corpus/<target>/: the seeds made by the real tools and what the fuzzer kept) through the
//! same reader calls as the target (fuzz/src/exercise.rs, included here), so that a finding once
//! fixed stays fixed without nightly or a sanitizer.

#[path = "../../fuzz/src/exercise.rs"]
mod exercise;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    for f in &files {
        run(&std::fs::read(f).unwrap());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn pt_labels() {
    replay("pt_labels", exercise::pt_labels);
}

#[test]
fn image_decode() {
    replay("image_decode", exercise::image_decode);
}

#[test]
fn onnx_metadata() {
    replay("onnx_metadata", exercise::onnx_metadata);
}

#[test]
fn torch_checkpoint() {
    replay("torch_checkpoint", exercise::torch_checkpoint);
}

#[test]
fn safetensors_weights() {
    replay("safetensors_weights", exercise::safetensors_weights);
}

#[test]
fn merge_labels_csv() {
    replay("merge_labels_csv", exercise::merge_labels_csv);
}

#[test]
fn onnx_model() {
    replay("onnx_model", exercise::onnx_model);
}

#[test]
fn config_json() {
    replay("config_json", exercise::config_json);
}

#[test]
fn run_state() {
    replay("run_state", exercise::run_state);
}
