"""Reference for tests/tests/torchvision_parity.rs: torchvision's ResNet on fixed random weights.

Writes, into --out:
  encoder.safetensors     backbone state_dict (torchvision names, fc.* excluded)
  classifier.safetensors  fc.weight, fc.bias
  reference.safetensors   inputs, outputs and BN statistics the Rust side must reproduce

Weights are torchvision's own init, with random BN affine parameters and running statistics
calibrated on a batch from a different distribution than the test inputs, so that a train-mode
forward moves the running statistics by an amount that depends on BN momentum.
"""
import argparse
import copy
import os
from functools import partial

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file


class SplitBatchNorm(nn.BatchNorm2d):
    """MoCo's single-GPU shuffle-BN layer (facebookresearch/moco, colab demo)."""

    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input):
        N, C, H, W = input.shape
        if self.training or not self.track_running_stats:
            running_mean_split = self.running_mean.repeat(self.num_splits)
            running_var_split = self.running_var.repeat(self.num_splits)
            outcome = nn.functional.batch_norm(
                input.view(-1, C * self.num_splits, H, W), running_mean_split, running_var_split,
                self.weight.repeat(self.num_splits), self.bias.repeat(self.num_splits),
                True, self.momentum, self.eps).view(N, C, H, W)
            self.running_mean.data.copy_(running_mean_split.view(self.num_splits, C).mean(dim=0))
            self.running_var.data.copy_(running_var_split.view(self.num_splits, C).mean(dim=0))
            return outcome
        return nn.functional.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            False, self.momentum, self.eps)


def features_and_logits(model, x):
    feats = {}
    h = model.avgpool.register_forward_hook(lambda m, i, o: feats.setdefault("f", torch.flatten(o, 1)))
    logits = model(x)
    h.remove()
    return feats["f"], logits


def bn_state(model, prefix):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            out[f"{prefix}.{name}.running_mean"] = m.running_mean.clone()
            out[f"{prefix}.{name}.running_var"] = m.running_var.clone()
            out[f"{prefix}.{name}.num_batches_tracked"] = m.num_batches_tracked.clone()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--splits", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    ctor = getattr(torchvision.models, args.arch)

    model = ctor(num_classes=args.classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        # Running stats = exact statistics of a calibration batch (momentum None = cumulative).
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model.train()
        model(torch.randn(16, 3, 96, 96) * 1.25 + 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
                m.num_batches_tracked.fill_(3)
    model.eval()

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if not k.startswith("fc.")},
              os.path.join(args.out, "encoder.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith("fc.")},
              os.path.join(args.out, "classifier.safetensors"))

    x_a = torch.randn(4, 3, 96, 96)
    x_b = torch.randn(2, 3, 67, 81)  # odd sizes: padding and stride arithmetic show up here
    ref = {"input.a": x_a, "input.b": x_b}

    with torch.no_grad():
        f, l = features_and_logits(model, x_a)
        ref["eval.a.features"], ref["eval.a.logits"] = f, l
        f, _ = features_and_logits(model, x_b)
        ref["eval.b.features"] = f

    train_model = copy.deepcopy(model).train()
    f, l = features_and_logits(train_model, x_a)
    ref["train.a.features"], ref["train.a.logits"] = f.detach(), l.detach()
    dlogits = torch.randn_like(l)
    ref["train.a.dlogits"] = dlogits
    (l * dlogits).sum().backward()
    for name, p in train_model.named_parameters():
        ref[f"train.a.grad.{name}"] = p.grad.clone()
    ref.update(bn_state(train_model, "train.a.after"))

    split_model = ctor(num_classes=args.classes,
                       norm_layer=partial(SplitBatchNorm, num_splits=args.splits))
    split_model.load_state_dict(state)
    split_model.train()
    f, l = features_and_logits(split_model, x_a)
    ref["split.a.features"], ref["split.a.logits"] = f.detach(), l.detach()
    ref.update(bn_state(split_model, "split.a.after"))

    save_file({k: v.contiguous() for k, v in ref.items()},
              os.path.join(args.out, "reference.safetensors"),
              metadata={"arch": args.arch, "splits": str(args.splits), "torch": torch.__version__,
                        "torchvision": torchvision.__version__})


if __name__ == "__main__":
    main()
