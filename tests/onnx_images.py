"""The exported image model in onnxruntime, against `kiln predict`.

    onnx_images.py prepare SRC_FOLDER DST_FOLDER   # PNG files to predict: some as stored, some
                                                   # scaled by Pillow to other sizes, some RGB
    onnx_images.py compare MODEL.onnx PREDS.csv    # JSON: files, max_abs, argmax_disagreements

The graph gets each file's pixels as Pillow reads them (grey, 0-255, at the file's own size):
resizing, cropping and normalising are the graph's work.
"""
import csv
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def prepare(src, dst):
    os.makedirs(dst, exist_ok=True)
    files = []
    for cls in sorted(os.listdir(src)):
        names = sorted(os.listdir(os.path.join(src, cls)))[:5]
        files += [os.path.join(src, cls, n) for n in names]
    sizes = [(34, 40), (20, 17), (56, 56), (28, 45)]
    for i, f in enumerate(files):
        im = Image.open(f)
        im.save(os.path.join(dst, f"a{i:03d}.png"))
        w, h = sizes[i % len(sizes)]
        im.resize((w, h), Image.BILINEAR).save(os.path.join(dst, f"b{i:03d}.png"))
        # A grey picture stored as RGB: kiln's grey conversion is exact on it.
        im.convert("RGB").save(os.path.join(dst, f"c{i:03d}.png"))


def compare(model, preds):
    session = ort.InferenceSession(model)
    name = session.get_inputs()[0].name
    rows = list(csv.reader(open(preds)))
    header = rows[0]
    p_cols = [i for i, h in enumerate(header) if h.startswith("p_")]
    worst, disagree = 0.0, 0
    for r in rows[1:]:
        x = np.asarray(Image.open(r[0]).convert("L"), dtype=np.float32)[None, None]
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: x})))
        p = outputs["probabilities"][0]
        k = np.array([float(r[i]) for i in p_cols])
        worst = max(worst, float(np.abs(p - k).max()))
        disagree += int(np.argmax(p) != np.argmax(k))
    print(json.dumps({"files": len(rows) - 1, "max_abs": worst, "argmax_disagreements": disagree}))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    else:
        compare(sys.argv[2], sys.argv[3])
