"""PyTorch AMP's policy for the references' `bf16-autocast` mode: the networks run under
`torch.autocast('cpu', torch.bfloat16)`, and everything after them — the loss's norms, matmuls,
softmax, sums and means — in float32, outside the region. (CPU autocast alone would leave norms,
softmax and sums in bf16; CUDA's lists put them in float32, and moco-train computes its losses in
float32 on every device.)

A step runs inside `step()`: one outer region for the whole loss, as a training loop's
`with torch.autocast(...)` around its forward would be, so that a weight used by two forwards
(the two views of BYOL or MoCo v3) is cast to bf16 once and its gradients meet in bf16 (autocast's
cast cache lives until the outermost region ends).
"""
import torch

MODE = "bf16-autocast"


def autocast_forward(module):
    """Runs `module`'s forward under CPU bf16 autocast and returns its output in float32."""
    inner = module.forward

    def forward(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        return out.float()

    module.forward = forward
    return module


def step():
    """The region around one step's loss: autocast off (the loss in float32), the networks'
    own regions nested inside it."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)
