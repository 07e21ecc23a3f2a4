#!/usr/bin/env python3
"""Data-parallel scaling on the CPU: 2 ranks under mpirun against 1 process, in one run.

    cargo build --release --features mpi
    python3 benches/scaling.py [--config configs/mnist_mlp.toml] [--steps 400] [--rounds 3]

Each round trains the same config three ways, from the same seed:
  1 rank,  1 thread,  batch B            (the unit a rank is)
  2 ranks, 1 thread each, batch B each   (global batch 2B, through MPI)
  1 rank,  2 threads, batch 2B           (the same global batch on one process)
and reads the training throughput (samples/s) that kiln logs in metrics.jsonl, leaving out the
first window (start-up). Scaling efficiency = 2-rank throughput / (2 x 1-rank throughput).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def kiln_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "kiln")


def throughput(registry):
    runs = list((Path(registry) / "runs").iterdir())
    assert len(runs) == 1, runs
    points = [json.loads(l) for l in open(runs[0] / "metrics.jsonl")]
    sps = [p["samples_per_second"] for p in points if "samples_per_second" in p]
    return statistics.median(sps[1:] if len(sps) > 1 else sps)


def train(config, ranks, threads, batch, steps):
    reg = tempfile.mkdtemp(prefix="kiln-scaling-")
    args = [kiln_binary(), "train", config, "--quiet", "--registry", reg,
            "--set", f"train.batch_size={batch}", "--set", f"train.max_steps={steps}",
            "--set", "train.log_every=50", "--set", f"runtime.threads={threads}"]
    if ranks > 1:
        args = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "core",
                "-np", str(ranks)] + args
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return throughput(reg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mnist_mlp.toml")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    one, two, threads2 = [], [], []
    for r in range(a.rounds):
        one.append(train(a.config, 1, 1, a.batch, a.steps))
        two.append(train(a.config, 2, 1, a.batch, a.steps))
        threads2.append(train(a.config, 1, 2, 2 * a.batch, a.steps))
        print(f"round {r + 1}: 1 rank {one[-1]:,.0f}  2 ranks {two[-1]:,.0f}  "
              f"1 rank x 2 threads {threads2[-1]:,.0f} samples/s", flush=True)
    m1, m2, mt = (statistics.median(v) for v in (one, two, threads2))
    print(f"\n{a.config}, batch {a.batch} per rank, {a.steps} steps, medians of {a.rounds} rounds")
    print(f"1 rank, 1 thread:             {m1:10,.0f} samples/s")
    print(f"2 ranks (MPI), 1 thread each: {m2:10,.0f} samples/s  scaling efficiency {m2 / (2 * m1):.2f}")
    print(f"1 rank, 2 threads, batch x2:  {mt:10,.0f} samples/s  ({m2 / mt:.2f}x of it for 2 ranks)")


if __name__ == "__main__":
    main()
