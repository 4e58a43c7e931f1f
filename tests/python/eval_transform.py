"""torchvision's eval transform on PIL images: Resize(resize) → CenterCrop(crop) → ToTensor.

  eval_transform.py --resize R --crop C --out out.safetensors IMG...
Writes `image.<i>` [3,C,C] float32 for each image, in argument order.
"""
import argparse

from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--resize", type=int, required=True)
    ap.add_argument("--crop", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    t = transforms.Compose([
        transforms.Resize(args.resize),
        transforms.CenterCrop(args.crop),
        transforms.ToTensor(),
    ])
    out = {}
    for i, path in enumerate(args.images):
        with Image.open(path) as im:
            out[f"image.{i}"] = t(im.convert("RGB")).contiguous()
    save_file(out, args.out)


if __name__ == "__main__":
    main()
