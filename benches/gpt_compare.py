"""kiln against PyTorch on nanoGPT's CPU example, interleaved in one run.

    python benches/gpt_compare.py [--rounds 1] [--steps 2000] [--threads 2]

Each round trains `configs/shakespeare_char.toml` with kiln (release build, `--threads`) and
the same model in plain eager PyTorch (`benches/gpt_pytorch.py`), back to back, and reports the
validation loss after `--steps` steps and the training tokens/s of each (kiln: the median of
its logged windows; PyTorch: step time only). Needs a Python with torch (see the book,
"Benchmarks"). Prints a Markdown table; the rounds' numbers go to stderr.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import kiln_features


def kiln(steps, threads):
    with tempfile.TemporaryDirectory() as reg:
        out = subprocess.run(
            # The test build's feature set (scripts/features), as benches/compare.py.
            ["cargo", "run", "--release", "-q", *kiln_features.cargo_args(), "--", "train",
             "configs/shakespeare_char.toml", "--json", "--quiet", "--registry", reg,
             "--set", f"train.max_steps={steps}", "--set", f"runtime.threads={threads}",
             "--set", "train.log_every=50"],
            check=True, capture_output=True, text=True).stdout
        run = json.loads(out.splitlines()[-1])
        with open(os.path.join(run["run_dir"], "metrics.jsonl")) as f:
            windows = [json.loads(l) for l in f]
        rates = [w["samples_per_second"] * 64 for w in windows if w.get("split") == "train"]
        return {"impl": "kiln", "valid_loss": run["metrics"]["valid"]["loss"],
                "train_tokens_per_second": statistics.median(rates)}


def pytorch(steps, threads):
    out = subprocess.run([sys.executable, "benches/gpt_pytorch.py", "--steps", str(steps),
                          "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    got = {"kiln": [], "pytorch": []}
    for r in range(a.rounds):
        for impl in (kiln, pytorch):
            g = impl(a.steps, a.threads)
            got[g["impl"]].append(g)
            print(f"round {r + 1}: {g['impl']:8} valid loss {g['valid_loss']:.4f}  "
                  f"{g['train_tokens_per_second']:.0f} tokens/s", file=sys.stderr)
    med = {k: (statistics.median(x["valid_loss"] for x in v),
               statistics.median(x["train_tokens_per_second"] for x in v)) for k, v in got.items()}
    (kl, kt), (pl, pt) = med["kiln"], med["pytorch"]
    print("| | valid loss after %d steps | training tokens/s |" % a.steps)
    print("|---|---|---|")
    print(f"| kiln | {kl:.4f} | {kt:.0f} |")
    print(f"| PyTorch (eager) | {pl:.4f} | {pt:.0f} |")
    print(f"| kiln - PyTorch, kiln / PyTorch | {kl - pl:+.4f} | {kt / pt:.2f}x |")


if __name__ == "__main__":
    main()
