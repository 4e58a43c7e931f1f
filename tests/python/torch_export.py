"""The same network exported by PyTorch's own torch.onnx.export, for docs/benchmarks.md.

  torch_export.py --encoder E.safetensors --classifier C.safetensors --out M.onnx --like OURS.onnx
Normalisation is inside the graph as in moco-export's file; metadata_props are copied from
--like so moco-infer can run both the same way. Eval mode: PyTorch folds BatchNorm itself.
"""
import argparse

import onnx
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file


class Normalized(nn.Module):
    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--like", required=True)
    args = ap.parse_args()
    like = onnx.load(args.like)
    meta = {p.key: p.value for p in like.metadata_props}
    arch = meta["moco.arch"]
    state = load_file(args.encoder)
    state.update(load_file(args.classifier))
    net = getattr(torchvision.models, arch)(num_classes=state["fc.bias"].shape[0])
    net.load_state_dict(state)
    import json
    model = Normalized(net, json.loads(meta["moco.mean"]), json.loads(meta["moco.std"])).eval()
    crop = int(meta["moco.crop"])
    torch.onnx.export(model, (torch.rand(1, 3, crop, crop),), args.out, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, do_constant_folding=True, dynamo=False)
    m = onnx.load(args.out)
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, args.out)


if __name__ == "__main__":
    main()
