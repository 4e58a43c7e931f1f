// tch's link flags stop at the tch crate: the final binary must itself ask for libtorch, with an
// rpath to the wheel's torch/lib (so `moco-train` runs from the checkout without LD_LIBRARY_PATH),
// and keep libtorch_cuda even though no Rust symbol references it — otherwise the linker drops it
// under --as-needed and CUDA silently disappears on a GPU machine.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/counters.cpp");
    println!("cargo:rerun-if-changed=csrc/foreach.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo::rustc-check-cfg=cfg(moco_gloo)");
    println!("cargo::rustc-check-cfg=cfg(moco_nccl)");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    // Rebuild with distributed support once libgloo-dev appears.
    println!("cargo:rerun-if-changed=/usr/include/gloo/config.h");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // csrc/{autocast,counters,foreach}.cpp: the libtorch calls tch lacks (autocast per device,
        // op counting, foreach and fused updates), compiled against the same libtorch headers
        // with torch-sys's flags.
        let include = std::path::Path::new(&lib).join("../include");
        libtorch_build(&include)
            .file("csrc/autocast.cpp")
            .file("csrc/counters.cpp")
            .file("csrc/foreach.cpp")
            .compile("moco_autocast");
        let cuda_libtorch = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
        // csrc/cuda_graph.cpp: `at::cuda::CUDAGraph` needs the CUDA runtime's headers; without
        // them the same file builds stubs that say so.
        let mut graph = libtorch_build(&include);
        graph.file("csrc/cuda_graph.cpp");
        if let Some(cuda) = cuda_libtorch.then(|| cuda_include(&lib)).flatten() {
            graph.include(cuda).define("MOCO_CUDA_GRAPH", None);
        }
        graph.compile("moco_cuda_graph");
        if cuda_libtorch {
            // Its streams and events (libc10_cuda), for every crate that links the trainer.
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        // csrc/dist.cpp: c10d's TCPStore + ProcessGroupGloo (distributed pretraining). The wheel
        // ships the c10d headers and symbols (in libtorch_cpu); Gloo's headers come from Debian's
        // libgloo-dev (scripts/setup.sh installs it). Without them moco-train builds without
        // distributed support and says so when asked for more than one rank.
        let gloo = ["/usr/include", "/usr/local/include"]
            .iter()
            .map(std::path::Path::new)
            .find(|d| d.join("gloo/config.h").exists());
        if let Some(gloo) = gloo {
            let mut build = libtorch_build(&include);
            build
                .file("csrc/dist.cpp")
                .include(gloo)
                .define("USE_C10D_GLOO", None);
            // ProcessGroupNCCL: its header pulls in the CUDA runtime's headers (crt/ and CCCL's
            // nv/ included: the wheel's nvidia-cuda-runtime lacks them, scripts/setup.sh adds
            // nvidia-cuda-crt and nvidia-cuda-cccl) and nccl.h; the symbols are in libtorch_cuda.
            let nccl = cuda_libtorch.then(|| nccl_includes(&lib)).flatten();
            if let Some(dirs) = &nccl {
                for d in dirs {
                    build.include(d);
                }
                build.define("USE_C10D_NCCL", None);
                println!("cargo:rustc-cfg=moco_nccl");
            } else if cuda_libtorch {
                println!("cargo:warning=CUDA/NCCL headers not found (scripts/setup.sh installs nvidia-cuda-crt and nvidia-cuda-cccl): building without NCCL; distributed runs use Gloo");
            }
            build.compile("moco_dist");
            println!("cargo:rustc-cfg=moco_gloo");
            println!("cargo:rustc-link-arg=-ltorch_cpu");
            println!("cargo:rustc-link-arg=-lc10");
        } else {
            println!("cargo:warning=Gloo headers not found (apt-get install libgloo-dev): building without distributed pretraining");
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-search=native={lib}");
        let libs = if cuda_libtorch {
            "-ltorch -ltorch_cuda"
        } else {
            "-ltorch"
        };
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        for l in libs.split(' ') {
            println!("cargo:rustc-link-arg={l}");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// A C++ build against libtorch's headers (`include`) with torch-sys's flags.
fn libtorch_build(include: &std::path::Path) -> cc::Build {
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false);
    build
}

/// Include folders for ProcessGroupNCCL.hpp: the CUDA runtime headers (with `crt/host_config.h`)
/// and `nccl.h`, from the wheel's nvidia packages next to torch, else from CUDA_HOME.
fn nccl_includes(torch_lib: &str) -> Option<Vec<std::path::PathBuf>> {
    let site = std::path::PathBuf::from(torch_lib).join("../..");
    let cuda = cuda_include(torch_lib)?;
    let nccl = [site.join("nvidia/nccl/include"), cuda.clone()]
        .into_iter()
        .find(|d| d.join("nccl.h").exists())?;
    Some(vec![cuda, nccl])
}

/// The CUDA runtime's headers (with `crt/host_config.h` and CCCL's `nv/`): the wheel's nvidia
/// packages next to torch, else CUDA_HOME, else /usr/local/cuda.
fn cuda_include(torch_lib: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let site = PathBuf::from(torch_lib).join("../..");
    let cuda_dirs = [
        Some(site.join("nvidia/cu13/include")),
        std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include")),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ];
    let cuda = cuda_dirs.into_iter().flatten().find(|d| {
        ["cuda_runtime.h", "crt/host_config.h", "nv/target"]
            .iter()
            .all(|f| d.join(f).exists())
    })?;
    println!(
        "cargo:rerun-if-changed={}",
        cuda.join("crt/host_config.h").display()
    );
    Some(cuda)
}
