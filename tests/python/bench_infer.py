"""The Python way to evaluate an exported model, as the baseline of docs/benchmarks.md:
PIL decode → Resize(shorter side) → CenterCrop → ToTensor, batched into onnxruntime (CPU).

  bench_infer.py --model M.onnx --data ROOT --split val --batch-size B --threads T [--limit N]
Prints one JSON line: images_per_sec (end to end), inference_images_per_sec, top1, n.
"""
import argparse
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def list_split(root, split):
    d = os.path.join(root, split)
    classes = sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
    ct = os.path.join(root, "classes.txt")
    if os.path.exists(ct):
        classes = [l.split("\t")[1].strip() for l in open(ct) if l.strip()]
    items = []
    for k, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(d, c))):
            if f.lower().endswith((".png", ".jpg", ".jpeg")):
                items.append((os.path.join(d, c, f), k))
    return items


def preprocess(path, resize, crop):
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if min(w, h) != resize:
            if w <= h:
                im = im.resize((resize, int(resize * h / w)), Image.BILINEAR)
            else:
                im = im.resize((int(resize * w / h), resize), Image.BILINEAR)
        w, h = im.size
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        im = im.crop((left, top, left + crop, top + crop))
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    meta = {p.key: p.value for p in onnx.load(args.model, load_external_data=False).metadata_props}
    resize, crop = int(meta.get("moco.resize", 96)), int(meta.get("moco.crop", 96))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    items = list_split(args.data, args.split)
    if args.limit:
        items = items[: args.limit]
    correct, infer_s = 0, 0.0
    start = time.perf_counter()
    for i in range(0, len(items), args.batch_size):
        chunk = items[i : i + args.batch_size]
        batch = np.stack([preprocess(p, resize, crop) for p, _ in chunk])
        t = time.perf_counter()
        logits = sess.run(["logits"], {"image": batch})[0]
        infer_s += time.perf_counter() - t
        correct += int((logits.argmax(1) == np.array([k for _, k in chunk])).sum())
    total = time.perf_counter() - start
    n = len(items)
    print(json.dumps({"images_per_sec": n / total, "inference_images_per_sec": n / infer_s,
                      "top1": correct / n, "n": n, "batch_size": args.batch_size,
                      "threads": args.threads, "backend": "python-onnxruntime"}))


if __name__ == "__main__":
    main()
