"""Runs kiln's throughput bench and the PyTorch baseline interleaved, and prints the ratios.

    python benches/compare.py [--rounds 3] [--steps 200] [--threads 2]

Needs a Python with torch and numpy (see the book, "Benchmarks"). The machine is shared and
noisy, so each round runs every implementation once, back to back, and the table reports
medians over rounds: only numbers from one run are compared.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import kiln_features


def forward_flop(model):
    """Multiply-adds (2 FLOP each) of one sample's forward pass through the convolutions and
    linear layers; pooling, activations and the loss are left out."""
    if model == "mlp":
        return 2 * (784 * 256 + 256 * 128 + 128 * 10)
    conv1 = 28 * 28 * 32 * (1 * 9)
    conv2 = 14 * 14 * 64 * (32 * 9)
    return 2 * (conv1 + conv2 + 3136 * 128 + 128 * 10)


# Training is about three forward passes' worth: the forward, the input gradients and the
# weight gradients.
TRAIN_FLOP = {m: 3 * forward_flop(m) for m in ["mlp", "cnn"]}


def lines(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="mlp,cnn", help="which of mlp,cnn to run")
    a = p.parse_args()
    models = a.models.split(",")
    env = dict(os.environ)
    # The feature set of the test build (scripts/features; $KILN_FEATURES overrides it), so that
    # benchmarking does not rebuild burn with other features.
    features = kiln_features.cargo_args()
    subprocess.run(["cargo", "bench", "--bench", "throughput", "--no-run", *features], check=True, env=env)
    rates = {}
    ceiling = []
    for r in range(a.rounds):
        for model in models:
            got = lines(["cargo", "bench", "-q", "--bench", "throughput", *features, "--", model,
                         "--steps", str(a.steps), "--threads", str(a.threads)], env)
            # kiln again with its kernels switched off: what kernels/ is worth end to end.
            off = lines(["cargo", "bench", "-q", "--bench", "throughput", *features, "--", model,
                         "--steps", str(a.steps), "--threads", str(a.threads)],
                        {**env, "KILN_KERNELS": "off"})
            got += [dict(g, impl="kiln-kernels-off") for g in off if g["impl"] == "kiln"]
            got += lines([sys.executable, "benches/pytorch_baseline.py", model,
                          "--steps", str(a.steps), "--threads", str(a.threads)], env)
            for g in got:
                rates.setdefault((g["model"], g["impl"]), []).append(g["samples_per_second"])
                print(f"round {r + 1}: {g['model']:4} {g['impl']:10} {g['samples_per_second']:10.0f} samples/s",
                      file=sys.stderr)
        # The machine's matrix-multiply ceiling, in the same round: the gemm crate on a large
        # square product with the same threads.
        ceiling += [g["gflops"] for g in lines(["cargo", "bench", "-q", "--bench", "kernels", *features,
                                                "--", "--ceiling", "--threads", str(a.threads)], env)]
        print(f"round {r + 1}: gemm ceiling {ceiling[-1]:.1f} GFLOP/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    top = statistics.median(ceiling)
    print(f"gemm ceiling ({a.threads} threads, median of {len(ceiling)}): {top:.1f} GFLOP/s")
    print(f"| model | kiln (samples/s) | kiln, kernels off | bare burn loop | PyTorch | kiln / PyTorch | kiln / kernels off | kiln GFLOP/s | PyTorch GFLOP/s |")
    print(f"|---|---|---|---|---|---|---|---|---|")
    for model, label in [("mlp", "MLP 784-256-128-10, batch 128"), ("cnn", "CNN conv32-pool-conv64-pool-fc128-fc10, batch 64")]:
        if model not in models:
            continue
        k, o, b, t = (med[(model, i)] for i in ["kiln", "kiln-kernels-off", "burn-bare", "pytorch"])
        f = TRAIN_FLOP[model] / 1e9
        print(f"| {label} | {k:.0f} | {o:.0f} | {b:.0f} | {t:.0f} | {k / t:.2f}x | {k / o:.2f}x | {k * f:.1f} | {t * f:.1f} |")


if __name__ == "__main__":
    main()
