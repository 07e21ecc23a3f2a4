"""The anchor `kiln serve` is compared with: kiln's exported ONNX model in onnxruntime behind a
FastAPI app on uvicorn, the stack a user would otherwise put together.

    python benches/serve_anchor.py MODEL.onnx MODEL.json PORT [WORKERS]

POST /predict takes the body kiln's /predict takes ({"rows": [{column: value}, ...]} for
tables, {"rows": [[pixels...], ...]} for images), encodes the rows as the sidecar JSON
documents (numeric columns raw, NaN when missing; categorical columns one-hot) and answers the
class and probabilities, as kiln does.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

if __name__ == "__main__":
    os.environ["ANCHOR_MODEL"], os.environ["ANCHOR_SIDECAR"] = sys.argv[1], sys.argv[2]
MODEL, SIDECAR = os.environ["ANCHOR_MODEL"], os.environ["ANCHOR_SIDECAR"]
side = json.load(open(SIDECAR))
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
classes = side.get("class_names") or []
missing = set(side["missing_values"])
app = FastAPI()


def encode(rows):
    if not side.get("columns"):
        return np.asarray(rows, np.float32)
    x = np.zeros((len(rows), side["input_width"]), np.float32)
    k = 0
    for col in side["columns"]:
        name = col["name"]
        if col["kind"] == "numeric":
            for i, r in enumerate(rows):
                v = r.get(name)
                x[i, k] = np.nan if v is None or v in missing else float(v)
            k += 1
        else:
            cats = col["categories"]
            for i, r in enumerate(rows):
                v = r.get(name)
                v = col.get("fill") if v is None or v in missing else v
                if v in cats:
                    x[i, k + cats.index(v)] = 1.0
            k += len(cats)
    return x


@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    (p,) = session.run(["probabilities"], {"features": encode(body["rows"])})
    return {
        "predictions": [
            {"prediction": classes[int(r.argmax())], "probabilities": r.tolist()} for r in p
        ]
    }


if __name__ == "__main__":
    import uvicorn

    port = sys.argv[3]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    # "info" for the line each worker prints when ready, which the benchmark waits for; no
    # access log (a line per request would be measured too).
    uvicorn.run("serve_anchor:app", host="127.0.0.1", port=int(port), workers=workers, log_level="info", access_log=False, app_dir=os.path.dirname(os.path.abspath(__file__)))
