"""ONNX Runtime's own static quantization of an exported fp32 model, the baseline for
`moco-export --quantize int8` (docs/benchmarks.md).

  ort_quantize.py --model FP32.onnx --data ROOT --split train --images N --out INT8.onnx
  ort_quantize.py --check INT8.onnx      onnx.checker (full), the file's op counts and the op
                                         counts of ONNX Runtime's optimized graph (which QDQ
                                         groups became integer kernels), as JSON

quantize_static in QDQ form with the same choices as moco-export: per-channel int8 weights,
uint8 activations, MinMax calibration on N images spread evenly over the split (the eval
transform of bench_infer.py). The moco.* metadata is copied so moco-infer runs the result.
"""
import argparse
import collections
import json

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

from bench_infer import list_split, preprocess


class Images(CalibrationDataReader):
    def __init__(self, items, resize, crop):
        self.it = iter([{"image": preprocess(p, resize, crop)[None]} for p, _ in items])

    def get_next(self):
        return next(self.it, None)


def check(path):
    import os
    import tempfile

    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        fused = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    print(json.dumps({"model": path, "checker": "ok", "ops": ops, "ort_ops": fused}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--out")
    ap.add_argument("--check")
    a = ap.parse_args()
    if a.check:
        return check(a.check)
    meta = {p.key: p.value for p in onnx.load(a.model, load_external_data=False).metadata_props}
    resize, crop = int(meta.get("moco.resize", 96)), int(meta.get("moco.crop", 96))
    items = list_split(a.data, a.split)
    n = min(a.images, len(items))
    chosen = [items[i * len(items) // n] for i in range(n)]
    quantize_static(a.model, a.out, Images(chosen, resize, crop), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    out = onnx.load(a.out)
    have = {p.key for p in out.metadata_props}
    for k, v in meta.items():
        if k not in have:
            out.metadata_props.add(key=k, value=v)
    onnx.save(out, a.out)


if __name__ == "__main__":
    main()
