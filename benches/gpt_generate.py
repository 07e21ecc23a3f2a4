"""Generation with and without the key/value cache, interleaved in one run.

    python3 benches/gpt_generate.py [--rounds 3] [--new-tokens 256] [--block 512]

Trains `configs/shakespeare_char.toml` for a few steps with a position table of `--block`
positions (speed does not depend on what the weights learned; a table longer than prompt plus
new tokens means no window slide, so the no-cache path recomputes the whole prefix every
token), then times `kiln generate --json` with the cache and with `--no-cache`, alternating,
and checks that both give the same text. Also times the shipped 64-position model's settings
(`--block 64`: the window slides every 32 tokens). Prints a Markdown table of medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import kiln_features


def kiln(*args):
    out = subprocess.run(["cargo", "run", "--release", "-q", *kiln_features.cargo_args(), "--", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--block", type=int, default=512)
    a = p.parse_args()
    print("| model.block_size | new tokens | with cache (tokens/s) | recomputing (tokens/s) | speed-up |")
    print("|---|---|---|---|---|")
    for block in sorted({64, a.block}):
        with tempfile.TemporaryDirectory() as reg:
            run = kiln("train", "configs/shakespeare_char.toml", "--json", "--quiet", "--registry", reg,
                       "--set", "train.max_steps=20", "--set", f"model.block_size={block}",
                       "--set", "data.block_size=64")
            rates = {True: [], False: []}
            texts = set()
            for r in range(a.rounds):
                for cache in (True, False):
                    g = kiln("generate", run["run_id"], "--registry", reg, "--prompt", "ROMEO:",
                             "--max-new-tokens", str(a.new_tokens), "--seed", "1", "--json",
                             *([] if cache else ["--no-cache"]))
                    rates[cache].append(g["tokens_per_second"])
                    texts.add(g["text"])
                    print(f"block {block} round {r + 1}: cache={cache} {g['tokens_per_second']:.0f} tokens/s",
                          file=sys.stderr)
            assert len(texts) == 1, "the cache changed the text"
            c, n = statistics.median(rates[True]), statistics.median(rates[False])
            print(f"| {block} | {a.new_tokens} | {c:.0f} | {n:.0f} | {c / n:.1f}x |")


if __name__ == "__main__":
    main()
