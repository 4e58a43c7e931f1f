"""Seed corpora for the fuzz targets of files from strangers, written by the real tools:
torch.save (torchvision-, official-MoCo- and Lightning-shaped checkpoints, half types, views with
offsets, strides and repeats), safetensors from Python, ONNX from the onnx package, and the CSVs
of a label request. Tensors keep their real names but tiny shapes: the structure is what the
readers walk, and a seed must stay small (fuzz/corpus is committed).

Usage: fuzz_seeds.py FUZZ_CORPUS_DIR
"""
import io
import os
import sys
from collections import OrderedDict

import onnx
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

RESNET18_NAMES = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                  "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
                  "layer4.1.bn2.running_var", "fc.weight", "fc.bias"]


def tiny_state(prefix="", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for n in RESNET18_NAMES:
        if n.endswith("num_batches_tracked"):
            sd[prefix + n] = torch.tensor(3)
        else:
            sd[prefix + n] = torch.randn(2, 3, generator=g).to(dtype)
    return sd


def save_torch(path, obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def checkpoints(d):
    os.makedirs(d, exist_ok=True)
    save_torch(f"{d}/seed-torchvision.pth", tiny_state())
    save_torch(f"{d}/seed-half.pth", tiny_state(dtype=torch.float16))
    save_torch(f"{d}/seed-bfloat16.pth", tiny_state(dtype=torch.bfloat16))
    q, k = tiny_state("module.encoder_q."), tiny_state("module.encoder_k.")
    save_torch(f"{d}/seed-moco.pth.tar", {
        "epoch": 3, "arch": "resnet18",
        "state_dict": OrderedDict(**q, **k, **{"module.queue": torch.randn(4, 8),
                                               "module.queue_ptr": torch.zeros(1, dtype=torch.long)}),
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(2, 3)}},
                      "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0]}]},
    })
    save_torch(f"{d}/seed-lightning.ckpt", {
        "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.0.0",
        "state_dict": OrderedDict(**tiny_state("backbone."), **tiny_state("backbone_momentum.")),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        "lr_schedulers": [], "callbacks": {}, "loops": {}, "hyper_parameters": {"lr": 0.1},
    })
    base = torch.arange(24, dtype=torch.float32)
    save_torch(f"{d}/seed-views.pth", OrderedDict([
        ("conv1.weight", base.view(4, 6).t()),               # transposed: strides (1, 6)
        ("bn1.weight", base[5:11]),                           # storage offset 5
        ("bn1.bias", torch.zeros(3).expand(4, 3)),            # stride 0: a repeated row
        ("bn1.running_mean", base.view(2, 12)[:, ::3]),       # step 3
    ]))


def weights(d):
    os.makedirs(d, exist_ok=True)
    save_file({k: v for k, v in tiny_state().items()}, f"{d}/seed-encoder.safetensors")
    save_file({"fc.weight": torch.randn(3, 512), "fc.bias": torch.zeros(3)},
              f"{d}/seed-classifier.safetensors", metadata={"moco.classes": '["a","b","c"]'})
    save_file({k: v.half() for k, v in tiny_state().items() if v.is_floating_point()},
              f"{d}/seed-half.safetensors")


def model(d, crop=32):
    os.makedirs(d, exist_ok=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, crop, crop])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], [0.1 * i for i in range(9)])
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])]
    g = helper.make_graph(nodes, "tiny", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for k, v in [("moco.mean", "[0.485,0.456,0.406]"), ("moco.std", "[0.229,0.224,0.225]"),
                 ("moco.resize", str(crop)), ("moco.crop", str(crop)),
                 ("moco.classes", '["a","b","c"]'), ("moco.arch", "resnet18"), ("moco.source", "{}")]:
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    onnx.save(m, f"{d}/seed-tiny-{crop}.onnx")


def csvs(d):
    os.makedirs(d, exist_ok=True)
    request = "rank,index,image,score,predicted,confidence\n" + "".join(
        f"{i},{i},unlabeled/{i:05d}.png,0.5,0,0.5\n" for i in range(4))
    returned = "image,label\nunlabeled/00000.png,stripes\nunlabeled/00002.png,1\n"
    with open(f"{d}/seed-request-and-labels.csv", "w") as f:
        f.write(request + "\0" + returned)
    with open(f"{d}/seed-labels.csv", "w") as f:
        f.write(returned)


if __name__ == "__main__":
    root = sys.argv[1]
    checkpoints(f"{root}/torch_checkpoint")
    weights(f"{root}/safetensors_weights")
    model(f"{root}/onnx_model")
    csvs(f"{root}/merge_labels_csv")
