"""SimCLR training steps in PyTorch: NT-Xent written as SimCLR's TF code writes it
(`add_contrastive_loss`: logits_ab, logits_aa with the diagonal masked, …) and averaged over the
2N views as the paper's Algorithm 1 does (the TF code sums the two directions per pair, which
is twice that); both views in one forward through the encoder and projector; LARS.

Usage: simclr_reference.py INPUT.safetensors OUTPUT.safetensors (see ssl_common.py).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import ssl_common  # noqa: E402


def main(inp, out):
    _, meta = ssl_common.read(inp)
    T = float(meta["temperature"])

    def loss(online, _target, x1, x2, _step, _steps):
        h = F.normalize(online(torch.cat([x1, x2], 0)), dim=1)
        n = x1.shape[0]
        a, b = h[:n], h[n:]
        labels = torch.arange(n)
        masks = torch.eye(n, dtype=torch.bool)
        logits_aa = (a @ a.t() / T).masked_fill(masks, float("-inf"))
        logits_bb = (b @ b.t() / T).masked_fill(masks, float("-inf"))
        logits_ab = a @ b.t() / T
        logits_ba = b @ a.t() / T
        loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels, reduction="none")
        loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], 1), labels, reduction="none")
        return (loss_a + loss_b).mean() / 2

    ssl_common.run(inp, out, loss)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
