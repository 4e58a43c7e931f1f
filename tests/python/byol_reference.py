"""BYOL training steps in PyTorch, from the paper (Grill et al. 2020, Algorithm 1 and §3.1):
predictions of both views regress the other view's target projection, the loss
‖p̄ − z̄‖² of the l2-normalised vectors summed over the two directions and averaged over the
batch; the target updated after the optimizer step with τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2.

Usage: byol_reference.py INPUT.safetensors OUTPUT.safetensors (see ssl_common.py).
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import ssl_common  # noqa: E402


def main(inp, out):
    _, meta = ssl_common.read(inp)
    tau_base = float(meta["momentum"])

    def regression(p, z):
        return ((F.normalize(p, dim=-1) - F.normalize(z, dim=-1)) ** 2).sum(-1).mean()

    def loss(online, target, x1, x2, _step, _steps):
        p1 = online.predictor(online(x1))
        p2 = online.predictor(online(x2))
        with torch.no_grad():
            z1, z2 = target(x1), target(x2)
        return regression(p1, z2) + regression(p2, z1)

    def after_step(online, target, k, K):
        tau = 1 - (1 - tau_base) * (math.cos(math.pi * k / K) + 1) / 2
        ssl_common.ema(online, target, tau)

    ssl_common.run(inp, out, loss, after_step, target=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
