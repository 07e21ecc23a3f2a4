"""A language model exported by kiln, run by onnxruntime on held-out text and for generation.

    python tests/onnx_lm.py MODEL.onnx SIDECAR.json VALID_FRACTION PROMPT NEW_TOKENS CORPUS...

Checks the file with onnx.checker (full check). Reads the corpus files in the order given,
tokenizes them with the sidecar's character vocabulary, takes the last VALID_FRACTION of the
tokens (kiln's validation split), cuts it into non-overlapping blocks of the model's length and
scores every position: mean cross-entropy (nats), next-token accuracy, positions. Then greedy
generation from PROMPT, the window sliding by half a block when full, as `kiln generate` does.
Prints one JSON object: loss, accuracy, tokens, text.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, sidecar_path, valid_fraction, prompt, new_tokens = sys.argv[1:6]
    corpus = sys.argv[6:]
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    side = json.load(open(sidecar_path))
    chars = side["tokenizer"]["chars"]
    index = {c: i for i, c in enumerate(chars)}
    block = side["input_width"]
    text = "".join(open(p, encoding="utf-8").read() for p in corpus)
    ids = np.array([index[c] for c in text], dtype=np.int64)
    n_valid = int(round(len(ids) * float(valid_fraction)))
    valid = ids[len(ids) - n_valid :]
    starts = list(range(0, len(valid) - block, block))
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    nll, correct, tokens = 0.0, 0, 0
    for b in range(0, len(starts), 64):
        s = starts[b : b + 64]
        x = np.stack([valid[i : i + block] for i in s])
        y = np.stack([valid[i + 1 : i + block + 1] for i in s])
        (logits,) = session.run(["logits"], {"input_ids": x})
        logits = logits.astype(np.float64)
        m = logits.max(axis=-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
        nll -= np.take_along_axis(logp, y[..., None], axis=-1).sum()
        correct += int((logits.argmax(axis=-1) == y).sum())
        tokens += y.size
    seq = [index[c] for c in prompt]
    start = max(0, len(seq) - block)
    for _ in range(int(new_tokens)):
        if len(seq) - start > block:
            start = len(seq) - max(block // 2, 1)
        (logits,) = session.run(["logits"], {"input_ids": np.array([seq[start:]], dtype=np.int64)})
        seq.append(int(logits[0, -1].argmax()))
    out = "".join(chars[i] for i in seq[len(prompt) :])
    print(json.dumps({"loss": nll / tokens, "accuracy": correct / tokens, "tokens": tokens, "text": out}))


if __name__ == "__main__":
    main()
