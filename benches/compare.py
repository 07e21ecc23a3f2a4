"""Runs kiln's throughput bench and the PyTorch baseline interleaved, and prints the ratios.

    python benches/compare.py [--rounds 3] [--steps 200] [--threads 2]

Needs a Python with torch and numpy (see README, "Benchmarks"). The machine is shared and
noisy, so each round runs every implementation once, back to back, and the table reports
medians over rounds: only numbers from one run are compared.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def lines(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    env = dict(os.environ)
    subprocess.run(["cargo", "bench", "--bench", "throughput", "--no-run"], check=True, env=env)
    rates = {}
    for r in range(a.rounds):
        for model in ["mlp", "cnn"]:
            got = lines(["cargo", "bench", "-q", "--bench", "throughput", "--", model,
                         "--steps", str(a.steps), "--threads", str(a.threads)], env)
            got += lines([sys.executable, "benches/pytorch_baseline.py", model,
                          "--steps", str(a.steps), "--threads", str(a.threads)], env)
            for g in got:
                rates.setdefault((g["model"], g["impl"]), []).append(g["samples_per_second"])
                print(f"round {r + 1}: {g['model']:4} {g['impl']:10} {g['samples_per_second']:10.0f} samples/s",
                      file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"| model | kiln (samples/s) | bare burn loop | PyTorch | kiln / PyTorch | kiln / bare burn |")
    print(f"|---|---|---|---|---|---|")
    for model, label in [("mlp", "MLP 784-256-128-10, batch 128"), ("cnn", "CNN conv32-pool-conv64-pool-fc128-fc10, batch 64")]:
        k, b, t = med[(model, "kiln")], med[(model, "burn-bare")], med[(model, "pytorch")]
        print(f"| {label} | {k:.0f} | {b:.0f} | {t:.0f} | {k / t:.2f}x | {k / b:.2f}x |")


if __name__ == "__main__":
    main()
