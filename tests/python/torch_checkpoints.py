"""PyTorch files as people have them, written by the real torch.save, for the --encoder reader.

  torch_checkpoints.py write DIR     the files below, the backbones they hold (expected_*.safetensors)
                                     and a classifier, an input batch and PyTorch's logits
  torch_checkpoints.py check MODEL DIR
                                     onnx.checker (full) and onnxruntime's logits of MODEL on
                                     DIR/input.safetensors against DIR/logits.safetensors; prints
                                     the largest difference as JSON

Files (DIR/…):
  checkpoint_0003.pth.tar  the official MoCo v2 builder's save after 3 steps: {epoch, arch,
                           state_dict (module.encoder_q.* / module.encoder_k.*, queue), optimizer}
  torchvision.pth          a plain torchvision resnet18 state_dict (fc with 1000 classes)
  dataparallel.pth         the same under nn.DataParallel's `module.` prefix
  half.pt                  the query backbone in float16 storages
  shared.pt                every float tensor a view into one storage (offsets), conv1.weight a
                           non-contiguous view
  lightning.ckpt           a Lightning checkpoint: backbone.* and backbone_momentum.* in
                           state_dict, optimizer_states, lr_schedulers, loops, hyper_parameters
  legacy.pth               the non-zip format (_use_new_zipfile_serialization=False)
  torchscript.pt           torch.jit.save of the scripted network
  evil.pth                 a state_dict whose unpickling runs `touch DIR/pwned`; evil-proof.pth
                           is the same payload aimed at DIR/proof, which this script loads with
                           torch.load(weights_only=False) to show that the payload is live
"""
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CLASSES = 10


class MoCo(nn.Module):
    """The official builder's module layout: encoder_q/encoder_k with the v2 MLP head, queue."""

    def __init__(self, dim=128, queue=256):
        super().__init__()
        self.encoder_q = torchvision.models.resnet18(num_classes=dim)
        mlp = self.encoder_q.fc.weight.shape[1]
        self.encoder_q.fc = nn.Sequential(nn.Linear(mlp, mlp), nn.ReLU(), self.encoder_q.fc)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def backbone(sd, prefix):
    """The torchvision backbone under `prefix`, fc excluded, as contiguous fp32/int64."""
    return {
        k[len(prefix):]: v.detach().clone().contiguous()
        for k, v in sd.items()
        if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")
    }


def train_moco(steps=3):
    torch.manual_seed(0)
    model = nn.DataParallel(MoCo())  # on the CPU it only adds the `module.` prefix
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4
    )
    for _ in range(steps):
        x1, x2 = torch.rand(8, 3, 64, 64), torch.rand(8, 3, 64, 64)
        q = F.normalize(model.module.encoder_q(x1), dim=1)
        with torch.no_grad():
            k = F.normalize(model.module.encoder_k(x2), dim=1)
        loss = -(q * k).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pq, pk in zip(model.module.encoder_q.parameters(), model.module.encoder_k.parameters()):
                pk.mul_(0.99).add_(pq, alpha=0.01)
    return model, opt


def shared_views(sd):
    """Every float tensor a view into one flat storage; conv1.weight non-contiguous."""
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    flat = torch.cat([v.flatten() for v in floats.values()])
    out, at = {}, 0
    for k, v in sd.items():
        if k in floats:
            out[k] = flat[at:at + v.numel()].view(v.shape)
            at += v.numel()
        else:
            out[k] = v
    w = sd["conv1.weight"]
    out["conv1.weight"] = w.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not out["conv1.weight"].is_contiguous()
    return out


def lightning(model, opt):
    q = backbone(model.state_dict(), "module.encoder_q.")
    k = backbone(model.state_dict(), "module.encoder_k.")
    sd = {f"backbone.{n}": v for n, v in q.items()}
    sd.update({f"backbone_momentum.{n}": v for n, v in k.items()})
    sd["projection_head.layers.0.weight"] = torch.randn(512, 512)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    return {
        "epoch": 3,
        "global_step": 30,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/x"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.06, "max_epochs": 200, "arch": "resnet18"},
    }


def write(d):
    model, opt = train_moco()
    sd = model.state_dict()
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": sd, "optimizer": opt.state_dict()},
               f"{d}/checkpoint_0003.pth.tar")
    q = backbone(sd, "module.encoder_q.")
    save_file(q, f"{d}/expected_q.safetensors")
    save_file(backbone(sd, "module.encoder_k."), f"{d}/expected_k.safetensors")

    tv = torchvision.models.resnet18()
    tv.load_state_dict(q, strict=False)
    torch.save(tv.state_dict(), f"{d}/torchvision.pth")
    torch.save(nn.DataParallel(tv).state_dict(), f"{d}/dataparallel.pth")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in q.items()}, f"{d}/half.pt")
    save_file({k: v.half().float() if v.is_floating_point() else v for k, v in q.items()},
              f"{d}/expected_half.safetensors")
    torch.save(shared_views(q), f"{d}/shared.pt")
    torch.save(lightning(model, opt), f"{d}/lightning.ckpt")
    torch.save(q, f"{d}/legacy.pth", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(tv), f"{d}/torchscript.pt")
    torch.save({"state_dict": Evil(f"{d}/pwned")}, f"{d}/evil.pth")
    torch.save({"state_dict": Evil(f"{d}/proof")}, f"{d}/evil-proof.pth")
    torch.load(f"{d}/evil-proof.pth", weights_only=False)
    assert os.path.exists(f"{d}/proof"), "the payload did not run under torch.load"

    # PyTorch's own logits of the query backbone + a linear classifier, normalisation first.
    torch.manual_seed(1)
    fc = nn.Linear(512, CLASSES)
    save_file({"fc.weight": fc.weight.detach().contiguous(), "fc.bias": fc.bias.detach().contiguous()},
              f"{d}/classifier.safetensors")
    net = torchvision.models.resnet18(num_classes=CLASSES)
    net.load_state_dict({**q, "fc.weight": fc.weight, "fc.bias": fc.bias})
    net.eval()
    x = torch.rand(4, 3, 96, 96)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net((x - mean) / std)
    save_file({"image": x}, f"{d}/input.safetensors")
    save_file({"logits": logits}, f"{d}/logits.safetensors")


def check(model_path, d):
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    x = load_file(f"{d}/input.safetensors")["image"].numpy()
    want = load_file(f"{d}/logits.safetensors")["logits"].numpy()
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {sess.get_inputs()[0].name: x})[0]
    print(json.dumps({"max_abs_diff": float(np.abs(got - want).max()),
                      "scale": float(np.abs(want).max()),
                      "argmax_agree": bool((got.argmax(1) == want.argmax(1)).all())}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
