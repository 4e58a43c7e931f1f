//! libtorch's `at::cuda::CUDAGraph` (csrc/cuda_graph.cpp): work queued on a CUDA device captured
//! once and replayed as one launch. What the replay reads and writes are the tensors the captured
//! work used, at the same addresses: inputs are copied into them before a replay, outputs read
//! from them after.

use std::ffi::{c_char, c_void, CStr};

use anyhow::{bail, Result};
use tch::Device;

extern "C" {
    fn moco_graph_new(out: *mut *mut c_void, device: i32, error: *mut *const c_char) -> i32;
    fn moco_graph_capture_begin(g: *mut c_void, error: *mut *const c_char) -> i32;
    fn moco_graph_capture_end(g: *mut c_void, error: *mut *const c_char) -> i32;
    fn moco_graph_replay(g: *mut c_void, error: *mut *const c_char) -> i32;
    fn moco_graph_free(g: *mut c_void);
    fn moco_graph_built() -> i32;
}

/// Whether this binary can capture CUDA graphs (built with the CUDA runtime's headers).
pub fn built() -> bool {
    // SAFETY: a constant of the shim.
    unsafe { moco_graph_built() != 0 }
}

/// The shim's error message for a failed call.
fn checked(rc: i32, error: *const c_char, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: on failure the shim points `error` at a NUL-terminated message it owns.
    let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy();
    bail!("CUDA graph {what}: {msg}")
}

/// One graph on one CUDA device: empty until [`CudaGraph::capture`].
pub struct CudaGraph {
    raw: *mut c_void,
    captured: bool,
}

impl CudaGraph {
    pub fn new(device: Device) -> Result<Self> {
        let Device::Cuda(index) = device else {
            bail!("--cuda-graph: needs a CUDA device (this run is on {device:?})");
        };
        let (mut raw, mut error) = (std::ptr::null_mut(), std::ptr::null());
        // SAFETY: out-pointers for the shim to fill.
        let rc = unsafe { moco_graph_new(&mut raw, index as i32, &mut error) };
        checked(rc, error, "creation")?;
        Ok(CudaGraph {
            raw,
            captured: false,
        })
    }

    pub fn is_captured(&self) -> bool {
        self.captured
    }

    /// Captures the kernels `work` queues (they do not run: [`CudaGraph::replay`] runs them).
    /// `work` must not wait for the device, nor copy from memory it frees.
    pub fn capture<T>(&mut self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut error = std::ptr::null();
        // SAFETY: `raw` is this graph's live handle.
        checked(
            unsafe { moco_graph_capture_begin(self.raw, &mut error) },
            error,
            "capture",
        )?;
        let out = work();
        // SAFETY: as above; ends the capture begun here even when `work` failed.
        let end = unsafe { moco_graph_capture_end(self.raw, &mut error) };
        let out = out?;
        checked(end, error, "capture")?;
        self.captured = true;
        Ok(out)
    }

    pub fn replay(&self) -> Result<()> {
        if !self.captured {
            bail!("CUDA graph replayed before it was captured");
        }
        let mut error = std::ptr::null();
        // SAFETY: `raw` is this graph's live, captured handle.
        checked(
            unsafe { moco_graph_replay(self.raw, &mut error) },
            error,
            "replay",
        )
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `raw` came from moco_graph_new and is freed once.
        unsafe { moco_graph_free(self.raw) }
    }
}
