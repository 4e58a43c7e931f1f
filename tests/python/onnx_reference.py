"""Python's view of an exported model: onnx.checker (full_check) and onnxruntime's outputs.

  onnx_reference.py --model M.onnx --input in.safetensors --out out.safetensors
in.safetensors holds `image` [N,3,H,W] float32; out.safetensors receives every model output.
Prints the metadata_props as JSON on stdout.
"""
import argparse
import json

import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    image = load_file(args.input)["image"]
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, {"image": image})
    save_file({n: o for n, o in zip(names, outs)}, args.out)
    print(json.dumps({p.key: p.value for p in model.metadata_props}))


if __name__ == "__main__":
    main()
