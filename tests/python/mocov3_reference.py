"""MoCo v3 (ResNet) training steps in PyTorch, from the official moco-v3 builder.py
(`MoCo.forward`, `MoCo.contrastive_loss`) and main_moco.py (`adjust_moco_momentum`, LARS) on one
process: predictions of both views against the other view's keys of the whole batch, the loss
scaled by 2T, the momentum encoder updated with m rising to 1 on a cosine before the keys.

Usage: mocov3_reference.py INPUT.safetensors OUTPUT.safetensors (see ssl_common.py).
"""
import math
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
import ssl_common  # noqa: E402


def main(inp, out):
    _, meta = ssl_common.read(inp)
    T, m_base = float(meta["temperature"]), float(meta["momentum"])

    def contrastive_loss(q, k):
        q = nn.functional.normalize(q, dim=1)
        k = nn.functional.normalize(k, dim=1)
        logits = torch.einsum('nc,mc->nm', [q, k]) / T
        N = logits.shape[0]
        labels = torch.arange(N, dtype=torch.long)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * T)

    def loss(online, target, x1, x2, step, steps):
        q1 = online.predictor(online(x1))
        q2 = online.predictor(online(x2))
        with torch.no_grad():
            m = 1. - 0.5 * (1. + math.cos(math.pi * step / steps)) * (1. - m_base)
            ssl_common.ema(online, target, m)
            k1 = target(x1)
            k2 = target(x2)
        return contrastive_loss(q1, k2) + contrastive_loss(q2, k1)

    ssl_common.run(inp, out, loss, target=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
