"""Fits the rational approximation of erf that kernels/src/vmath.rs uses.

    python3 scripts/fit_erf.py

erf(x) ~ x P(x^2) / Q(x^2) on [0, 4] (erf is odd; beyond 4 it is 1 in f32), P of degree 5 and Q
of degree 5 in x^2 with Q(0) = 1, by linearised least squares on the relative error, reweighted
by 1/Q a few times (Loeb's iteration). Prints the coefficients rounded to f32 and the largest
error of the f32 evaluation (Horner, as the kernel does) against math.erf. Needs numpy.
"""
import math

import numpy as np

NUM, DEN = 6, 5


def fit(xs, ys, iters=8):
    z = xs**2
    w = np.ones_like(xs)
    for _ in range(iters):
        cols = [xs * z**i for i in range(NUM)] + [-ys * z**j for j in range(1, DEN + 1)]
        a = np.stack(cols, 1) * (w / ys)[:, None]
        c, *_ = np.linalg.lstsq(a, w, rcond=None)
        p, q = c[:NUM], np.concatenate([[1.0], c[NUM:]])
        w = 1 / np.abs(sum(q[j] * z**j for j in range(DEN + 1)))
    return p.astype(np.float32), q.astype(np.float32)


def evaluate(p, q, x):
    x = np.clip(x.astype(np.float32), -4, 4)
    z = x * x
    pp, qq = p[-1], q[-1]
    for k in range(len(p) - 2, -1, -1):
        pp = pp * z + p[k]
        qq = qq * z + q[k]
    return x * pp / qq


def main():
    xs = np.linspace(0, 4, 40001)[1:]
    ys = np.array([math.erf(x) for x in xs])
    p, q = fit(xs, ys)
    print("P =", [float(v) for v in p])
    print("Q =", [float(v) for v in q])
    t = np.linspace(-6, 6, 300001).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in t])
    print("largest absolute error:", float(np.abs(evaluate(p, q, t) - ref).max()))


if __name__ == "__main__":
    main()
