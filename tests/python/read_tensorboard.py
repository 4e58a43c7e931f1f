"""TensorBoard's own reading of a log directory, as JSON on stdout.

  read_tensorboard.py LOGDIR

Loads every event file in LOGDIR with tensorboard's EventAccumulator (all events kept; events
orphaned by a restarted run purged, as TensorBoard shows them) and prints
{"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, width, height, png_ok], ...]}}.
png_ok: the encoded image decodes to the stated size.
"""
import io
import json
import sys

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {}
    for t in tags["images"]:
        rows = []
        for e in acc.Images(t):
            img = Image.open(io.BytesIO(e.encoded_image_string))
            rows.append([e.step, e.width, e.height, img.size == (e.width, e.height)])
        images[t] = rows
    print(json.dumps({"scalars": scalars, "images": images}))


if __name__ == "__main__":
    main()
