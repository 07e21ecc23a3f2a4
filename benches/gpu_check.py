"""The GPU check of kiln's CUDA build: one short run on a machine with an NVIDIA GPU.

    python3 benches/gpu_check.py --kiln PATH [--out DIR] [--only STEP,...]

Run by `scripts/gpu-check.sh` from the pack that `scripts/gpu-pack.sh` makes (see the book,
"CUDA"), in the pack's folder (it reads configs/ and data/ from there). Each step has its own
time limit, and the results are written as they come (DIR/gpu-check.json and .md), so a slow
or failing step costs only itself:

  devices   `kiln devices --json` lists a CUDA device
  digits    the digits MLP (configs/digits_mlp.toml, all 40 epochs) on cuda:0: test accuracy
  cnn       the MNIST CNN (configs/mnist_cnn.toml, 1 epoch) on cuda:0: test accuracy
  gpt       the GPT of configs/shakespeare_char.toml, 600 steps: validation loss
  pytorch   the same models in eager PyTorch on the same GPU, f32/f16/bf16, step time only
  nccl      `--devices cuda:all` on the digits MLP: one rank per GPU, gradients through NCCL
  bf16, f16 the CNN (400 steps) and the GPT (600 steps) in mixed precision
  large     the CNN at batch 512 and the GPT at batch 128, f32 and bf16, kiln and PyTorch:
            the configs' batches are sized for a laptop CPU and leave a GPU mostly idle

kiln's samples/s is the median of its logged training windows after the first (the first
holds kernel compilation and autotuning); PyTorch's is the step time of the steps after a
warm-up, synchronised. Exit status 1 when a check failed.
"""
import argparse
import glob
import gzip
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (model, precision, batch, config, overrides, metric, threshold, higher_is_better)
CNN, GPT = "configs/mnist_cnn.toml", "configs/shakespeare_char.toml"


def gpt_steps():
    """A fresh list each time: the precision is appended to each run's own overrides."""
    return ["train.max_steps=600", "train.valid_every=300"]


# Larger batches than the configs' (sized for a laptop CPU), where a GPU has work to do: few
# steps, logged often, no validation until the end.
LARGE = ["train.log_every=10", "train.valid_every=100000"]
KILN_RUNS = {
    "digits": [("digits-mlp", "f32", 32, "configs/digits_mlp.toml", [], "test.accuracy", 0.95, True)],
    "cnn": [("mnist-cnn", "f32", 64, CNN, ["train.epochs=1"], "test.accuracy", 0.97, True)],
    "gpt": [("shakespeare-char", "f32", 12, GPT, gpt_steps(), "valid.loss", 2.3, False)],
    "bf16": [
        ("mnist-cnn", "bf16", 64, CNN, ["train.epochs=1", "train.max_steps=400"], "test.accuracy", 0.95, True),
        ("shakespeare-char", "bf16", 12, GPT, gpt_steps(), "valid.loss", 2.3, False),
    ],
    "f16": [
        ("mnist-cnn", "f16", 64, CNN, ["train.epochs=1", "train.max_steps=400"], "test.accuracy", 0.95, True),
        ("shakespeare-char", "f16", 12, GPT, gpt_steps(), "valid.loss", 2.3, False),
    ],
    "large": [
        (m, p, b, cfg, [f"train.batch_size={b}", f"train.max_steps={n}"] + LARGE, metric, t, hi)
        for p in ["f32", "bf16"]
        for (m, b, cfg, n, metric, t, hi) in [
            ("mnist-cnn", 512, CNN, 150, "test.accuracy", 0.9, True),
            ("shakespeare-char", 128, GPT, 200, "valid.loss", 2.7, False),
        ]
    ],
}
KILN_RUNS = {
    step: [(m, p, b, cfg, sets + ([f"backend.precision={p}"] if p != "f32" else []), *rest)
           for (m, p, b, cfg, sets, *rest) in runs]
    for step, runs in KILN_RUNS.items()
}
STEPS = ["devices", "digits", "cnn", "gpt", "pytorch", "nccl", "bf16", "f16", "large"]
# Samples per example for the throughput columns: the GPT counts tokens (64 per block).
TOKENS = {"shakespeare-char": 64}


class Report:
    def __init__(self, out):
        self.out = out
        self.rows = []  # one per (model, precision): kiln and PyTorch figures side by side
        self.checks = []  # (step, ok, what)
        self.info = {}
        os.makedirs(out, exist_ok=True)

    def check(self, step, ok, what):
        self.checks.append({"step": step, "ok": bool(ok), "what": what})
        print(f"[{'ok' if ok else 'FAIL'}] {step}: {what}", flush=True)
        self.write()

    def row(self, model, precision, batch):
        for r in self.rows:
            if (r["model"], r["precision"], r["batch"]) == (model, precision, batch):
                return r
        r = {"model": model, "precision": precision, "batch": batch}
        self.rows.append(r)
        return r

    def write(self):
        doc = {"info": self.info, "checks": self.checks, "rows": self.rows}
        with open(os.path.join(self.out, "gpu-check.json"), "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.join(self.out, "gpu-check.md"), "w") as f:
            f.write(self.markdown())

    def markdown(self):
        i = self.info
        lines = [f"GPU: {i.get('gpu', '?')}, driver {i.get('driver', '?')}, PyTorch {i.get('torch', '?')}, "
                 f"kiln {i.get('kiln', '?')}, {i.get('date', '?')}", "",
                 "| model | precision | batch | kiln samples/s | PyTorch samples/s | kiln / PyTorch | kiln result |",
                 "|---|---|---:|---:|---:|---:|---|"]
        for r in self.rows:
            k, p = r.get("kiln_samples_per_second"), r.get("pytorch_samples_per_second")
            unit = " (tokens/s)" if r["model"] in TOKENS else ""
            ratio = f"{k / p:.2f}x" if k and p else "-"
            lines.append(f"| {r['model']}{unit} | {r['precision']} | {r.get('batch', '-')} | {fmt(k)} | "
                         f"{fmt(p)} | {ratio} | {r.get('kiln_result', '-')} |")
        lines += ["", "| check | result | what |", "|---|---|---|"]
        lines += [f"| {c['step']} | {'ok' if c['ok'] else 'FAILED'} | {c['what']} |" for c in self.checks]
        return "\n".join(lines) + "\n"


def fmt(v):
    return f"{v:,.0f}" if v else "-"


def run(cmd, timeout, env=None):
    """Runs a command; returns (exit code or None on timeout, stdout, stderr, seconds)."""
    start = time.time()
    try:
        # A session of its own, so that a timeout ends the ranks `--devices` started too.
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    except FileNotFoundError as e:
        return 127, "", str(e), time.time() - start
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err, time.time() - start
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err, time.time() - start


def tail(text, n=600):
    return text.strip()[-n:].replace("\n", " / ").replace("|", "/")


def metric(metrics, path):
    split, name = path.split(".")
    return metrics.get(split, {}).get(name)


def unit(model):
    return "tokens" if model in TOKENS else "samples"


def kiln_rate(run_dir, model):
    """Median samples/s of the training windows after the first, in samples (tokens for the GPT)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        windows = [json.loads(line) for line in f]
    rates = [w["samples_per_second"] for w in windows if w.get("split") == "train" and "samples_per_second" in w]
    if len(rates) > 1:
        rates = rates[1:]
    return statistics.median(rates) * TOKENS.get(model, 1) if rates else None


def kiln_train(rep, a, step, spec, extra=(), label=None):
    model, precision, batch, config, sets, path, threshold, higher = spec
    reg = tempfile.mkdtemp(prefix="kiln-reg-")
    cmd = [a.kiln, "train", config, "--json", "--quiet", "--registry", reg]
    cmd += list(extra) if extra else ["--device", a.device]
    for s in sets:
        cmd += ["--set", s]
    name = label or f"{model} {precision} batch {batch}"
    left = a.deadline - time.time()
    if left < 20:
        rep.check(step, False, f"{name}: not run, the time budget (--budget) is spent")
        return None
    code, out, err, secs = run(cmd, min(a.step_timeout, left))
    if code != 0:
        why = "timed out" if code is None else f"exit {code}"
        rep.check(step, False, f"{name}: {why} after {secs:.0f} s: {tail(err or out)}")
        return None
    try:
        res = json.loads(out.strip().splitlines()[-1])
        value = metric(res["metrics"], path)
        rate = kiln_rate(res["run_dir"], model)
    except (IndexError, KeyError, ValueError, OSError) as e:
        rep.check(step, False, f"{name}: exit 0 but no result: {type(e).__name__}: {e}: {tail(out)}")
        return None
    ok = value is not None and (value >= threshold if higher else value <= threshold)
    shown = "missing" if value is None else f"{value:.4f}"
    rep.check(step, ok, f"{name}: {path} {shown} ({'>=' if higher else '<='} {threshold} expected), "
                        f"{res['steps']} steps in {secs:.0f} s, {rate or 0:,.0f} {unit(model)}/s")
    if label is None:
        r = rep.row(model, precision, batch)
        r["kiln_samples_per_second"] = rate
        r["kiln_result"] = f"{path} {shown}"
        r["kiln_seconds"] = round(secs, 1)
    return res


def devices(rep, a):
    code, out, err, _ = run([a.kiln, "devices", "--json"], 120)
    if code != 0:
        rep.check("devices", False, f"kiln devices: exit {code}: {tail(err)}")
        return False
    found = [d for d in json.loads(out)["devices"] if d.get("kind") == "cuda"]
    rep.info["kiln_devices"] = found
    rep.check("devices", bool(found), f"kiln devices lists {len(found)} CUDA device(s): "
                                      + ", ".join(f"{d['id']} {d.get('name', '')}" for d in found))
    return bool(found)


def nccl(rep, a):
    spec = KILN_RUNS["digits"][0]
    kiln_train(rep, a, "nccl", spec, extra=["--devices", "cuda:all"], label="digits-mlp --devices cuda:all (NCCL)")


# ---- PyTorch, the same models on the same GPU ----------------------------------------------

def digits_data():
    import numpy as np
    with gzip.open("data/sklearn/digits.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x, y = rows[:, :-1], rows[:, -1].astype(np.int64)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), y


def mnist_data():
    import numpy as np
    with gzip.open("data/mnist/train-images.idx3-ubyte.gz") as f:
        _, n, r, c = struct.unpack(">IIII", f.read(16))
        x = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, 1, r, c)
    with gzip.open("data/mnist/train-labels.idx1-ubyte.gz") as f:
        f.read(8)
        y = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    return (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081, y


def pytorch(rep, a):
    import torch
    from torch import nn
    import torch.nn.functional as F
    import gpt_pytorch as g

    dev = torch.device(a.pytorch_device)
    steps = a.pytorch_steps

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    torch.backends.cuda.matmul.allow_tf32 = False  # kiln computes f32 in f32
    torch.backends.cudnn.allow_tf32 = False
    rep.info["torch"] = torch.__version__

    def mlp():
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(),
                             nn.Dropout(0.1), nn.Linear(64, 10))

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

    def rate(model, batches, steps, precision, lr, wd, clip=None, per_sample=1):
        model = model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "f16" and dev.type == "cuda")
        warmup = max(steps // 5, 10)
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                start = time.perf_counter()
            x, y = batches()
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x)
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
        sync()
        return steps * per_sample / (time.perf_counter() - start)

    def sampler(x, y, batch):
        x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        return lambda: (lambda i: (x[i], y[i]))(torch.randint(len(y), (batch,), device=dev))

    dx, dy = digits_data()
    mx, my = mnist_data()
    text = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob("data/shakespeare/*.txt")))
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long, device=dev)

    def blocks(batch):
        def draw():
            ix = torch.randint(len(ids) - g.BLOCK - 1, (batch, 1), device=dev)
            chunk = ids[ix + torch.arange(g.BLOCK + 1, device=dev)]
            return chunk[:, :-1], chunk[:, 1:]
        return draw

    def cnn_job(p, batch, n):
        return lambda: rate(cnn(), sampler(mx, my, batch), n, p, 2e-3, 1e-4, per_sample=batch)

    def gpt_job(p, batch, n):
        return lambda: rate(g.Gpt(len(chars)), blocks(batch), n, p, 1e-3, 0.1, clip=1.0,
                            per_sample=batch * g.BLOCK)

    jobs = []
    if "pytorch" in a.steps:
        jobs.append(("digits-mlp", "f32", 32,
                     lambda: rate(mlp(), sampler(dx, dy, 32), 2 * steps, "f32", 2e-3, 1e-4, per_sample=32)))
        jobs += [("mnist-cnn", p, 64, cnn_job(p, 64, steps)) for p in ["f32", "f16", "bf16"]]
        jobs += [("shakespeare-char", p, g.BATCH, gpt_job(p, g.BATCH, steps)) for p in ["f32", "f16", "bf16"]]
    if "large" in a.steps:
        for p in ["f32", "bf16"]:
            jobs += [("mnist-cnn", p, 512, cnn_job(p, 512, steps // 2)),
                     ("shakespeare-char", p, 128, gpt_job(p, 128, steps // 2))]
    for model, precision, batch, job in jobs:
        torch.manual_seed(0)
        try:
            r = job()
        except Exception as e:  # noqa: BLE001 - a failed baseline is reported, not fatal
            rep.check("pytorch", False, f"{model} {precision} batch {batch}: {e}")
            continue
        rep.row(model, precision, batch)["pytorch_samples_per_second"] = r
        rep.check("pytorch", True, f"{model} {precision} batch {batch}: {r:,.0f} {unit(model)}/s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True, help="the kiln binary built with --features cuda,nccl")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    p.add_argument("--only", default=",".join(STEPS), help="comma-separated steps: " + ",".join(STEPS))
    p.add_argument("--device", default="cuda:0", help="where kiln trains (cpu: a dry run of this script)")
    p.add_argument("--pytorch-device", default="cuda:0", help="where PyTorch runs (cpu: a dry run of this script)")
    p.add_argument("--pytorch-steps", type=int, default=300, help="timed steps per PyTorch model")
    p.add_argument("--step-timeout", type=int, default=150, help="seconds per kiln run")
    p.add_argument("--budget", type=int, default=480, help="seconds for all the kiln runs together")
    a = p.parse_args()
    a.kiln = os.path.abspath(a.kiln)
    steps = [s for s in a.only.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"unknown step(s) {unknown}: use {STEPS}")
    rep = Report(a.out)
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], 30)
    if smi[0] == 0 and smi[1].strip():
        rep.info["gpu"], rep.info["driver"] = [s.strip() for s in smi[1].splitlines()[0].split(",")][:2]
    rep.info["kiln"] = run([a.kiln, "--version"], 30)[1].strip()
    rep.info["date"] = time.strftime("%Y-%m-%d")
    start = time.time()
    a.deadline = start + a.budget
    a.steps = steps
    have_gpu = True
    for step in steps:
        t0 = time.time()
        try:
            if step == "devices":
                have_gpu = devices(rep, a)
            elif step == "pytorch":
                continue  # with the last step, below: one PyTorch pass for every comparison
            elif not have_gpu:
                print(f"-- {step}: skipped, kiln sees no CUDA device", flush=True)
                continue
            elif step == "nccl":
                nccl(rep, a)
            else:
                for spec in KILN_RUNS[step]:
                    kiln_train(rep, a, step, spec)
        except Exception as e:  # noqa: BLE001 - one broken step must not hide the others
            rep.check(step, False, f"{type(e).__name__}: {e}")
        print(f"-- {step}: {time.time() - t0:.0f} s", flush=True)
    if "pytorch" in steps or "large" in steps:
        t0 = time.time()
        try:
            pytorch(rep, a)
        except Exception as e:  # noqa: BLE001
            rep.check("pytorch", False, f"{type(e).__name__}: {e}")
        print(f"-- pytorch: {time.time() - t0:.0f} s", flush=True)
    rep.info["seconds"] = round(time.time() - start)
    rep.write()
    print(rep.markdown())
    sys.exit(0 if rep.checks and all(c["ok"] for c in rep.checks) else 1)


if __name__ == "__main__":
    main()
