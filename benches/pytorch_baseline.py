"""PyTorch reference for benches/throughput.rs: the same models, data, optimizer and batch sizes.

    python benches/pytorch_baseline.py [mlp|cnn|all] [--steps N] [--threads T]

Prints one JSON object per model, as the Rust bench does. MNIST is read from data/mnist (raw
IDX, gzip) and standardised the same way; Adam at lr 1e-3; f32; CPU.
"""
import argparse
import gzip
import json
import struct
import time

import numpy as np
import torch
from torch import nn


def mnist():
    with gzip.open("data/mnist/train-images.idx3-ubyte.gz") as f:
        _, n, r, c = struct.unpack(">IIII", f.read(16))
        x = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, r * c)
    with gzip.open("data/mnist/train-labels.idx1-ubyte.gz") as f:
        f.read(8)
        y = np.frombuffer(f.read(), dtype=np.uint8)
    x = (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def mlp():
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = self.pool(torch.relu(self.c1(x)))
        x = self.pool(torch.relu(self.c2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def run(model, batch, steps, warmup, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        b = (step * batch) % (n - batch)
        xb, yb = x[b : b + batch], y[b : b + batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="?", default="all", choices=["mlp", "cnn", "all"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    x, y = mnist()
    warmup = max(a.steps // 5, 5)
    for name, make, batch in [("mlp", mlp, 128), ("cnn", Cnn, 64)]:
        if a.which in (name, "all"):
            rate = run(make(), batch, a.steps, warmup, x, y)
            print(json.dumps({"model": name, "impl": "pytorch", "batch": batch, "threads": a.threads,
                              "steps": a.steps, "samples_per_second": rate, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
