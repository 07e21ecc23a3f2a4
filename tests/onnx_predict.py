"""Predictions of an exported kiln model by onnxruntime on a raw CSV data file.

    python tests/onnx_predict.py MODEL.onnx MODEL.json CONFIG.toml DATA_FILE

Reads the data file as the model's (resolved) training config says (delimiter, header,
skipped lines, column names), encodes each row as the JSON beside the model documents
(numeric columns as numbers, NaN when missing; categorical columns one-hot), runs the model
in onnxruntime and prints a JSON list: per row the predicted class name and the class
probabilities, or the predicted value.
"""
import gzip
import json
import sys
import tomllib

import numpy as np
import onnxruntime as ort


def read_lines(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8").splitlines()


def main():
    model_path, sidecar_path, config_path, data_path = sys.argv[1:5]
    side = json.load(open(sidecar_path))
    data = tomllib.load(open(config_path, "rb"))["data"]
    delimiter = data.get("delimiter", "\t" if data_path.endswith(".tsv") else ",")
    lines = read_lines(data_path)[data.get("skip_rows", 0) :]
    lines = [l for l in lines if l.strip()]

    def split(line):
        fields = line.split() if delimiter == "whitespace" else line.split(delimiter)
        return [f.strip() for f in fields]

    rows = [split(l) for l in lines]
    if data.get("header", False):
        names, rows = rows[0], rows[1:]
    elif data.get("columns"):
        names = data["columns"]
    else:
        names = [f"c{i}" for i in range(len(rows[0]))]
    missing = set(side["missing_values"])
    x = np.zeros((len(rows), side["input_width"]), np.float32)
    k = 0
    for col in side["columns"]:
        j = names.index(col["name"])
        if col["kind"] == "numeric":
            x[:, k] = [np.nan if r[j] in missing else float(r[j]) for r in rows]
            k += 1
        else:
            cats = col["categories"]
            for i, r in enumerate(rows):
                v = col.get("fill") if r[j] in missing else r[j]
                if v in cats:
                    x[i, k + cats.index(v)] = 1.0
            k += len(cats)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    if "prediction" in side["outputs"]:
        (p,) = session.run(["prediction"], {"features": x})
        out = [float(v) for v in p[:, 0]]
    else:
        (p,) = session.run(["probabilities"], {"features": x})
        out = [[side["class_names"][int(r.argmax())], [float(v) for v in r]] for r in p]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
