#!/usr/bin/env python3
"""Sweep samplers and pruning on a fixed search space, in one run: kiln's TPE against kiln's
random search at equal trial budgets over several sweep seeds, TPE with median pruning against
TPE without, and Optuna's TPE on the same space and budget (when optuna is installed).

    cargo build --release --features mpi
    python3 benches/sweep_search.py [--seeds 5] [--trials 40] [--out benches/results/sweep_search.md]

The space (5 parameters) searches the digits MLP trained for 5 epochs (30% of the rows validating): optim.lr and
optim.weight_decay (log-uniform), model.hidden and train.batch_size (choices), model.dropout
(uniform); the objective is the validation accuracy (539 images). For each sampler it reports
the median over seeds of the best accuracy after 10, 20 and 40 trials; for TPE, the trials it
needs to reach random search's median 40-trial best. Pruning is measured on random search, whose
trials are the same with and without a pruner (TPE's depend on what was pruned): the optimizer
steps saved over all trials and the cost in best accuracy; TPE with and without pruning is shown
too.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "digits_mlp.toml"
FIXED = ["train.epochs=5", "data.split.valid=0.3", "train.log_every=100000"]
SPACE = """
[space]
"optim.lr" = { log_uniform = [1e-5, 1e-1] }
"optim.weight_decay" = { log_uniform = [1e-6, 1e-1] }
"model.hidden" = { choice = [[16], [64], [128, 64], [256, 128]] }
"model.dropout" = { uniform = [0.0, 0.6] }
"train.batch_size" = { choice = [16, 32, 64, 128] }
"""
HIDDEN = [[16], [64], [128, 64], [256, 128]]


def kiln_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "kiln")


def kiln_sweep(work, sampler, pruner, seed, trials):
    """Best-so-far curve and total steps of one kiln sweep."""
    spec = work / f"{sampler}-{pruner}-{seed}.toml"
    spec.write_text(
        f'base = "{BASE}"\nmetric = "valid/accuracy"\nsampler = "{sampler}"\n'
        f'pruner = "{pruner}"\ntrials = {trials}\nseed = {seed}\nset = {json.dumps(FIXED)}\n'
        + SPACE
    )
    out = subprocess.run(
        [kiln_binary(), "sweep", str(spec), "--registry", str(work / "registry"), "--json"],
        check=True, capture_output=True, text=True,
    )
    s = json.loads(out.stdout)
    trials_ = sorted(s["trials"], key=lambda t: t["number"])
    return curve([t["value"] if t["status"] == "completed" else None for t in trials_]), sum(
        t["steps"] for t in trials_
    )


def optuna_sweep(work, seed, trials):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    registry = work / "optuna-registry"

    def objective(trial):
        sets = FIXED + [
            f"optim.lr={trial.suggest_float('lr', 1e-5, 1e-1, log=True)}",
            f"optim.weight_decay={trial.suggest_float('wd', 1e-6, 1e-1, log=True)}",
            f"model.hidden={HIDDEN[trial.suggest_categorical('hidden', [0, 1, 2, 3])]}",
            f"model.dropout={trial.suggest_float('dropout', 0.0, 0.6)}",
            f"train.batch_size={trial.suggest_categorical('batch', [16, 32, 64, 128])}",
        ]
        cmd = [kiln_binary(), "train", str(BASE), "--registry", str(registry), "--json"]
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)["metrics"]["valid"]["accuracy"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return curve([t.value for t in study.trials])


def curve(values):
    best, out = float("-inf"), []
    for v in values:
        if v is not None:
            best = max(best, v)
        out.append(best)
    return out


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-optuna", action="store_true")
    args = ap.parse_args()
    started = time.time()
    curves = {"random": [], "random+median": [], "tpe": [], "tpe+median": [], "optuna tpe": []}
    steps = {k: [] for k in curves}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            for name, sampler, pruner in [
                ("random", "random", "none"),
                ("random+median", "random", "median"),
                ("tpe", "tpe", "none"),
                ("tpe+median", "tpe", "median"),
            ]:
                c, n = kiln_sweep(work, sampler, pruner, seed, args.trials)
                curves[name].append(c)
                steps[name].append(n)
                print(f"seed {seed} {name:<11} best@10 {c[9]:.4f} @20 {c[19]:.4f} @{args.trials} {c[-1]:.4f} steps {n}", flush=True)
            if not args.no_optuna:
                try:
                    c = optuna_sweep(work, seed, args.trials)
                    curves["optuna tpe"].append(c)
                    print(f"seed {seed} optuna tpe  best@10 {c[9]:.4f} @20 {c[19]:.4f} @{args.trials} {c[-1]:.4f}", flush=True)
                except ImportError:
                    print("optuna is not installed: pip install optuna (skipped)")
                    args.no_optuna = True
    at = [k for k in (10, 20, args.trials) if k <= args.trials]
    med = lambda xs: statistics.median(xs)
    lines = [
        f"# Sweep samplers and pruning: digits MLP, 5 epochs, 5 parameters",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()} ({os.cpu_count()} cores), "
        f"{args.seeds} sweep seeds x {args.trials} trials, one run of `python3 benches/sweep_search.py` "
        f"({(time.time() - started) / 60:.0f} min). Median over seeds of the best validation accuracy so far.",
        "",
        "| sampler | " + " | ".join(f"after {k}" for k in at) + " |",
        "|---|" + "---|" * len(at),
    ]
    for name, cs in curves.items():
        if cs:
            lines.append(f"| {name} | " + " | ".join(f"{med([c[k - 1] for c in cs]):.4f}" for k in at) + " |")
    target = med([c[-1] for c in curves["random"]])
    def reach(c):
        return next((i + 1 for i, v in enumerate(c) if v >= target), None)
    needed = [reach(c) for c in curves["tpe"]]
    shown = [str(n) if n else f">{args.trials}" for n in needed]
    median_needed = med([n if n else args.trials + 1 for n in needed])
    lines += [
        "",
        f"Random search's median {args.trials}-trial best: {target:.4f}. Trials kiln's TPE needed to reach it, "
        f"per seed: {', '.join(shown)} (median {median_needed:g}; target: at most 20).",
    ]
    for base in ["random", "tpe"]:
        pruned = base + "+median"
        saved = 1 - sum(steps[pruned]) / sum(steps[base])
        cost = 100 * (med([c[-1] for c in curves[base]]) - med([c[-1] for c in curves[pruned]]))
        worst = 100 * max(a[-1] - b[-1] for a, b in zip(curves[base], curves[pruned]))
        lines.append(
            f"Median pruning on {base}: {sum(steps[pruned])} optimizer steps against {sum(steps[base])} "
            f"without, {100 * saved:.0f}% saved (target: at least 40%); the median best accuracy "
            f"{cost:.2f} points lower with pruning, at worst {worst:.2f} on one seed (target: at most 0.5)."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
