"""Reads a label file the way a competition script does and prints it as JSON.

  read_labels.py FILE.pt   → {"dtype": "torch.int64", "shape": [n], "values": [...]}
"""
import json
import sys

import torch

t = torch.load(sys.argv[1], weights_only=True)
print(json.dumps({"dtype": str(t.dtype), "shape": list(t.shape), "values": t.tolist()}))
