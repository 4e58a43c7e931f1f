//! Mixed precision and the device knobs tch 0.24 lacks, through `csrc/autocast.cpp`: autocast
//! switched per device type through libtorch's device-specific API (tch's own `autocast` goes
//! through a CUDA-only API that torch 2.11 deprecates with a warning on every call), the loss in
//! float32 inside an autocast region, the current CUDA device, and channels_last.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::runtime::faults::{planted, Fault};

/// `--amp`: the autocast dtype of the forward passes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    Off,
    Bf16,
    Fp16,
}

/// Planted fault: the losses left to autocast's own lists (on the CPU: norms, softmax and sums in
/// the half type).
pub const LOSS_IN_HALF: Fault = "loss left in the half type";

extern "C" {
    fn moco_autocast_enter(cuda: i32, enabled: i32, bf16: i32, saved: *mut i32) -> i32;
    fn moco_autocast_exit(cuda: i32, saved: *const i32) -> i32;
    fn moco_autocast_is_enabled(cuda: i32) -> i32;
    fn moco_autocast_is_bf16(cuda: i32) -> i32;
    fn moco_cuda_set_device(index: i32) -> i32;
    fn moco_cuda_tf32(on: i32) -> i32;
    fn moco_make_channels_last(t: *mut torch_sys::C_tensor) -> i32;
}

/// Autocast for one device type with one half type: what `torch.autocast(device, dtype)` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autocast {
    pub cuda: bool,
    pub bf16: bool,
}

impl Autocast {
    /// The autocast of `--amp` on `device`; `None` for `--amp off` (nothing is switched then).
    pub fn of(amp: Amp, device: Device) -> Option<Autocast> {
        let cuda = device.is_cuda();
        match amp {
            Amp::Off => None,
            Amp::Bf16 => Some(Autocast { cuda, bf16: true }),
            Amp::Fp16 => Some(Autocast { cuda, bf16: false }),
        }
    }

    /// The half type the autocast region computes in.
    pub fn kind(self) -> Kind {
        if self.bf16 {
            Kind::BFloat16
        } else {
            Kind::Half
        }
    }
}

/// The state an entered region restores on drop, as `torch.autocast.__exit__` does.
struct Region {
    cuda: i32,
    saved: [i32; 2],
}

impl Region {
    /// `bf16`: 1 or 0 sets the half type, −1 keeps it.
    fn enter(cuda: bool, enabled: bool, bf16: i32) -> Result<Region> {
        let mut saved = [0; 2];
        // SAFETY: a plain C function of csrc/autocast.cpp writing two ints into `saved`; it
        // catches every C++ exception.
        let rc =
            unsafe { moco_autocast_enter(cuda as i32, enabled as i32, bf16, saved.as_mut_ptr()) };
        if rc != 0 {
            bail!("--amp: libtorch refused to switch autocast (cuda = {cuda})");
        }
        Ok(Region {
            cuda: cuda as i32,
            saved,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; `saved` is what enter wrote. A failure here cannot be reported
        // from a drop and leaves at most the previous state's dtype unset.
        unsafe { moco_autocast_exit(self.cuda, self.saved.as_ptr()) };
    }
}

/// Runs `f` under `amp`'s autocast, or plainly when `amp` is `None` (no libtorch call at all).
pub fn autocast<T>(amp: Option<Autocast>, f: impl FnOnce() -> T) -> Result<T> {
    let Some(a) = amp else {
        return Ok(f());
    };
    let _region = Region::enter(a.cuda, true, a.bf16 as i32)?;
    Ok(f())
}

/// Whether autocast is on for the device type on this thread.
pub fn is_enabled(cuda: bool) -> bool {
    // SAFETY: a plain C function of csrc/autocast.cpp that catches every C++ exception.
    unsafe { moco_autocast_is_enabled(cuda as i32) == 1 }
}

/// The half type autocast uses on the device type (BFloat16 or Half).
pub fn half_kind(cuda: bool) -> Option<Kind> {
    // SAFETY: as `is_enabled`.
    match unsafe { moco_autocast_is_bf16(cuda as i32) } {
        1 => Some(Kind::BFloat16),
        0 => Some(Kind::Half),
        _ => None,
    }
}

/// Runs `f` with autocast off wherever it is on, as PyTorch AMP's float32 policy does for
/// softmax, log-softmax, norms, sums and means. CPU autocast leaves those in the half type (only
/// `cross_entropy` and `mse_loss` are on its float32 list), so the losses take this region
/// instead of relying on the device's lists: the same loss in float32 on every device.
pub fn full_precision<T>(f: impl FnOnce() -> T) -> T {
    if planted(LOSS_IN_HALF) {
        return f();
    }
    let regions: Vec<Region> = [false, true]
        .into_iter()
        .filter(|&cuda| is_enabled(cuda))
        .filter_map(|cuda| Region::enter(cuda, false, -1).ok())
        .collect();
    let out = f();
    drop(regions);
    out
}

/// `x` in float32 when it is a half type, else itself: the input of a float32 loss.
pub fn to_full(x: &Tensor) -> Tensor {
    match x.kind() {
        Kind::Half | Kind::BFloat16 if !planted(LOSS_IN_HALF) => x.to_kind(Kind::Float),
        _ => x.shallow_clone(),
    }
}

/// Makes `index` the calling thread's current CUDA device (what `torch.cuda.set_device` does),
/// so that NCCL, cuDNN handles and temporaries of this rank live on its own GPU.
pub fn set_cuda_device(index: usize) -> Result<()> {
    // SAFETY: a plain C function of csrc/autocast.cpp that catches every C++ exception.
    if unsafe { moco_cuda_set_device(index as i32) } != 0 {
        bail!("--device cuda:{index}: libtorch could not make it the current device");
    }
    Ok(())
}

/// TF32 for CUDA's float32 convolutions and matmuls; off makes a GPU's float32 round as a CPU's
/// does (`pretrain --no-tf32`, for `moco-train compare`).
pub fn set_cuda_tf32(on: bool) -> Result<()> {
    // SAFETY: a plain C function of csrc/autocast.cpp that catches every C++ exception.
    if unsafe { moco_cuda_tf32(on as i32) } != 0 {
        bail!("--no-tf32: libtorch refused the float32 precision setting");
    }
    Ok(())
}

/// Converts a 4-D tensor to channels_last in place (same values, same identity); other ranks are
/// left alone.
pub fn make_channels_last(t: &mut tch::Tensor) -> Result<()> {
    // SAFETY: `as_mut_ptr` is the live `torch::Tensor*` behind `t`; the shim catches exceptions.
    if unsafe { moco_make_channels_last(t.as_mut_ptr()) } != 0 {
        bail!("channels_last: libtorch refused the conversion");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn channels_last_keeps_values_and_identity() {
        let x = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let want = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let (mut x2, mut w2) = (x.copy(), w.shallow_clone());
        make_channels_last(&mut x2).unwrap();
        make_channels_last(&mut w2).unwrap();
        assert!(
            !x2.is_contiguous() && !w.is_contiguous(),
            "not channels_last"
        );
        assert_eq!(x2.stride(), vec![105, 1, 21, 3]);
        let got = x2.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    /// CPU autocast computes a matmul in bf16 inside the region, in float32 outside it and inside
    /// a full-precision region, and leaves the previous state behind on every exit.
    #[test]
    fn cpu_autocast_switches_and_restores() {
        let a = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let cpu_bf16 = Some(Autocast {
            cuda: false,
            bf16: true,
        });
        assert!(!is_enabled(false));
        let (inside, nested) = autocast(cpu_bf16, || {
            assert!(is_enabled(false));
            assert_eq!(half_kind(false), Some(Kind::BFloat16));
            let nested = full_precision(|| {
                assert!(!is_enabled(false));
                a.mm(&a).kind()
            });
            assert!(is_enabled(false), "full_precision did not restore autocast");
            (a.mm(&a).kind(), nested)
        })
        .unwrap();
        assert_eq!((inside, nested), (Kind::BFloat16, Kind::Float));
        assert!(!is_enabled(false));
        assert_eq!(a.mm(&a).kind(), Kind::Float);
        // `--amp off`: nothing switched.
        assert_eq!(autocast(None, || a.mm(&a).kind()).unwrap(), Kind::Float);
    }

    /// The setting is host state: it takes on a machine without a GPU too.
    #[test]
    fn tf32_switches_without_a_gpu() {
        set_cuda_tf32(false).unwrap();
        set_cuda_tf32(true).unwrap();
    }

    #[test]
    fn half_inputs_widen_for_the_loss() {
        let h = Tensor::ones([2], (Kind::BFloat16, Device::Cpu));
        assert_eq!(to_full(&h).kind(), Kind::Float);
        let d = Tensor::ones([2], (Kind::Double, Device::Cpu));
        assert_eq!(to_full(&d).kind(), Kind::Double);
    }
}
