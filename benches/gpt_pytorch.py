"""The GPT of `configs/shakespeare_char.toml` trained in plain eager PyTorch: kiln's reference.

    python benches/gpt_pytorch.py [--steps 2000] [--threads 2] [--seed 1337]

The same model, data, split and hyperparameters as the kiln config (nanoGPT's CPU example):
the corpus files of `data/shakespeare/` in name order, a vocabulary of their characters, the
last 10% of the characters held out; 4 pre-norm blocks (4 heads, width 128, no biases, tied
output weights, GELU), GPT-2's initialisation; random blocks of 64 characters, 12 a step;
AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on the linear layers' weights only, as kiln),
100 warm-up steps then a cosine to 1e-4, gradients clipped to norm 1. At the end, the loss over
every non-overlapping block of the held-out text, as `kiln eval --split valid` scores it.

Prints one JSON object: impl, steps, valid_loss, train_tokens_per_second (step time only).
"""
import argparse
import glob
import json
import math
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a spinning pool collapses on 2 shared cores

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BLOCK, BATCH, LAYERS, HEADS, WIDTH = 64, 12, 4, 4, 128
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.attn_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
        self.fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, WIDTH)
        self.wpe = nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()


def lr_at(step, total):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min((step - WARMUP) / max(total - WARMUP, 1), 1.0)
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob("data/shakespeare/*.txt")))
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_valid = round(len(ids) * 0.1)
    train, valid = ids[: len(ids) - n_valid], ids[len(ids) - n_valid :]
    model = Gpt(len(chars))
    decay = [p for n, p in model.named_parameters() if n.endswith(("qkv.weight", "proj.weight", "fc.weight"))]
    rest = [p for n, p in model.named_parameters() if not n.endswith(("qkv.weight", "proj.weight", "fc.weight"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LR, betas=BETAS)
    step_time = 0.0
    for step in range(a.steps):
        start = time.perf_counter()
        ix = torch.randint(len(train) - BLOCK, (BATCH,))
        x = torch.stack([train[i : i + BLOCK] for i in ix])
        y = torch.stack([train[i + 1 : i + BLOCK + 1] for i in ix])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps)
        loss = F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        step_time += time.perf_counter() - start
    model.eval()
    nll, count = 0.0, 0
    starts = list(range(0, len(valid) - BLOCK, BLOCK))
    with torch.no_grad():
        for b in range(0, len(starts), 256):
            s = starts[b : b + 256]
            x = torch.stack([valid[i : i + BLOCK] for i in s])
            y = torch.stack([valid[i + 1 : i + BLOCK + 1] for i in s])
            nll += F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1), reduction="sum").item()
            count += y.numel()
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "steps": a.steps,
        "valid_loss": nll / count,
        "train_tokens_per_second": a.steps * BATCH * BLOCK / step_time,
    }))


if __name__ == "__main__":
    main()
