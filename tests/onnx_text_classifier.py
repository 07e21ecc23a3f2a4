"""A text classifier exported by kiln, run by onnxruntime on a labeled TSV file.

    python tests/onnx_text_classifier.py MODEL.onnx SIDECAR.json FILE.tsv TEXT_COLUMN

Checks the file with onnx.checker (full check). Tokenizes each text with the sidecar's word
vocabulary as kiln does (lower-cased runs of letters, digits and apostrophes, and single
punctuation marks; unknown words are token 1, texts cut to the model's length, padded with 0),
runs the texts one at a time and in padded batches of 16, and prints one JSON object: the
class probabilities of each row (from the batches) and the largest difference between a text
alone and in a batch.
"""
import csv
import json
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort

WORD = re.compile(r"(?:[^\W_]|')+|\S")


def main():
    model_path, sidecar_path, data_path, column = sys.argv[1:5]
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    side = json.load(open(sidecar_path))
    vocab = {w: i for i, w in enumerate(side["tokenizer"]["words"])}
    block = side["input_width"]
    with open(data_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ids = []
    for r in rows:
        t = [vocab.get(w.lower(), 1) for w in WORD.findall(r[column])][:block]
        ids.append(t or [1])
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    probs, worst = [], 0.0
    for b in range(0, len(ids), 16):
        batch = ids[b : b + 16]
        width = max(len(t) for t in batch)
        x = np.array([t + [0] * (width - len(t)) for t in batch], dtype=np.int64)
        (p,) = session.run(["probabilities"], {"input_ids": x})
        for t, row in zip(batch, p):
            (alone,) = session.run(["probabilities"], {"input_ids": np.array([t], dtype=np.int64)})
            worst = max(worst, float(np.abs(alone[0] - row).max()))
        probs.extend(p.tolist())
    print(json.dumps({"rows": len(probs), "probabilities": probs, "batch_vs_alone": worst}))


if __name__ == "__main__":
    main()
