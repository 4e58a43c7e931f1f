//! Updates of whole tensor lists in a few ATen ops (`csrc/foreach.cpp`: PyTorch's foreach and
//! fused kernels, which tch 0.24 does not wrap): the optimizers, the momentum encoders, the fp16
//! loss scaler's check and `zero_grad`. A step of resnet18 otherwise dispatches several ops for
//! each of its 62 parameters in each of these.

use anyhow::{bail, Result};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn moco_grads_to_none(params: *mut *mut C_tensor, n: i32) -> i32;
    fn moco_fused_sgd(
        params: *mut *mut C_tensor,
        grads: *mut *mut C_tensor,
        bufs: *mut *mut C_tensor,
        n: i32,
        lr: f64,
        lr_tensor: *mut C_tensor,
        momentum: f64,
        weight_decay: f64,
        first: i32,
    ) -> i32;
    fn moco_lars_step(
        params: *mut *mut C_tensor,
        grads: *mut *mut C_tensor,
        bufs: *mut *mut C_tensor,
        scaled: *const i32,
        n: i32,
        lr: f64,
        lr_tensor: *mut C_tensor,
        momentum: f64,
        weight_decay: f64,
        trust: f64,
        first: i32,
    ) -> i32;
    fn moco_foreach_ema(
        targets: *mut *mut C_tensor,
        sources: *mut *mut C_tensor,
        n: i32,
        m: f64,
    ) -> i32;
    fn moco_foreach_ema_tensor(
        targets: *mut *mut C_tensor,
        sources: *mut *mut C_tensor,
        n: i32,
        m: *mut C_tensor,
    ) -> i32;
    fn moco_unscale_grads(
        grads: *mut *mut C_tensor,
        n: i32,
        found_inf: *mut C_tensor,
        inv_scale: *mut C_tensor,
    ) -> i32;
}

/// Handles to a list of tensors for one call: shallow clones (the same storage and autograd
/// meta) whose `torch::Tensor*` the C side reads.
struct Handles {
    tensors: Vec<Tensor>,
    ptrs: Vec<*mut C_tensor>,
}

impl Handles {
    fn of<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Handles {
        let mut tensors: Vec<Tensor> = ts.into_iter().map(Tensor::shallow_clone).collect();
        let ptrs = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        Handles { tensors, ptrs }
    }

    fn ptr(&mut self) -> *mut *mut C_tensor {
        self.ptrs.as_mut_ptr()
    }

    fn len(&self) -> i32 {
        self.tensors.len() as i32
    }
}

/// A step's learning rate: a number, or a 0-dim float tensor on the parameters' device whose
/// value the kernels read (a captured CUDA graph's step keeps reading it; it is set before each
/// replay).
#[derive(Clone, Copy, Debug)]
pub enum Lr<'a> {
    Value(f64),
    Tensor(&'a Tensor),
}

/// An optional tensor handle for one call (null for none).
struct MaybeHandle(Option<Tensor>);

impl MaybeHandle {
    fn ptr(&mut self) -> *mut C_tensor {
        self.0
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t.as_mut_ptr())
    }
}

impl Lr<'_> {
    /// The number (NaN for a tensor) and the tensor's handle.
    fn parts(self) -> (f64, MaybeHandle) {
        match self {
            Lr::Value(v) => (v, MaybeHandle(None)),
            Lr::Tensor(t) => (f64::NAN, MaybeHandle(Some(t.shallow_clone()))),
        }
    }
}

fn check(rc: i32, what: &str) -> Result<()> {
    if rc != 0 {
        bail!("{what}: libtorch failed");
    }
    Ok(())
}

/// Every parameter's gradient dropped (`zero_grad(set_to_none=True)`).
pub fn grads_to_none<'a>(params: impl IntoIterator<Item = &'a Tensor>) {
    let mut h = Handles::of(params);
    // SAFETY: `h` holds live tensor handles for the call; the shim catches exceptions and
    // touches only their autograd meta.
    unsafe { moco_grads_to_none(h.ptr(), h.len()) };
}

/// `torch.optim.SGD` (momentum, weight decay, no dampening) over `params` with gradients `grads`
/// and momentum buffers `bufs` (contents ignored when `first`), in one fused kernel.
pub fn fused_sgd(
    (params, grads, bufs): (&[Tensor], &[Tensor], &[Tensor]),
    lr: Lr,
    momentum: f64,
    weight_decay: f64,
    first: bool,
) -> Result<()> {
    let (mut p, mut g, mut b) = (Handles::of(params), Handles::of(grads), Handles::of(bufs));
    let (lr, mut lr_tensor) = lr.parts();
    // SAFETY: three lists of the same length of live handles, the lr tensor live or null; the
    // shim catches exceptions.
    let rc = unsafe {
        moco_fused_sgd(
            p.ptr(),
            g.ptr(),
            b.ptr(),
            p.len(),
            lr,
            lr_tensor.ptr(),
            momentum,
            weight_decay,
            first as i32,
        )
    };
    check(rc, "SGD")
}

/// LARS (MoCo v3's): the tensors flagged in `scaled` step along (g + wd·p)·η‖p‖/‖g + wd·p‖, the
/// others along g; momentum buffers `bufs` (contents ignored when `first`). The gradients are
/// left as they are.
pub fn lars_step(
    (params, grads, bufs): (&[Tensor], &[Tensor], &[Tensor]),
    scaled: &[bool],
    (lr, momentum, weight_decay, trust): (Lr, f64, f64, f64),
    first: bool,
) -> Result<()> {
    let (mut p, mut g, mut b) = (Handles::of(params), Handles::of(grads), Handles::of(bufs));
    let flags: Vec<i32> = scaled.iter().map(|&s| s as i32).collect();
    let (lr, mut lr_tensor) = lr.parts();
    // SAFETY: three lists and the flags, all of the same length, the lr tensor live or null; the
    // shim catches exceptions.
    let rc = unsafe {
        moco_lars_step(
            p.ptr(),
            g.ptr(),
            b.ptr(),
            flags.as_ptr(),
            p.len(),
            lr,
            lr_tensor.ptr(),
            momentum,
            weight_decay,
            trust,
            first as i32,
        )
    };
    check(rc, "LARS")
}

/// θ_t ← m·θ_t + (1 − m)·θ_s over paired lists, in two kernels.
pub fn ema(targets: &[Tensor], sources: &[Tensor], m: f64) -> Result<()> {
    let (mut t, mut s) = (Handles::of(targets), Handles::of(sources));
    // SAFETY: as in `fused_sgd`.
    let rc = unsafe { moco_foreach_ema(t.ptr(), s.ptr(), t.len(), m) };
    check(rc, "momentum update")
}

/// [`ema`] with m a 0-dim tensor on the device, read by the kernels.
pub fn ema_at(targets: &[Tensor], sources: &[Tensor], m: &Tensor) -> Result<()> {
    let (mut t, mut s) = (Handles::of(targets), Handles::of(sources));
    let mut m = m.shallow_clone();
    // SAFETY: as in `fused_sgd`; `m` is a live handle.
    let rc = unsafe { moco_foreach_ema_tensor(t.ptr(), s.ptr(), t.len(), m.as_mut_ptr()) };
    check(rc, "momentum update")
}

/// Every gradient times `inv_scale` (a 1-element tensor); `found_inf` (1 element) set to 1 when
/// any is not finite. No synchronisation.
pub fn unscale_grads(
    grads: &[Tensor],
    found_inf: &mut Tensor,
    inv_scale: &mut Tensor,
) -> Result<()> {
    let mut g = Handles::of(grads);
    // SAFETY: live handles; the shim catches exceptions.
    let rc = unsafe {
        moco_unscale_grads(
            g.ptr(),
            g.len(),
            found_inf.as_mut_ptr(),
            inv_scale.as_mut_ptr(),
        )
    };
    check(rc, "loss scaler")
}
