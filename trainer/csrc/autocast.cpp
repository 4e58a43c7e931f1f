// The one libtorch call moco-train needs that tch 0.24 does not wrap: choosing the dtype of CUDA
// autocast (tch's `autocast` always means fp16). Exceptions stay on this side of the C ABI.
#include <ATen/autocast_mode.h>

extern "C" int moco_set_cuda_autocast_bf16(int bf16) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (...) {
    return 1;
  }
}

extern "C" int moco_cuda_autocast_is_bf16() {
  try {
    return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
  } catch (...) {
    return -1;
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
