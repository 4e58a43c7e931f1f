"""torchvision's side of the augmentation tests.

deterministic IN OUT: IN holds `images` (uint8 [N,3,H,W]), `boxes` (int64 [N,4]: top, left,
  height, width), `flips` (int64 [N]), `x` (float [M,3,S,S] in [0,1]), `factors` (float [M,4]:
  brightness, contrast, saturation, hue) and `sigmas` (float [M]); metadata `size`, `taps`.
  OUT: `rrc_pil` (uint8 [N,3,S,S]: PIL resized_crop + hflip, what aug+ does on PIL images),
  `rrc_tensor` (float: torchvision's tensor resized_crop, antialias=True), and per adjustment
  `brightness`, `contrast`, `saturation`, `hue`, `grayscale`, `blur` applied to `x` with
  torchvision.transforms.functional.
  `solarize`: F.solarize(x, 0.5) (BYOL's threshold for images in [0, 1]).
distribution OUT N [PIPELINE]: N draws of torchvision's own random parameters on a 96x96 image:
  `area`, `log_ratio` (RandomResizedCrop.get_params), `brightness`, `contrast`, `saturation`,
  `hue` (ColorJitter.get_params), and the rates of RandomApply(jitter), RandomGrayscale,
  RandomApply(blur), RandomSolarize, RandomHorizontalFlip as `applied_*` (0/1). PIPELINE: aug+
  (`mocov2`, the default: scale 0.2-1, jitter 0.4/0.4/0.4/0.1, blur 0.5, no solarize) or MoCo
  v3's `augmentation1` / `augmentation2` (`byol1`, `byol2`: BYOL's pair, scale 0.08-1, jitter
  0.4/0.4/0.2/0.1, blur 1.0 / 0.1, solarize 0 / 0.2).
"""
import sys

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file


def deterministic(inp, out):
    with safe_open(inp, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    size, taps = int(meta["size"]), int(meta["taps"])
    t["images"] = t["images"].to(torch.uint8)
    pil, ten = [], []
    for img, (top, left, h, w), flip in zip(t["images"], t["boxes"].tolist(), t["flips"].tolist()):
        p = Image.fromarray(img.permute(1, 2, 0).numpy())
        c = F.resized_crop(p, top, left, h, w, [size, size], T.InterpolationMode.BILINEAR)
        if flip:
            c = F.hflip(c)
        pil.append(torch.from_numpy(np.asarray(c)).permute(2, 0, 1))
        x = img.float() / 255
        c = F.resized_crop(x, top, left, h, w, [size, size], T.InterpolationMode.BILINEAR,
                           antialias=True)
        ten.append(F.hflip(c) if flip else c)
    res = {"rrc_pil": torch.stack(pil).contiguous(), "rrc_tensor": torch.stack(ten).contiguous()}
    x, fac, sig = t["x"], t["factors"], t["sigmas"]
    ops = {
        "brightness": lambda i: F.adjust_brightness(x[i], fac[i, 0].item()),
        "contrast": lambda i: F.adjust_contrast(x[i], fac[i, 1].item()),
        "saturation": lambda i: F.adjust_saturation(x[i], fac[i, 2].item()),
        "hue": lambda i: F.adjust_hue(x[i], fac[i, 3].item()),
        "grayscale": lambda i: F.rgb_to_grayscale(x[i], num_output_channels=3),
        "blur": lambda i: F.gaussian_blur(x[i], [taps, taps], [sig[i].item()] * 2),
        "solarize": lambda i: F.solarize(x[i], 0.5),
    }
    for name, op in ops.items():
        res[name] = torch.stack([op(i) for i in range(x.shape[0])]).contiguous()
    save_file(res, out)


PIPELINES = {  # scale, jitter, blur p, solarize p
    "mocov2": ((0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.5, 0.0),
    "byol1": ((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 1.0, 0.0),
    "byol2": ((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.1, 0.2),
}


def distribution(out, n, pipeline):
    scale, jitter, blur_p, solarize_p = PIPELINES[pipeline]
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(96, scale=scale)
    img = torch.zeros(3, 96, 96)
    area, log_ratio = [], []
    for _ in range(n):
        i, j, h, w = rrc.get_params(img, rrc.scale, rrc.ratio)
        area.append(h * w / 96.0 / 96.0)
        log_ratio.append(torch.log(torch.tensor(w / h)).item())
    cj = T.ColorJitter(*jitter)
    fac = [cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue) for _ in range(n)]
    res = {
        "area": torch.tensor(area, dtype=torch.float64),
        "log_ratio": torch.tensor(log_ratio, dtype=torch.float64),
        "brightness": torch.tensor([f[1] for f in fac], dtype=torch.float64),
        "contrast": torch.tensor([f[2] for f in fac], dtype=torch.float64),
        "saturation": torch.tensor([f[3] for f in fac], dtype=torch.float64),
        "hue": torch.tensor([f[4] for f in fac], dtype=torch.float64),
        # RandomApply, RandomGrayscale, RandomSolarize and RandomHorizontalFlip all draw
        # `torch.rand(1) < p`.
        "applied_jitter": (torch.rand(n) < 0.8).double(),
        "applied_grayscale": (torch.rand(n) < 0.2).double(),
        "applied_blur": (torch.rand(n) < blur_p).double(),
        "applied_solarize": (torch.rand(n) < solarize_p).double(),
        "applied_flip": (torch.rand(n) < 0.5).double(),
    }
    save_file(res, out)


if __name__ == "__main__":
    if sys.argv[1] == "deterministic":
        deterministic(sys.argv[2], sys.argv[3])
    else:
        distribution(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "mocov2")
