// Whole-model updates in a few ATen ops instead of a few per parameter: PyTorch's foreach and
// fused kernels, which tch 0.24 does not wrap. Tensors arrive as tch's C_tensor pointers (a
// `torch::Tensor*` each); every function catches C++ exceptions and returns 1 on one.
#include <ATen/ATen.h>

#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // namespace

// `optimizer.zero_grad(set_to_none=True)`: no kernel at all, and the next backward hands each
// parameter its gradient instead of adding it to zeros.
extern "C" int moco_grads_to_none(at::Tensor** params, int n) {
  return guarded([&] {
    for (int i = 0; i < n; ++i) {
      params[i]->mutable_grad().reset();
    }
  });
}

// torch.optim.SGD's update of every parameter in one fused kernel: d = g + wd·p; buf = d at the
// first step, else m·buf + d; p −= lr·buf. `bufs` hold the momentum buffers (allocated by the
// caller, their contents ignored when `first`). The lr is `lr_tensor` when given (a 0-dim tensor
// on the device, read by the kernel: what a captured CUDA graph replays with a new lr), else `lr`.
extern "C" int moco_fused_sgd(at::Tensor** params, at::Tensor** grads, at::Tensor** bufs, int n,
                              double lr, at::Tensor* lr_tensor, double momentum,
                              double weight_decay, int first) {
  return guarded([&] {
    auto p = list(params, n);
    auto g = list(grads, n);
    auto b = list(bufs, n);
    if (lr_tensor) {
      at::_fused_sgd_(p, g, b, weight_decay, momentum, *lr_tensor, /*dampening=*/0.0,
                      /*nesterov=*/false, /*maximize=*/false, first != 0);
    } else {
      at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, /*dampening=*/0.0, /*nesterov=*/false,
                      /*maximize=*/false, first != 0);
    }
  });
}

// MoCo v3's LARS step for every parameter at once, the gradients left as they are: for the
// tensors flagged in `scaled` (rank > 1), d = (g + wd·p)·η‖p‖/‖g + wd·p‖ (1 where either norm is
// 0), the norms of all of them from two foreach kernels and the ratios from a few ops on their
// stack; d = g for the others. Then buf = d (first) or m·buf + d, and p −= lr·buf (the lr from
// `lr_tensor` when given, as in moco_fused_sgd).
extern "C" int moco_lars_step(at::Tensor** params, at::Tensor** grads, at::Tensor** bufs,
                              const int* scaled, int n, double lr, at::Tensor* lr_tensor,
                              double momentum, double weight_decay, double trust, int first) {
  return guarded([&] {
    std::vector<at::Tensor> ps, gs;
    std::vector<int> at_scaled;
    for (int i = 0; i < n; ++i) {
      if (scaled[i]) {
        ps.push_back(*params[i]);
        gs.push_back(*grads[i]);
        at_scaled.push_back(i);
      }
    }
    auto d = list(grads, n);
    if (!ps.empty()) {
      auto ds = weight_decay != 0.0 ? at::_foreach_add(gs, ps, weight_decay) : at::_foreach_mul(gs, 1.0);
      auto pn = at::stack(at::_foreach_norm(ps));
      auto dn = at::stack(at::_foreach_norm(ds));
      auto one = at::ones_like(pn);
      auto ratio = at::where(pn > 0, at::where(dn > 0, pn * trust / dn, one), one);
      at::_foreach_mul_(ds, ratio.unbind());
      for (size_t j = 0; j < at_scaled.size(); ++j) {
        d[at_scaled[j]] = ds[j];
      }
    }
    auto p = list(params, n);
    auto b = list(bufs, n);
    if (first) {
      at::_foreach_copy_(b, d);
    } else {
      at::_foreach_mul_(b, momentum);
      at::_foreach_add_(b, d);
    }
    if (lr_tensor) {
      at::_foreach_add_(p, at::_foreach_mul(b, lr_tensor->neg()));
    } else {
      at::_foreach_add_(p, b, -lr);
    }
  });
}

// θ_target ← m·θ_target + (1 − m)·θ_online for every pair at once (MoCo's key encoder, BYOL's
// target), as the official code writes it: two kernels for all tensors.
extern "C" int moco_foreach_ema(at::Tensor** targets, at::Tensor** sources, int n, double m) {
  return guarded([&] {
    auto t = list(targets, n);
    auto s = list(sources, n);
    at::_foreach_mul_(t, m);
    at::_foreach_add_(t, s, 1.0 - m);
  });
}

// The same with m a 0-dim tensor on the device (what a captured CUDA graph reads, set before
// each replay): θ_target·m + θ_online·(1 − m), in four kernels.
extern "C" int moco_foreach_ema_tensor(at::Tensor** targets, at::Tensor** sources, int n,
                                       at::Tensor* m) {
  return guarded([&] {
    auto t = list(targets, n);
    auto s = list(sources, n);
    at::_foreach_mul_(t, *m);
    at::_foreach_add_(t, at::_foreach_mul(s, 1.0 - *m));
  });
}

// fp16's loss scaler: every gradient times `inv_scale` in one kernel, `found_inf` set to 1 where
// any is not finite (torch.amp.GradScaler's check), without a synchronisation.
extern "C" int moco_unscale_grads(at::Tensor** grads, int n, at::Tensor* found_inf,
                                  at::Tensor* inv_scale) {
  return guarded([&] {
    auto g = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(g, *found_inf, *inv_scale);
  });
}
