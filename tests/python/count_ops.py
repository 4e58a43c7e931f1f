"""ATen ops of one plain PyTorch MoCo v2 step (the official algorithm: resnet18, queue, momentum
encoder, InfoNCE, SGD), counted as `moco-train bench-step` counts its own: every aten:: op the
profiler records, and those with no aten:: op around them (what Python and autograd's engine
dispatch). No augmentation (the views are given) and, unless --bn-splits > 1, no shuffle BN: the
reference point for the trainer's count, which includes both.

Usage: count_ops.py [--batch-size 256] [--crop 96] [--bn-splits 1] [--foreach-momentum]
Prints one JSON line.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from moco_reference import MoCo  # noqa: E402


def counts(events):
    top = nested = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        nested += 1
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        top += p is None
    return top, nested


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--bn-splits", type=int, default=1)
    ap.add_argument("--foreach-momentum", action="store_true",
                    help="the key encoder's update with torch._foreach_* instead of the loop")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = MoCo("resnet18", 4096, 0.99, 0.2, a.bn_splits, False, False)
    model.queue.copy_(F.normalize(torch.randn(128, 4096), dim=0))
    if a.foreach_momentum:
        qs, ks = list(model.encoder_q.parameters()), list(model.encoder_k.parameters())

        @torch.no_grad()
        def update():
            torch._foreach_mul_(ks, model.m)
            torch._foreach_add_(ks, qs, alpha=1 - model.m)
        model._momentum_update_key_encoder = update
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4,
                          foreach=True)
    x1 = torch.randn(a.batch_size, 3, a.crop, a.crop)
    x2 = torch.randn(a.batch_size, 3, a.crop, a.crop)

    def step():
        perm = torch.randperm(a.batch_size)
        loss = model(x1, x2, [perm])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: optimizer state, allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top, nested = counts(prof.events())
    print(json.dumps({"reference": "pytorch eager", "batch_size": a.batch_size, "crop": a.crop,
                      "bn_splits": a.bn_splits, "foreach_momentum": a.foreach_momentum,
                      "ops_per_step": top, "nested_ops_per_step": nested}))


if __name__ == "__main__":
    main()
