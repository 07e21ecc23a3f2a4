"""PyTorch counterpart of benches/cnn_ops.rs: per-layer milliseconds at the same shapes.

    python benches/cnn_ops.py [--reps N]
"""
import argparse
import json
import time

import torch
from torch import nn


def timed(reps, f):
    f()
    f()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - start) * 1e3 / reps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    c1 = nn.Conv2d(1, 32, 3, padding=1)
    c2 = nn.Conv2d(32, 64, 3, padding=1)
    pool = nn.MaxPool2d(2)
    fc1 = nn.Linear(3136, 128)
    ops = [
        ("conv1 1->32 28x28", torch.randn(64, 1, 28, 28), c1),
        ("relu+pool 32x28x28", torch.randn(64, 32, 28, 28, requires_grad=True), lambda x: pool(torch.relu(x))),
        ("conv2 32->64 14x14", torch.randn(64, 32, 14, 14, requires_grad=True), c2),
        ("relu+pool 64x14x14", torch.randn(64, 64, 14, 14, requires_grad=True), lambda x: pool(torch.relu(x))),
        ("fc1 3136->128", torch.randn(64, 3136, requires_grad=True), fc1),
    ]
    for name, x, f in ops:
        def fwd():
            with torch.no_grad():
                f(x).sum().item()
        fwd_ms = timed(a.reps, fwd)
        both_ms = timed(a.reps, lambda: f(x).sum().backward())
        print(json.dumps({"op": name, "impl": "pytorch", "forward_ms": fwd_ms, "forward_backward_ms": both_ms}))


if __name__ == "__main__":
    main()
