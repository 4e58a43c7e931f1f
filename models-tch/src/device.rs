use tch::Device;

/// `--device auto|cpu|cuda|cuda:N` (SPEC): auto picks CUDA when libtorch sees a GPU. Asking for
/// CUDA where there is none is an error rather than a silent CPU run.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda = |i: usize| {
        let n = tch::Cuda::device_count() as usize;
        if i < n {
            Ok(Device::Cuda(i))
        } else if n == 0 {
            Err(format!(
                "--device {s}: libtorch sees no CUDA device ({})",
                cuda_facts()
            ))
        } else {
            Err(format!("--device {s}: only {n} CUDA device(s) visible"))
        }
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(format!("--device {s}: expected auto, cpu, cuda or cuda:N")),
        },
    }
}

/// What this process can tell about CUDA when libtorch counts no device: whether libtorch's CUDA
/// library and the NVIDIA driver's library are loaded. (`tch::utils::has_cuda()` is no help: it
/// is false on a CUDA build of libtorch when there is no device.)
fn cuda_facts() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let loaded = |lib: &str| maps.contains(lib);
    let torch_cuda = if loaded("libtorch_cuda.so") {
        "libtorch_cuda is loaded"
    } else {
        "libtorch_cuda is not loaded (a CPU-only libtorch?)"
    };
    let driver = if loaded("libcuda.so") {
        "the NVIDIA driver library is loaded and reports 0 devices"
    } else {
        "no NVIDIA driver library (libcuda.so.1) was found"
    };
    format!("{torch_cuda}; {driver}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").unwrap_err().contains("--device gpu"));
        assert!(parse_device("cuda:x").is_err());
        if tch::Cuda::device_count() == 0 {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(parse_device("cuda").unwrap_err().contains("no CUDA device"));
        }
    }
}
