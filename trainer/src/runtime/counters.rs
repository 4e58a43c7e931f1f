//! What a training step costs the host: the ATen ops it dispatches (counted by a RecordFunction
//! callback in `csrc/autocast.cpp`) and the host synchronisations it makes. Every place of the
//! training path that would block the host on CUDA — an upload from pageable memory, a scalar or
//! a tensor read back — goes through the functions here, which count it on every device, so that
//! a CPU run shows what a GPU would wait for (`moco-train bench-step`).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};
use tch::{Device, Tensor};

extern "C" {
    fn moco_count_ops(on: i32) -> i32;
    fn moco_read_ops(top: *mut u64, all: *mut u64);
    fn moco_read_op_names(buf: *mut std::ffi::c_char, len: usize);
    fn moco_device_synchronize(index: i32) -> i32;
    fn moco_device_peak_bytes(index: i32, reset: i32) -> i64;
}

static SYNCS: AtomicU64 = AtomicU64::new(0);

fn synced() {
    SYNCS.fetch_add(1, Ordering::Relaxed);
}

/// Host synchronisations since the last call.
pub fn take_syncs() -> u64 {
    SYNCS.swap(0, Ordering::Relaxed)
}

/// `t` (host memory) on `device`, the host waiting for the copy: a pageable upload on CUDA.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    synced();
    t.to_device(device)
}

/// `t` (host memory) on `device` without waiting: staged in pinned memory and copied
/// asynchronously on CUDA (the copy is ordered on the stream before the kernels that read it).
/// Not a synchronisation, so not counted; on the CPU it is `t` itself.
pub fn upload_async(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => t
            .pin_memory(device)
            .to_device_(device, t.kind(), true, false),
        _ => t.shallow_clone(),
    }
}

/// A scalar read back to the host (`.item()`).
pub fn scalar(t: &Tensor) -> f64 {
    synced();
    t.double_value(&[])
}

/// An integer scalar read back to the host.
pub fn int_scalar(t: &Tensor) -> i64 {
    synced();
    t.int64_value(&[])
}

/// A boolean scalar read back to the host.
pub fn flag(t: &Tensor) -> bool {
    synced();
    bool::try_from(t).unwrap_or(false)
}

/// Waits until `device` has run everything queued (for timing; nothing to wait for on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        // SAFETY: a plain C function of csrc/autocast.cpp that catches every C++ exception.
        unsafe { moco_device_synchronize(i as i32) };
    }
}

/// The most memory the step's tensors held: the CUDA caching allocator's peak since the last
/// call (which resets it), or on the CPU the process's peak resident set (VmHWM, never reset).
pub fn peak_bytes(device: Device) -> Option<u64> {
    match device {
        // SAFETY: as `synchronize`.
        Device::Cuda(i) => u64::try_from(unsafe { moco_device_peak_bytes(i as i32, 1) }).ok(),
        _ => std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024),
    }
}

/// ATen op counts while the guard lives (top-level and with the ops they call inside).
pub struct OpCounter(());

impl OpCounter {
    /// `by_name`: also a table of the top-level ops by name ([`OpCounter::names`]).
    pub fn start(by_name: bool) -> Result<OpCounter> {
        // SAFETY: plain C functions of csrc/autocast.cpp that catch every C++ exception.
        if unsafe { moco_count_ops(if by_name { 2 } else { 1 }) } != 0 {
            bail!("bench-step: libtorch refused the op-counting callback");
        }
        let _ = Self::take();
        Ok(OpCounter(()))
    }

    /// The top-level ops by name since counting started, most frequent first.
    pub fn names() -> Vec<(u64, String)> {
        let mut buf = vec![0u8; 1 << 20];
        // SAFETY: writes a NUL-terminated string of at most `buf.len()` bytes into `buf`.
        unsafe { moco_read_op_names(buf.as_mut_ptr().cast(), buf.len()) };
        let text = std::ffi::CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut v: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let (n, name) = l.split_once(' ')?;
                Some((n.parse().ok()?, name.to_string()))
            })
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }

    /// (top-level, nested) ops since the last take.
    pub fn take() -> (u64, u64) {
        let (mut top, mut all) = (0u64, 0u64);
        // SAFETY: writes two integers.
        unsafe { moco_read_ops(&mut top, &mut all) };
        (top, all)
    }
}

impl Drop for OpCounter {
    fn drop(&mut self) {
        // SAFETY: as in `start`.
        unsafe { moco_count_ops(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// A matmul is one top-level op (it calls `mm` inside); a sum of it a second. Counting stops
    /// with the guard.
    #[test]
    fn ops_count_top_level_and_nested() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let counter = OpCounter::start(false).unwrap();
        let _ = a.matmul(&a).sum(Kind::Float);
        let (top, all) = OpCounter::take();
        // At least: other tests of this process dispatch ops on their threads meanwhile.
        assert!(top >= 2, "matmul + sum: {top}");
        assert!(all > top, "matmul calls mm inside: {all}");
        drop(counter);
        // Ops that other tests' threads had in flight when counting stopped may still land:
        // drain them, then dispatch enough that counting on would be unmistakable.
        let _ = OpCounter::take();
        for _ in 0..100 {
            let _ = a.matmul(&a);
        }
        let (top, all) = OpCounter::take();
        assert!(
            top + all < 20,
            "counted after the guard: {top} + {all} (on: ≥ 200)"
        );
    }

    #[test]
    fn reads_and_uploads_count_as_syncs() {
        let _ = take_syncs();
        let a = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let _ = upload(&a, Device::Cpu);
        let _ = scalar(&a.sum(Kind::Float));
        let _ = upload_async(&a, Device::Cpu);
        assert!(take_syncs() >= 2);
    }
}
