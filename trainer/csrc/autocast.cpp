// The libtorch calls moco-train needs that tch 0.24 does not wrap, or wraps through an API that
// torch 2.11 deprecates with a warning on every call (tch's `autocast` uses
// `at::autocast::is_enabled/set_enabled`, CUDA only). Exceptions stay on this side of the C ABI.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace {

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

at::ScalarType half_type(int bf16) { return bf16 ? at::kBFloat16 : at::kHalf; }

}  // namespace

// What torch.autocast.__enter__ does for one device type: remember the previous state in
// `saved` (enabled, dtype), switch autocast on or off with the given half type (`bf16` < 0 keeps
// the current one), and count the nesting so that the outermost exit clears the cast cache.
extern "C" int moco_autocast_enter(int cuda, int enabled, int bf16, int* saved) {
  try {
    const auto d = device_type(cuda);
    saved[0] = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    saved[1] = static_cast<int>(at::autocast::get_autocast_dtype(d));
    at::autocast::set_autocast_enabled(d, enabled != 0);
    if (bf16 >= 0) {
      at::autocast::set_autocast_dtype(d, half_type(bf16));
    }
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return 1;
  }
}

// torch.autocast.__exit__: the state `moco_autocast_enter` saved, back.
extern "C" int moco_autocast_exit(int cuda, const int* saved) {
  try {
    const auto d = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(d, saved[0] != 0);
    at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(saved[1]));
    return 0;
  } catch (...) {
    return 1;
  }
}

// 1 when autocast is on for the device type, 0 when off, -1 on an error.
extern "C" int moco_autocast_is_enabled(int cuda) {
  try {
    return at::autocast::is_autocast_enabled(device_type(cuda)) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// The half type autocast casts to on the device type: 1 bf16, 0 fp16, 2 anything else, -1 on an
// error.
extern "C" int moco_autocast_is_bf16(int cuda) {
  try {
    const auto t = at::autocast::get_autocast_dtype(device_type(cuda));
    return t == at::kBFloat16 ? 1 : (t == at::kHalf ? 0 : 2);
  } catch (...) {
    return -1;
  }
}

// The calling thread's current CUDA device (what `torch.cuda.set_device` does), through the
// device-generic guard so that this file needs no CUDA headers: the CUDA implementation is
// registered when libtorch_cuda is loaded. 1 when there is none.
extern "C" int moco_cuda_set_device(int index) {
  try {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    impl->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)));
    return 0;
  } catch (...) {
    return 1;
  }
}

// TF32 for float32 convolutions and matmuls on CUDA (PyTorch's default: on for cuDNN's
// convolutions, off for cuBLAS's matmuls). Off, float32 on a GPU rounds as float32 does on a CPU,
// which a comparison of the two needs.
extern "C" int moco_cuda_tf32(int on) {
  try {
    auto& ctx = at::globalContext();
    const auto p = on ? at::Float32Precision::TF32 : at::Float32Precision::IEEE;
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, p);
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, p);
    return 0;
  } catch (...) {
    return 1;
  }
}

// channels_last for a variable or an input (tch 0.24 has no memory-format API): the tensor keeps
// its identity (set_data), so VarStore variables and optimizer handles stay valid. `t` is tch's
// C_tensor, a `torch::Tensor*` (torch-sys's torch_api.h).
extern "C" int moco_make_channels_last(at::Tensor* t) {
  try {
    if (t->dim() == 4) {
      t->set_data(t->contiguous(at::MemoryFormat::ChannelsLast));
    }
    return 0;
  } catch (...) {
    return 1;
  }
}
