"""MoCo v1/v2 training steps in PyTorch: the reference the Rust trainer is held against.

Written from the official moco/builder.py and MoCo's single-GPU demo (SplitBatchNorm,
_batch_shuffle_single_gpu): torchvision resnet with a 2-layer MLP head, key encoder updated by
momentum BEFORE the key forward, keys from a shuffled batch unshuffled after, InfoNCE over
[l_pos, l_neg] / T, queue [dim, K] with a pointer, torch.optim.SGD.

Usage: moco_reference.py INPUT.safetensors OUTPUT.safetensors
INPUT holds q/<name> (initial weights of both encoders), queue, im1_<t>, im2_<t>, perm_<t>
(int64 shuffle permutation; perm2_<t> with the symmetric loss), small_<t>_<i> (multi-crop's
small views, i < small) and metadata {arch, steps, momentum, temperature, bn_splits, lr_<t>,
weight_decay, sgd_momentum, symmetric, head_bn, linear_head (MoCo v1's one-layer projector),
small (0 without multi-crop)}.

Multi-crop as SwAV forwards its small crops: all small views through the query encoder in one
batch; each is a query against the pair's keys (the key of view 2; with the symmetric loss, of
both views) and the queue, and the loss is the mean over every (query, key) term times the pair's
terms, i.e. (pair loss + small terms) / (1 + small).
OUTPUT: per step t: loss_<t>, grad_<t>/<name> (query encoder gradients), k_<t>/<name> (key
encoder after the step), queue_<t>, ptr_<t>.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import amp_policy  # noqa: E402
from torchvision_parity import SplitBatchNorm  # noqa: E402  (MoCo demo's layer, one copy)


class SplitBatchNorm1d(nn.BatchNorm1d):
    """SplitBatchNorm for [N, C]: the projector's BatchNorm in shuffle-BN groups, folded into
    channels exactly as the demo's 2-d layer folds them (sample i is in group i % splits)."""

    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input):
        N, C = input.shape
        s = self.num_splits
        rep = lambda t: None if t is None else t.repeat(s)
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(input.view(-1, C * s), mean, var, rep(self.weight), rep(self.bias),
                           True, self.momentum, self.eps).view(N, C)
        self.running_mean.data.copy_(mean.view(s, C).mean(dim=0))
        self.running_var.data.copy_(var.view(s, C).mean(dim=0))
        return out


def encoder(arch, bn_splits, head_bn, linear_head=False):
    norm = (lambda c: SplitBatchNorm(c, bn_splits)) if bn_splits > 1 else nn.BatchNorm2d
    net = getattr(torchvision.models, arch)(num_classes=128, norm_layer=norm)
    if linear_head:  # MoCo v1: torchvision's own fc with 128 outputs
        return net
    dim_mlp = net.fc.weight.shape[1]
    if head_bn:  # MoCo v3's projector: Linear, BN, ReLU, Linear, BN(affine=False)
        net.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), SplitBatchNorm1d(dim_mlp, bn_splits),
                               nn.ReLU(), net.fc, SplitBatchNorm1d(128, bn_splits, affine=False))
    else:
        net.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), net.fc)
    return net


class MoCo(nn.Module):
    def __init__(self, arch, K, m, T, bn_splits, symmetric, head_bn, linear_head=False):
        super().__init__()
        self.K, self.m, self.T, self.symmetric = K, m, T, symmetric
        self.encoder_q = encoder(arch, bn_splits, head_bn, linear_head)
        self.encoder_k = encoder(arch, bn_splits, head_bn, linear_head)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", torch.zeros(128, K))
        self.queue_ptr = 0

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data = k.data * self.m + q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        n = keys.shape[0]
        assert self.K % n == 0
        self.queue[:, self.queue_ptr:self.queue_ptr + n] = keys.t()
        self.queue_ptr = (self.queue_ptr + n) % self.K

    def contrastive_loss(self, im_q, im_k, idx_shuffle):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            idx_unshuffle = torch.argsort(idx_shuffle)
            k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
            k = k[idx_unshuffle]
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        return F.cross_entropy(logits, labels), k

    def small_loss(self, q, k):
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))

    def forward(self, im1, im2, perms, small=()):
        with torch.no_grad():
            self._momentum_update_key_encoder()
        if self.symmetric:
            l12, k2 = self.contrastive_loss(im1, im2, perms[0])
            l21, k1 = self.contrastive_loss(im2, im1, perms[1])
            loss, k, pos = l12 + l21, torch.cat([k1, k2], dim=0), [k2, k1]
        else:
            loss, k = self.contrastive_loss(im1, im2, perms[0])
            pos = [k]
        if small:
            qs = F.normalize(self.encoder_q(torch.cat(small, dim=0)), dim=1).chunk(len(small))
            terms = sum(self.small_loss(q, kp) for q in qs for kp in pos)
            loss = (loss + terms) / (1 + len(small))
        self._dequeue_and_enqueue(k)
        return loss


def main(inp, out):
    # torch.use_deterministic_algorithms(True)
    t = {}
    with safe_open(inp, "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            t[k] = f.get_tensor(k)
    steps = int(meta["steps"])
    symmetric = meta["symmetric"] == "true"
    model = MoCo(meta["arch"], t["queue"].shape[1], float(meta["momentum"]),
                 float(meta["temperature"]), int(meta["bn_splits"]), symmetric,
                 meta.get("head_bn") == "true", meta.get("linear_head") == "true")
    init = {k[2:]: v for k, v in t.items() if k.startswith("q/")}
    model.encoder_q.load_state_dict(init)
    model.encoder_k.load_state_dict(init)
    model.queue.copy_(t["queue"])
    dtype = torch.float64 if meta.get("dtype") == "float64" else torch.float32
    model.to(dtype)
    t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in t.items()}
    if meta.get("dtype") == amp_policy.MODE:
        amp_policy.autocast_forward(model.encoder_q)
        amp_policy.autocast_forward(model.encoder_k)
    model.train()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1,
                          momentum=float(meta["sgd_momentum"]),
                          weight_decay=float(meta["weight_decay"]))
    names = [n for n, _ in model.encoder_q.named_parameters()]
    res = {}
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = float(meta[f"lr_{s}"])
        perms = [t[f"perm_{s}"]] + ([t[f"perm2_{s}"]] if symmetric else [])
        opt.zero_grad()
        with amp_policy.step():
            small = [t[f"small_{s}_{i}"] for i in range(int(meta.get("small", "0")))]
            loss = model(t[f"im1_{s}"], t[f"im2_{s}"], perms, small)
        loss.backward()
        res[f"loss_{s}"] = loss.detach().reshape(1)
        for n, p in zip(names, model.encoder_q.parameters()):
            res[f"grad_{s}/{n}"] = p.grad.detach().clone()
        opt.step()
        for n, v in model.encoder_k.state_dict().items():
            res[f"k_{s}/{n}"] = v.detach().clone()
        res[f"queue_{s}"] = model.queue.clone()
        res[f"ptr_{s}"] = torch.tensor([model.queue_ptr], dtype=torch.int64)
    save_file({k: v.contiguous() for k, v in res.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
