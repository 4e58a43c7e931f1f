//! Which instruction-set path the host loops (colour jitter, blur) run on, chosen once per
//! process and forcible with `MOCO_SIMD=avx512|avx2|baseline`, so that every path a CPU has can be
//! run and tested on it. Hand-written rather than the `multiversion` crate: that crate picks the
//! path itself and has no way to force one, and the tests must run each.

use std::sync::OnceLock;

use anyhow::{bail, Result};

/// The variable that forces a path.
pub const ENV: &str = "MOCO_SIMD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsaPath {
    /// AVX-512 F/BW/VL with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
}

impl IsaPath {
    pub const ALL: [IsaPath; 3] = [IsaPath::Avx512, IsaPath::Avx2, IsaPath::Baseline];

    pub fn name(self) -> &'static str {
        match self {
            IsaPath::Avx512 => "avx512",
            IsaPath::Avx2 => "avx2",
            IsaPath::Baseline => "baseline",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                IsaPath::Avx512 => {
                    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma")
                }
                IsaPath::Avx2 => has!("avx2") && has!("fma"),
                IsaPath::Baseline => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == IsaPath::Baseline
        }
    }

    /// Every path this CPU runs, widest first.
    pub fn available() -> Vec<IsaPath> {
        Self::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The path `MOCO_SIMD` asks for, or the widest this CPU has; an unknown name or a path the
    /// CPU lacks is an error naming the variable.
    pub fn from_env() -> Result<IsaPath> {
        let Ok(v) = std::env::var(ENV) else {
            return Ok(Self::available()[0]);
        };
        let Some(p) = Self::ALL.into_iter().find(|p| p.name() == v) else {
            bail!("{ENV}={v}: expected avx512, avx2 or baseline");
        };
        if !p.supported() {
            bail!(
                "{ENV}={v}: this CPU does not have it (it has: {})",
                names(&Self::available())
            );
        }
        Ok(p)
    }

    /// The path of this process (`from_env`, read once; the binary checks it at start-up, so the
    /// fallback to the widest path only serves library users who set a bad value).
    pub fn active() -> IsaPath {
        static ACTIVE: OnceLock<IsaPath> = OnceLock::new();
        *ACTIVE.get_or_init(|| Self::from_env().unwrap_or_else(|_| Self::available()[0]))
    }
}

/// Test helper: the largest |Δ| between `want` and `run(path, host copy of x)` on each path this
/// CPU has, as (path, Δ) pairs.
#[cfg(test)]
pub(crate) fn max_diff_on_every_path(
    x: &tch::Tensor,
    want: &tch::Tensor,
    run: impl Fn(IsaPath, &mut [f32]),
) -> Vec<(IsaPath, f64)> {
    IsaPath::available()
        .into_iter()
        .map(|path| {
            let mut buf = Vec::<f32>::try_from(x.flatten(0, -1)).expect("f32 tensor");
            run(path, &mut buf);
            let got = tch::Tensor::from_slice(&buf).view_as(x);
            (path, (got - want).abs().max().double_value(&[]))
        })
        .collect()
}

/// oneDNN's `ONEDNN_MAX_CPU_ISA` values that keep its bf16 kernels (AVX512-BF16 and above).
const ONEDNN_BF16_ISAS: &[&str] = &[
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "ALL",
    "DEFAULT",
];

/// Whether /proc/cpuinfo lists one of `flags` for the first CPU (x86 `flags`, Arm `Features`).
pub fn cpu_has_any(flags: &[&str]) -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .is_some_and(|l| l.split_whitespace().any(|f| flags.contains(&f)))
}

/// Why bf16 convolutions and matmuls would not run natively on this CPU (`None` when they do):
/// no `avx512_bf16` or `amx_bf16` flag (x86-64) or `bf16` feature (Arm), or oneDNN held below
/// them by `ONEDNN_MAX_CPU_ISA`. Without them oneDNN converts to float32 and back around every
/// kernel, far slower than float32 alone.
pub fn no_native_bf16() -> Option<String> {
    if !cpu_has_any(&["avx512_bf16", "amx_bf16", "bf16"]) {
        return Some("this CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16)".into());
    }
    match std::env::var("ONEDNN_MAX_CPU_ISA") {
        Ok(v) if !ONEDNN_BF16_ISAS.contains(&v.to_uppercase().as_str()) => Some(format!(
            "ONEDNN_MAX_CPU_ISA={v} holds oneDNN below its bf16 kernels"
        )),
        _ => None,
    }
}

pub fn names(paths: &[IsaPath]) -> String {
    paths
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fn $name(path: IsaPath, args…)` that runs `$body(args…)` compiled for `path`. `$body` must be
/// `#[inline(always)]` so that each copy is vectorized for its own instruction set.
macro_rules! multiversioned {
    ($(#[$meta:meta])* $vis:vis fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$meta])*
        $vis fn $name(path: $crate::runtime::isa::IsaPath, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            assert!(path.supported(), "{path:?} is not supported by this CPU");
            match path {
                // SAFETY: the assertion above: the CPU has the features the copy is built for.
                #[cfg(target_arch = "x86_64")]
                $crate::runtime::isa::IsaPath::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::runtime::isa::IsaPath::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversioned;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_always_there_and_the_active_path_is_available() {
        let a = IsaPath::available();
        assert_eq!(a.last(), Some(&IsaPath::Baseline));
        assert!(a.contains(&IsaPath::active()));
    }
}
