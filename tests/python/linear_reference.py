"""MoCo's linear protocol in PyTorch (main_lincls.py), in its cached-feature form: the reference
for `moco-train linear --fast`. Frozen torchvision backbone in eval mode, features of the eval
transform computed once, fc initialised N(0, 0.01) / 0, SGD lr 30 momentum 0.9 no weight decay,
batch 256, x0.1 at the milestones, top-1 on val after the last epoch. One JSON line out.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from moco_train import listing  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=30.0)
    ap.add_argument("--milestones", default="60,80")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    net = getattr(torchvision.models, a.arch)()
    if a.encoder:
        missing, unexpected = net.load_state_dict(load_file(a.encoder), strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"}, missing
    train, val = listing(a.data, "train"), listing(a.data, "val")
    # The linear protocol uses the raw pooled features (moco_train.features normalizes for kNN).
    net.fc = nn.Identity()
    net.eval()
    with torch.no_grad():
        def raw(items):
            dl = torch.utils.data.DataLoader(
                [(p, y) for p, y in items], batch_size=256, collate_fn=lambda b: b)
            import torchvision.transforms as T
            from PIL import Image
            t = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
            return torch.cat([net(torch.stack([t(Image.open(p).convert("RGB")) for p, _ in b])) for b in dl])
        ft, fv = raw(train), raw(val)
    yt = torch.tensor([y for _, y in train])
    yv = torch.tensor([y for _, y in val])
    fc = nn.Linear(ft.shape[1], int(yt.max()) + 1)
    fc.weight.data.normal_(0, 0.01)
    fc.bias.data.zero_()
    opt = torch.optim.SGD(fc.parameters(), a.lr, momentum=0.9, weight_decay=0.0)
    milestones = [int(m) for m in a.milestones.split(",") if m]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
    for _ in range(a.epochs):
        perm = torch.randperm(len(yt))
        for i in range(0, len(yt), a.batch_size):
            idx = perm[i:i + a.batch_size]
            loss = nn.functional.cross_entropy(fc(ft[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        top1 = (fc(fv).argmax(1) == yv).float().mean().item()
    print(json.dumps({"top1": top1, "n": len(yv), "epochs": a.epochs}))


if __name__ == "__main__":
    main()
