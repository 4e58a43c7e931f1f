// csrc/split_batch_norm.cpp: SplitBatchNorm as a libtorch dispatcher op with its own backward
// (tch cannot register operators), compiled against the libtorch that torch-sys links; the final
// binary links libtorch through torch-sys.
fn main() {
    println!("cargo:rerun-if-changed=csrc/split_batch_norm.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("moco-models-tch: torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)");
    };
    let include = std::path::Path::new(&lib).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/split_batch_norm.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("moco_split_batch_norm");
}
