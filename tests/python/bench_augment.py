"""The torchvision baseline of `scripts/bench.sh data`: MoCo v2's aug+ as the official code runs
it — PIL decode, TwoCropsTransform over RandomResizedCrop(96, 0.2-1), ColorJitter p=0.8,
RandomGrayscale 0.2, PIL GaussianBlur p=0.5, flip, ToTensor, Normalize — DataLoader with
`--workers` processes, batch `--batch-size`. Prints one JSON line: two-view images/s.
`--predecoded` decodes every image once up front (no PNG decoding in the loop).
"""
import argparse
import json
import os
import random
import time

import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter


class GaussianBlur:
    """moco/loader.py."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class TwoCrops:
    def __init__(self, t):
        self.t = t

    def __call__(self, x):
        return [self.t(x), self.t(x)]


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def aug_plus(size=96):
    """moco/main_moco.py's augmentation (aug+), at `size`."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD),
    ])


class Images(torch.utils.data.Dataset):
    def __init__(self, paths, transform, predecoded):
        self.paths, self.transform = paths, transform
        self.images = [Image.open(p).convert("RGB") for p in paths] if predecoded else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = self.images[i] if self.images else Image.open(self.paths[i]).convert("RGB")
        return self.transform(img)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--splits", default="unlabeled,train")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--predecoded", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    paths = []
    for s in a.splits.split(","):
        for root, _, files in sorted(os.walk(os.path.join(a.data, s))):
            paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith((".png", ".jpg", ".jpeg"))]
    ds = Images(paths, TwoCrops(aug_plus()), a.predecoded)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                     drop_last=True, persistent_workers=a.workers > 0)
    n, t0 = 0, None
    while n < a.batches + 1:
        for b, _ in enumerate(dl):
            if n == 1:
                t0 = time.perf_counter()
            n += 1
            if n == a.batches + 1:
                break
    secs = time.perf_counter() - t0
    print(json.dumps({"two_view_images_per_sec": a.batches * a.batch_size / secs,
                      "batch_size": a.batch_size, "workers": a.workers, "predecoded": a.predecoded}))


if __name__ == "__main__":
    main()
