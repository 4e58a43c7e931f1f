"""MoCo's linear protocol in PyTorch (main_lincls.py): the reference for `moco-train linear`.
Frozen torchvision backbone in eval mode, fc initialised N(0, 0.01) / 0, SGD lr 30 momentum 0.9
no weight decay, batch 256, x0.1 at the milestones, top-1 on val after the last epoch. Default:
the cached-feature form (`--fast` in Rust: eval-transform features computed once). `--augment`:
the full protocol, RandomResizedCrop + flip drawn every epoch through the frozen backbone.
`--standardize`: MAE's probe, a BatchNorm without affine before fc whose statistics are the
train split's eval-transform features (biased variance, eps 1e-5), fixed before training.
`--save-random-init FILE` writes torchvision's random init as a backbone both sides can load.
One JSON line out.
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
    ap.add_argument("--lr", type=float)
    ap.add_argument("--milestones", default="60,80")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--standardize", action="store_true")
    ap.add_argument("--save-random-init")
    a = ap.parse_args()
    if a.lr is None:
        a.lr = 0.1 if a.standardize else 30.0
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    net = getattr(torchvision.models, a.arch)()
    if a.save_random_init:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")},
                  a.save_random_init)
        print(json.dumps({"out": a.save_random_init}))
        return
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
        ft = None if a.augment and not a.standardize else raw(train)
        fv = raw(val)
    norm = lambda f: f  # noqa: E731
    if a.standardize:
        mu, var = ft.mean(0), ft.var(0, unbiased=False)
        norm = lambda f: (f - mu) / torch.sqrt(var + 1e-5)  # noqa: E731
    yt = torch.tensor([y for _, y in train])
    yv = torch.tensor([y for _, y in val])
    fc = nn.Linear(fv.shape[1], int(yt.max()) + 1)
    fc.weight.data.normal_(0, 0.01)
    fc.bias.data.zero_()
    opt = torch.optim.SGD(fc.parameters(), a.lr, momentum=0.9, weight_decay=0.0)
    milestones = [int(m) for m in a.milestones.split(",") if m]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
    if a.augment:
        import torchvision.transforms as T
        from PIL import Image
        tt = T.Compose([T.RandomResizedCrop(96), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

        class Train(torch.utils.data.Dataset):
            def __len__(self):
                return len(train)

            def __getitem__(self, i):
                p, y = train[i]
                return tt(Image.open(p).convert("RGB")), y
        loader = torch.utils.data.DataLoader(Train(), batch_size=a.batch_size, shuffle=True)
    for _ in range(a.epochs):
        if a.augment:
            for x, y in loader:
                with torch.no_grad():
                    f = net(x)
                loss = nn.functional.cross_entropy(fc(norm(f)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            perm = torch.randperm(len(yt))
            for i in range(0, len(yt), a.batch_size):
                idx = perm[i:i + a.batch_size]
                loss = nn.functional.cross_entropy(fc(norm(ft[idx])), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        sched.step()
    with torch.no_grad():
        top1 = (fc(norm(fv)).argmax(1) == yv).float().mean().item()
    print(json.dumps({"top1": top1, "n": len(yv), "epochs": a.epochs, "augment": a.augment}))


if __name__ == "__main__":
    main()
