"""MoCo v2 pretraining in PyTorch on a folder-layout dataset: the reference run that the Rust
trainer's loss curve, kNN accuracy and step time are compared with (docs/benchmarks.md).

Same algorithm and defaults as `moco-train pretrain` (the model is moco_reference.MoCo): aug+ on
PIL images in a DataLoader, lr = base × batch/256 with a per-step cosine, SGD momentum 0.9 and
weight decay, shuffle BN with SplitBatchNorm, kNN (k=200, T=0.1) on pooled backbone features at
the end. Writes OUT/metrics.jsonl; prints one JSON line at the end.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from bench_augment import MEAN, STD, TwoCrops, aug_plus  # noqa: E402
from moco_reference import MoCo  # noqa: E402



def listing(root, split):
    out = []
    d = os.path.join(root, split)
    classes = sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e)))
    for c, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(d, name))):
            out.append((os.path.join(d, name, f), c))
    if not classes:
        out = [(os.path.join(d, f), -1) for f in sorted(os.listdir(d))]
    return out


class Files(torch.utils.data.Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        p, y = self.items[i]
        return self.transform(Image.open(p).convert("RGB")), y


@torch.no_grad()
def features(net, items, batch=256):
    dl = torch.utils.data.DataLoader(Files(items, T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])),
                                     batch_size=batch, num_workers=2)
    fc, net.fc = net.fc, torch.nn.Identity()
    net.eval()
    out = torch.cat([F.normalize(net(x), dim=1) for x, _ in dl])
    net.fc = fc
    net.train()
    return out


def knn(net, bank_items, query_items, classes, k=200, t=0.1):
    fb, fq = features(net, bank_items), features(net, query_items)
    lb = torch.tensor([y for _, y in bank_items])
    lq = torch.tensor([y for _, y in query_items])
    sim, idx = (fq @ fb.t()).topk(min(k, len(bank_items)), dim=1)
    one_hot = torch.zeros(len(query_items), idx.shape[1], classes).scatter_(2, lb[idx].unsqueeze(2), 1.0)
    scores = (one_hot * (sim / t).exp().unsqueeze(2)).sum(1)
    return (scores.argmax(1) == lq).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.06)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--queue-size", type=int, default=2048)
    ap.add_argument("--moco-momentum", type=float, default=0.99)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--bn-splits", type=int, default=8)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-knn", action="store_true")
    ap.add_argument("--crop", type=int, default=96, help="side of the augmented views")
    ap.add_argument("--head-bn", action="store_true", help="BatchNorm in the projector")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: the forward under torch.autocast('cpu', torch.bfloat16)")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    items = listing(a.data, "unlabeled") + listing(a.data, "train")
    aug = aug_plus(a.crop)
    dl = torch.utils.data.DataLoader(Files(items, TwoCrops(aug)), batch_size=a.batch_size, shuffle=True,
                                     num_workers=a.workers, drop_last=True, persistent_workers=a.workers > 0)
    model = MoCo(a.arch, a.queue_size, a.moco_momentum, a.temperature, a.bn_splits, False,
                 a.head_bn)
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    model.queue.copy_(F.normalize(torch.randn(128, a.queue_size), dim=0))
    model.train()
    peak = a.lr * a.batch_size / 256
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=peak, momentum=0.9, weight_decay=a.weight_decay)
    log = open(os.path.join(a.out, "metrics.jsonl"), "w")
    step, t0, ti, acc = 0, time.perf_counter(), time.perf_counter(), []
    step_times = []
    while step < a.steps:
        for (views, _) in dl:
            ts = time.perf_counter()
            lr = peak * 0.5 * (1 + math.cos(math.pi * step / a.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            perm = torch.randperm(a.batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp == "bf16"):
                loss = model(views[0], views[1], [perm])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - ts)
            acc.append(loss.item())
            step += 1
            if step % a.log_every == 0 or step == a.steps:
                now = time.perf_counter()
                log.write(json.dumps({"step": step, "loss": sum(acc) / len(acc), "lr": lr,
                                      "images_per_sec": len(acc) * a.batch_size / (now - ti),
                                      "wall_time": now - t0}) + "\n")
                log.flush()
                acc, ti = [], now
            if step == a.steps:
                break
    secs = time.perf_counter() - t0
    res = {"steps": a.steps, "seconds": secs, "two_view_images_per_sec": a.steps * a.batch_size / secs,
           "compute_images_per_sec": len(step_times) * a.batch_size / sum(step_times)}
    if not a.no_knn:
        classes = len(os.listdir(os.path.join(a.data, "train")))
        res["knn_top1"] = knn(model.encoder_q, listing(a.data, "train"), listing(a.data, "val"), classes)
        log.write(json.dumps({"step": a.steps, "knn_top1": res["knn_top1"]}) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
