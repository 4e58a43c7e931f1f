"""Label files as the competition ships them, for the reader tests.

  write_labels.py OUT.pt plain 3 1 4 1 5   torch.save of a 1-D int64 tensor
  write_labels.py OUT.pt strided           a view with storage offset and stride 2
  write_labels.py OUT.pt float             a float tensor (must be refused)
  write_labels.py OUT.pt matrix            a 2-D tensor (must be refused)
  write_labels.py OUT.pt evil MARKER       a pickle whose GLOBAL would run `touch MARKER`
"""
import io
import os
import pickle
import sys
import zipfile

import torch


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def main():
    out, kind, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    if kind == "plain":
        torch.save(torch.tensor([int(x) for x in rest], dtype=torch.int64), out)
    elif kind == "strided":
        torch.save(torch.arange(20, dtype=torch.int64)[3:17:2], out)
    elif kind == "float":
        torch.save(torch.tensor([1.0, 2.0]), out)
    elif kind == "matrix":
        torch.save(torch.zeros(2, 3, dtype=torch.int64), out)
    elif kind == "evil":
        # Same zip layout as torch.save, with a data.pkl that calls os.system when unpickled.
        buf = io.BytesIO()
        torch.save(torch.tensor([0], dtype=torch.int64), buf)
        src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        with zipfile.ZipFile(out, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if name.endswith("data.pkl"):
                    data = pickle.dumps(Evil(rest[0]), protocol=2)
                dst.writestr(name, data)
    else:
        raise SystemExit(f"unknown kind {kind}")


if __name__ == "__main__":
    main()
