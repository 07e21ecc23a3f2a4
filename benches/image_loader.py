#!/usr/bin/env python3
"""kiln's image-folder loader against PyTorch's DataLoader + torchvision's ImageFolder, in one
run, alternating, on the same PNG files with the same transforms and worker counts:

    random rotation (10 degrees) -> random crop 28 with padding 2 -> [0, 1] -> normalise,
    shuffled, batches of 128, the first N images of the training folder's epoch

    OMP_WAIT_POLICY=PASSIVE benches/image_loader.py [--images 20000] [--rounds 3] [--workers 1 2]

Needs data/mnist_png (scripts/build_mnist_png.py) and a Python with torch, torchvision and
Pillow (`BENCH_PYTHON`, default the bench venv). kiln's side is `cargo bench --bench
image_loader` built with the test build's features (scripts/features; `KILN_FEATURES` overrides them).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import kiln_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_side(workers, images, batch):
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    t = transforms.Compose([
        transforms.Grayscale(1),
        transforms.RandomRotation(10),
        transforms.RandomCrop(28, padding=2),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])
    ds = datasets.ImageFolder(os.path.join(ROOT, "data/mnist_png/train"), transform=t)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[:images].tolist()
    sub = torch.utils.data.Subset(ds, idx)
    loader = torch.utils.data.DataLoader(sub, batch_size=batch, num_workers=workers,
                                         shuffle=False, persistent_workers=False)
    start = time.perf_counter()
    seen = 0
    for x, y in loader:
        seen += x.shape[0]
    secs = time.perf_counter() - start
    assert seen == images
    return {"impl": "pytorch", "workers": workers, "images": images, "seconds": secs,
            "images_per_second": images / secs}


def kiln_side(workers, images, features):
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "image_loader", *features, "--",
         "configs/mnist_png_resnet.toml", "--workers", str(workers), "--images", str(images)],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--torch-child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_child is not None:
        print(json.dumps(torch_side(a.torch_child, a.images, 128)))
        return
    features = kiln_features.cargo_args()
    py = os.environ.get("BENCH_PYTHON", os.path.expanduser("~/.cache/kiln/bench-venv/bin/python"))
    subprocess.run(["cargo", "bench", "--no-run", "--quiet", "--bench", "image_loader", *features],
                   cwd=ROOT, check=True)
    results = {}
    for r in range(a.rounds):
        for w in a.workers:
            k = kiln_side(w, a.images, features)
            t = json.loads(subprocess.run(
                [py, __file__, "--torch-child", str(w), "--images", str(a.images)],
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            for res in (k, t):
                results.setdefault((res["impl"], w), []).append(res["images_per_second"])
            print(f"round {r + 1} workers {w}: kiln {k['images_per_second']:.0f}/s, "
                  f"pytorch {t['images_per_second']:.0f}/s", file=sys.stderr)
    print("| workers | kiln images/s | PyTorch DataLoader images/s | kiln / PyTorch |")
    print("|---:|---:|---:|---:|")
    for w in a.workers:
        k = sorted(results[("kiln", w)])[len(results[("kiln", w)]) // 2]
        t = sorted(results[("pytorch", w)])[len(results[("pytorch", w)]) // 2]
        print(f"| {w} | {k:,.0f} | {t:,.0f} | {k / t:.2f}x |")


if __name__ == "__main__":
    main()
