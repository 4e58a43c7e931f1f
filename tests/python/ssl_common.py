"""What the method references share: reading the Rust side's inputs, building the networks with
torchvision's names, MoCo v3's LARS, and writing what a step changed.

INPUT (safetensors): q/<name> (the online network's initial variables, torchvision names with
fc.* the projector and predictor.* the predictor), im1_<t>, im2_<t>; metadata: arch, steps,
lr_<t>, temperature, momentum, bn_splits, weight_decay, optim_momentum, optimizer (sgd|lars),
projector / predictor shapes as JSON ({layers, hidden, out, bias, hidden_norm, out_norm}),
dtype (float64, float32, or bf16-autocast: float32 weights, networks under CPU bf16 autocast,
the loss in float32 — amp_policy.py).
OUTPUT: per step t: loss_<t>, grad_<t>/<name> (online parameters), k_<t>/<name> (the target
network's state after the step, where there is one).
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import amp_policy  # noqa: E402
from moco_reference import SplitBatchNorm1d  # noqa: E402
from torchvision_parity import SplitBatchNorm  # noqa: E402


def read(path):
    t = {}
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            t[k] = f.get_tensor(k)
    return t, meta


def bn1d(c, splits, affine=True):
    if splits > 1:
        return SplitBatchNorm1d(c, splits, affine=affine)
    return nn.BatchNorm1d(c, affine=affine)


def build_mlp(shape, input_dim, splits):
    """MoCo v3's _build_mlp, with the bias and BatchNorm placement of `shape`."""
    n = shape["layers"]
    mlp = []
    for l in range(n):
        dim1 = input_dim if l == 0 else shape["hidden"]
        dim2 = shape["out"] if l == n - 1 else shape["hidden"]
        mlp.append(nn.Linear(dim1, dim2, bias=shape["bias"]))
        if l < n - 1:
            if shape["hidden_norm"]:
                mlp.append(bn1d(dim2, splits))
            mlp.append(nn.ReLU(inplace=True))
        elif shape["out_norm"]:
            mlp.append(bn1d(dim2, splits, affine=False))
    return nn.Sequential(*mlp)


def network(meta, predictor):
    """A torchvision resnet whose fc is the projector, with the predictor (if any) beside it."""
    splits = int(meta["bn_splits"])
    norm = (lambda c: SplitBatchNorm(c, splits)) if splits > 1 else nn.BatchNorm2d
    net = getattr(torchvision.models, meta["arch"])(norm_layer=norm)
    proj = json.loads(meta["projector"])
    net.fc = build_mlp(proj, net.fc.weight.shape[1], splits)
    if predictor and meta.get("predictor", "null") != "null":
        net.predictor = build_mlp(json.loads(meta["predictor"]), proj["out"], splits)
    return net


class LARS(torch.optim.Optimizer):
    """LARS optimizer, no rate scaling or weight decay for parameters <= 1D (MoCo v3's)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # if not normalization gamma/beta or bias
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g['trust_coefficient'] * param_norm / update_norm),
                                                one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def setup(inp):
    """The inputs, the online network loaded with the initial weights (and a target copy of its
    encoder when `target`), in the inputs' dtype and train mode."""
    t, meta = read(inp)
    dtype = torch.float64 if meta.get("dtype") == "float64" else torch.float32
    online = network(meta, predictor=True)
    online.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("q/")})
    online.to(dtype).train()
    t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in t.items()}
    return t, meta, online, dtype


def target_of(online, meta, dtype):
    """A copy of the online encoder (no predictor) that is never trained."""
    target = network(meta, predictor=False)
    state = {k: v for k, v in online.state_dict().items() if not k.startswith("predictor.")}
    target.load_state_dict(state)
    target.to(dtype).train()
    for p in target.parameters():
        p.requires_grad = False
    return target


def optimizer(meta, params):
    wd, mom = float(meta["weight_decay"]), float(meta["optim_momentum"])
    if meta["optimizer"] == "lars":
        return LARS(params, lr=0.1, weight_decay=wd, momentum=mom)
    return torch.optim.SGD(params, lr=0.1, momentum=mom, weight_decay=wd)


def run(inp, out, loss_fn, after_step=None, target=None):
    """Steps of `loss_fn(online, target, x1, x2, step, total) -> loss`, then the optimizer, then
    `after_step(online, target, step, total)`; records what the Rust side records."""
    t, meta, online, dtype = setup(inp)
    tgt = target_of(online, meta, dtype) if target else None
    if meta.get("dtype") == amp_policy.MODE:
        for net in [online, getattr(online, "predictor", None), tgt]:
            if net is not None:
                amp_policy.autocast_forward(net)
    steps = int(meta["steps"])
    opt = optimizer(meta, online.parameters())
    res = {}
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = float(meta[f"lr_{s}"])
        opt.zero_grad()
        with amp_policy.step():
            loss = loss_fn(online, tgt, t[f"im1_{s}"], t[f"im2_{s}"], s, steps)
        loss.backward()
        res[f"loss_{s}"] = loss.detach().reshape(1)
        for n, p in online.named_parameters():
            res[f"grad_{s}/{n}"] = p.grad.detach().clone()
        opt.step()
        if after_step is not None:
            after_step(online, tgt, s, steps)
        if tgt is not None:
            for n, v in tgt.state_dict().items():
                res[f"k_{s}/{n}"] = v.detach().clone()
    save_file({k: v.contiguous() for k, v in res.items()}, out)


@torch.no_grad()
def ema(online, target, m):
    """θ_target ← m·θ_target + (1−m)·θ_online over the target's parameters, paired by name."""
    src = dict(online.named_parameters())
    for n, p in target.named_parameters():
        p.data = p.data * m + src[n].data * (1. - m)
