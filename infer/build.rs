// moco-infer loads libonnxruntime at run time (ort's load-dynamic). Bake in the checkout's wheel
// path as the last fallback, so the binary works from the checkout without ORT_DYLIB_PATH.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let venv = root.join(".venv/lib");
    let mut found = None;
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let p = e
                .path()
                .join("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1");
            if p.exists() {
                found = Some(p);
            }
        }
    }
    if let Some(p) = found {
        println!("cargo:rustc-env=MOCO_DEFAULT_ORT_DYLIB={}", p.display());
    } else {
        println!("cargo:rustc-env=MOCO_DEFAULT_ORT_DYLIB=");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../.venv/pyvenv.cfg");
}
