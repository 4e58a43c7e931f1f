// SplitBatchNorm's training forward and backward as two dispatcher ops, `moco::split_batch_norm`
// and `moco::split_batch_norm_backward`, the way ATen builds `batch_norm` itself: a step of MoCo
// with shuffle BN otherwise dispatches ~7 ops per BatchNorm from Rust (fold the splits into the
// channels, repeat weight and bias, normalise, unfold, and their backwards), and the host's
// dispatching is what bounds a GPU step. The ops inside run the same kernels (cuDNN where
// `batch_norm` would use it). The same op is every training BatchNorm: a plain one is one group
// (its `num_batches_tracked` counted inside, not by another op), and `views` interleaved views
// of one batch are normalised each on its own — one forward of a method's two views instead of
// two. Exceptions stay on this side of the C ABI.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [N, C, ...] → [N/S, S·C, ...]: image i in group i mod S (a view of a contiguous batch).
std::vector<int64_t> folded_shape(const at::Tensor& x, int64_t splits) {
  auto shape = x.sizes().vec();
  shape[0] = -1;
  shape[1] *= splits;
  return shape;
}

std::optional<at::Tensor> repeated(const at::Tensor& t, int64_t splits) {
  if (!t.defined()) {
    return std::nullopt;
  }
  return splits == 1 ? t : t.expand({splits, t.size(0)}).reshape({-1});
}

// Running statistics for `views` interleaved views: each view's groups start from the same
// statistics (layout [splits, views, C], the order of the folded channels).
at::Tensor per_view(const at::Tensor& running, int64_t splits, int64_t views) {
  if (views == 1) {
    return running;
  }
  return running.view({splits, 1, -1}).expand({splits, views, running.size(0) / splits}).reshape(
      {-1});
}

// What `views` forwards in a row would have left in r (mean and variance alike): with
// a = 1 − momentum and t_v = momentum·batch_v + a·r (every view's groups updated from the same r
// by the one BatchNorm), r_v = momentum·batch_v + a·r_{v−1} unrolls to
// r_{V−1} = Σ_v a^(V−1−v)·t_v − (a + a² + … + a^(V−1))·r. Three kernels for two views, mean and
// variance together.
void update_in_order(at::Tensor& mean, at::Tensor& var, const at::Tensor& mean_v,
                     const at::Tensor& var_v, int64_t splits, int64_t views, double momentum) {
  if (views == 1) {
    return;
  }
  const double a = 1.0 - momentum;
  double start_weight = 0.0;
  for (int64_t k = 1; k < views; ++k) {
    start_weight += std::pow(a, static_cast<double>(k));
  }
  std::vector<at::Tensor> running = {mean, var};
  at::_foreach_mul_(running, -start_weight);
  const auto tm = mean_v.view({splits, views, -1});
  const auto tv = var_v.view({splits, views, -1});
  for (int64_t v = 0; v < views; ++v) {
    at::_foreach_add_(running,
                      {tm.select(1, v).reshape({-1}), tv.select(1, v).reshape({-1})},
                      std::pow(a, static_cast<double>(views - 1 - v)));
  }
}

// The normalised batch, and what the backward needs: the repeated weight, save_mean, save_var,
// reserve, impl_index. `views` interleaved views (image i of view v at row i·views + v), each
// normalised in `splits` groups of its own: splits·views groups of one BatchNorm.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> forward_parts(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
    at::Tensor& running_mean, at::Tensor& running_var, int64_t splits, int64_t views,
    double momentum, double eps) {
  const int64_t groups = splits * views;
  TORCH_CHECK(input.size(0) % groups == 0, "batch ", input.size(0), " of ", views,
              " views is not divisible by --bn-splits ", splits);
  const auto w = repeated(weight, groups);
  auto mean_v = per_view(running_mean, splits, views);
  auto var_v = per_view(running_var, splits, views);
  auto [y, mean, var, reserve, impl] = at::_batch_norm_impl_index(
      input.reshape(folded_shape(input, groups)), w, repeated(bias, groups), mean_v, var_v,
      /*training=*/true, momentum, eps, at::globalContext().userEnabledCuDNN());
  update_in_order(running_mean, running_var, mean_v, var_v, splits, views, momentum);
  return {y.reshape(input.sizes()), w.value_or(at::Tensor()), mean, var, reserve, impl};
}

// torchvision's BatchNorm counts its training forwards (only a plain one: SplitBatchNorm leaves
// the count alone).
void count_batches(const std::optional<at::Tensor>& num_batches_tracked, int64_t views) {
  if (num_batches_tracked.has_value()) {
    at::Tensor(*num_batches_tracked).add_(views);
  }
}

at::Tensor forward_plain(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& bias, at::Tensor& running_mean,
                         at::Tensor& running_var,
                         const std::optional<at::Tensor>& num_batches_tracked, int64_t splits,
                         int64_t views, double momentum, double eps) {
  auto y = std::get<0>(forward_parts(input, weight.value_or(at::Tensor()),
                                     bias.value_or(at::Tensor()), running_mean, running_var,
                                     splits, views, momentum, eps));
  count_batches(num_batches_tracked, views);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_plain(
    const at::Tensor& grad_output, const at::Tensor& input,
    const std::optional<at::Tensor>& weight_repeated, const at::Tensor& save_mean,
    const at::Tensor& save_var, const at::Tensor& reserve, int64_t impl_index, int64_t splits,
    double eps, std::array<bool, 3> output_mask) {
  const auto folded = folded_shape(input, splits);
  auto [gx, gw, gb] = at::_batch_norm_impl_index_backward(
      impl_index, input.reshape(folded), grad_output.reshape(folded), weight_repeated,
      std::nullopt, std::nullopt, save_mean, save_var, /*train=*/true, eps, output_mask, reserve);
  // The groups share weight and bias: their gradients add up.
  auto per_channel = [&](const at::Tensor& g) {
    return g.defined() && splits > 1 ? g.view({splits, -1}).sum(0) : g;
  };
  return {gx.defined() ? gx.reshape(input.sizes()) : gx, per_channel(gw), per_channel(gb)};
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& mean, const at::Tensor& var, const at::Tensor& reserve,
                         int64_t impl, int64_t splits, double eps, std::array<bool, 3> mask,
                         at::Tensor* gw, at::Tensor* gb) {
  // `weight`: repeated over the splits, as the forward normalised with it.
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moco::split_batch_norm_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
              const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double,
              std::array<bool, 3>)>();
  std::optional<at::Tensor> w;
  if (weight.defined()) {
    w = weight;
  }
  auto [gx, gw_, gb_] = op.call(grad, input, w, mean, var, reserve, impl, splits, eps, mask);
  *gw = gw_;
  *gb = gb_;
  return gx;
}

struct SplitBatchNorm : public torch::autograd::Function<SplitBatchNorm> {
  // Weight and bias as optionals: an undefined tensor is not a valid input of a Function.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, at::Tensor running_mean,
                            at::Tensor running_var, int64_t splits, int64_t views,
                            double momentum, double eps) {
    auto [y, w, mean, var, reserve, impl] =
        forward_parts(input, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
                      running_mean, running_var, splits, views, momentum, eps);
    ctx->save_for_backward({input, w, mean, var, reserve});
    ctx->saved_data["impl"] = impl;
    ctx->saved_data["splits"] = splits * views;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0),
                                      saved[1].defined() && ctx->needs_input_grad(1),
                                      saved[1].defined() && ctx->needs_input_grad(2)};
    at::Tensor gw, gb;
    auto gx = call_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                            ctx->saved_data["impl"].toInt(), ctx->saved_data["splits"].toInt(),
                            ctx->saved_data["eps"].toDouble(), mask, &gw, &gb);
    return {gx,           gw,           gb,           at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, at::Tensor& running_mean,
                            at::Tensor& running_var,
                            const std::optional<at::Tensor>& num_batches_tracked, int64_t splits,
                            int64_t views, double momentum, double eps) {
  auto y = SplitBatchNorm::apply(input, weight, bias, running_mean, running_var, splits, views,
                                 momentum, eps);
  count_batches(num_batches_tracked, views);
  return y;
}

thread_local std::string last_error;

}  // namespace

TORCH_LIBRARY(moco, m) {
  m.def(
      "split_batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, Tensor(c!)? num_batches_tracked, int splits, int views, "
      "float momentum, float eps) -> Tensor");
  m.def(
      "split_batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight_repeated, "
      "Tensor save_mean, Tensor save_var, Tensor reserve, int impl_index, int splits, "
      "float eps, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moco, CompositeExplicitAutograd, m) {
  m.impl("split_batch_norm", forward_plain);
  m.impl("split_batch_norm_backward", backward_plain);
}

TORCH_LIBRARY_IMPL(moco, Autograd, m) { m.impl("split_batch_norm", forward_autograd); }

// `moco::split_batch_norm` on tch's tensors (`torch::Tensor*`; weight, bias and
// num_batches_tracked may be null): the result in `*out` (to be freed by tch), 0; or 1 and the
// error's message in `*error`.
extern "C" int moco_split_batch_norm(at::Tensor** out, at::Tensor* input, at::Tensor* weight,
                                     at::Tensor* bias, at::Tensor* running_mean,
                                     at::Tensor* running_var, at::Tensor* num_batches_tracked,
                                     int64_t splits, int64_t views, double momentum, double eps,
                                     const char** error) {
  try {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("moco::split_batch_norm", "")
            .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                              const std::optional<at::Tensor>&, at::Tensor&, at::Tensor&,
                              const std::optional<at::Tensor>&, int64_t, int64_t, double,
                              double)>();
    auto opt = [](at::Tensor* t) {
      return t ? std::optional<at::Tensor>(*t) : std::optional<at::Tensor>();
    };
    *out = new at::Tensor(op.call(*input, opt(weight), opt(bias), *running_mean, *running_var,
                                  opt(num_batches_tracked), splits, views, momentum, eps));
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    *error = last_error.c_str();
    return 1;
  }
}
