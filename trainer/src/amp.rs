//! GPU speed knobs tch 0.24 lacks, through `csrc/autocast.cpp`: the autocast dtype (tch's
//! `autocast` switches libtorch's autocast on; which half type it uses is set here) and the
//! channels_last memory format.

use anyhow::{bail, Result};

extern "C" {
    fn moco_set_cuda_autocast_bf16(bf16: i32) -> i32;
    fn moco_cuda_autocast_is_bf16() -> i32;
    fn moco_make_channels_last(t: *mut torch_sys::C_tensor) -> i32;
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

/// Sets CUDA autocast to bf16 (`true`) or fp16 and checks that libtorch took it.
pub fn set_cuda_dtype(bf16: bool) -> Result<()> {
    // SAFETY: plain C functions of csrc/autocast.cpp; they catch every C++ exception.
    let (set, now) = unsafe {
        (
            moco_set_cuda_autocast_bf16(bf16 as i32),
            moco_cuda_autocast_is_bf16(),
        )
    };
    if set != 0 || now != bf16 as i32 {
        bail!("--amp: libtorch refused the autocast dtype (bf16 = {bf16})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    #[test]
    fn channels_last_keeps_values_and_identity() {
        let x = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let want = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let (mut x2, mut w2) = (x.copy(), w.shallow_clone());
        super::make_channels_last(&mut x2).unwrap();
        super::make_channels_last(&mut w2).unwrap();
        assert!(
            !x2.is_contiguous() && !w.is_contiguous(),
            "not channels_last"
        );
        assert_eq!(x2.stride(), vec![105, 1, 21, 3]);
        let got = x2.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn dtype_round_trips_through_libtorch() {
        super::set_cuda_dtype(true).unwrap();
        super::set_cuda_dtype(false).unwrap();
    }
}
