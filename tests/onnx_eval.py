"""Test-split accuracy of an exported kiln model, computed by onnxruntime on the raw MNIST files.

    python tests/onnx_eval.py MODEL.onnx IMAGES.idx3-ubyte.gz LABELS.idx1-ubyte.gz

Checks the file with onnx.checker (full check), feeds the raw pixels (uint8 as float32, no
scaling: the graph scales them) and prints one JSON object: model, rows, accuracy.
"""
import gzip
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path):
    data = gzip.open(path).read()
    (magic,) = struct.unpack(">I", data[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    return np.frombuffer(data[4 + 4 * rank :], np.uint8).reshape(dims)


def main():
    model_path, images, labels = sys.argv[1:4]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    x = read_idx(images).astype(np.float32)
    x = x.reshape(x.shape[0], -1)
    y = read_idx(labels).astype(np.int64)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (p,) = session.run(["probabilities"], {"features": x})
    accuracy = float((p.argmax(axis=1) == y).mean())
    print(json.dumps({"model": meta["model"], "rows": int(len(y)), "accuracy": accuracy}))


if __name__ == "__main__":
    main()
