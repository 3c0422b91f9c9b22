#!/usr/bin/env python3
"""The expected variational gradient of VSMD (critical, κ = 1, γ = 2, constant β = 10) and VSDM (diagonal,
power schedule 0.1 → 10, r = 1.7) on Gaussian data N(0, s²) per coordinate with the exact score, computed from
second moments (no sampling): the reverse Euler–Maruyama chain's covariance is propagated step by step.

For each parameter value it prints dL/dc (or dL/da) at c = c_k, ζ = 1, divided by W = Σ g²h:
  plain    trajectories from N(0, I), `steps` EM steps (what the official codes estimate)
  paired   the same minus the same chain started from the forward marginal at T (TrajectoryStats::with_reference)
  exact    plain with 3,000 steps (the continuous-time value)
The stochastic approximation moves c against the sign; a root where the gradient rises through 0 is its fixed
point. Usage: python3 scripts/analysis/c_gradient_bias.py [steps]   (needs numpy; docs/results/shapes-budget.md)
       python3 scripts/analysis/c_gradient_bias.py roots   (VSDM's fixed points at 25/50/100 steps,
       docs/results/timeseries.md)
       python3 scripts/analysis/c_gradient_bias.py image   (the image VSDM's per-pixel fixed points at ζ = 1 and
       0.75, docs/results/image.md)
"""
import sys

import numpy as np

GAM, BETA, T, EPS = 2.0, 10.0, 1.0, 1e-3


def momentum_F(c):
    g = GAM * (1 - 2 * c)
    return 0.5 * BETA * np.array([[0.0, 1.0], [-g * g / 4, -g]])


def forward_cov(F, q, s0, times):
    """Lyapunov equation dΣ/dt = FΣ + ΣFᵀ + Q by RK4, at each of `times` (ascending walk)."""
    out, s, t = {}, s0.copy(), 0.0
    f = lambda s: F @ s + s @ F.T + q
    for tt in sorted(set(times)):
        n = max(1, int(np.ceil((tt - t) / 1e-4)))
        h = (tt - t) / n
        for _ in range(n):
            k1 = f(s); k2 = f(s + h / 2 * k1); k3 = f(s + h / 2 * k2); k4 = f(s + h * k3)
            s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t, out[tt] = tt, s.copy()
    return out


def momentum_grad(c, s2, steps, start):
    times = list(np.linspace(T, EPS, steps + 1))
    F, q = momentum_F(c), np.diag([0.0, GAM * BETA])
    sp = forward_cov(F, q, np.diag([s2, 1.0]), times)
    sq = sp[times[0]].copy() if start == "model" else np.eye(2)
    g = w = 0.0
    for n in range(steps):
        t, h = times[n], times[n] - times[n + 1]
        r = -np.linalg.inv(sp[t])[1]  # s_v = r·z
        e = r @ sq
        wb = GAM * BETA * h
        g += wb * (1 + e[1] + (1 - 2 * c) * e[0])
        w += wb
        m = np.eye(2) - h * F + h * GAM * BETA * np.outer([0, 1], r)
        sq = m @ sq @ m.T + np.diag([0.0, GAM * BETA * h])
    return g / w


def vsdm_grad(a, s2, steps, start):
    beta = lambda t: 0.1 + (t / T) ** 1.7 * 9.9
    big_b = lambda t: 0.1 * t + 9.9 * t ** 2.7 / 2.7
    d = 1 - 2 * a
    var = lambda t: np.exp(-big_b(t) * d) * s2 + (1 - np.exp(-big_b(t) * d)) / d
    times = np.linspace(T, EPS, steps + 1)
    q = var(T) if start == "model" else 1.0
    g = w = 0.0
    for n in range(steps):
        t, h = times[n], times[n] - times[n + 1]
        b, p = beta(t), var(t)
        g += h * b * (1 - q / p)
        w += h * b
        m = 1 + h * 0.5 * b * d - h * b / p
        q = m * m * q + b * h
    return g / w


def table(name, fn, values, variances, steps):
    print(f"## {name}: gradient / W at {steps} EM steps")
    for s2 in variances:
        print(f"data variance {s2}")
        for v in values:
            plain = fn(v, s2, steps, "I")
            paired = plain - fn(v, s2, steps, "model")
            exact = fn(v, s2, 3000, "I")
            print(f"  {v:+.2f}  plain {plain:+.4f}  paired {paired:+.4f}  exact {exact:+.4f}")


def root(f, lo=-0.45, hi=0.45):
    """The sign change of f in [lo, hi] by bisection (None if f has one sign there)."""
    flo = f(lo)
    if flo * f(hi) > 0:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        fm = f(mid)
        if fm * flo > 0:
            lo, flo = mid, fm
        else:
            hi = mid
    return (lo + hi) / 2


def vsdm_roots():
    print("## VSDM a: fixed point of the stochastic approximation (root of the gradient, zeta = 1)")
    for steps in [25, 50, 100]:
        for s2 in [0.25, 1.0, 4.4]:
            plain = root(lambda a: vsdm_grad(a, s2, steps, "I"))
            paired = root(lambda a: vsdm_grad(a, s2, steps, "I") - vsdm_grad(a, s2, steps, "model"))
            exact = root(lambda a: vsdm_grad(a, s2, 3000, "I"))
            print(f"  {steps:3d} steps, data variance {s2}: plain {plain:+.4f}  paired {paired:+.4f}  exact {exact:+.4f}")


def image_roots():
    """Per-pixel a of the image VSDM (power schedule 0.1 → 10, r = 1.7) at ζ = 1 and the image default 0.75,
    for the CPU default's 20 trajectory steps and the paper scale's 100; pixels taken as independent centred
    Gaussians (CIFAR-10's per-pixel variance in [−1, 1] is 0.19–0.40, mean 0.24). ζ adds (ζ − 1) to the
    gradient / W."""
    print("## image VSDM a per pixel: root of the gradient (plain, paired, exact = 3,000 steps)")
    for zeta in [1.0, 0.75]:
        for steps in [20, 100]:
            for s2 in [0.25, 1.0]:
                push = zeta - 1
                plain = root(lambda a: vsdm_grad(a, s2, steps, "I") + push, -2, 0.49)
                paired = root(lambda a: vsdm_grad(a, s2, steps, "I") - vsdm_grad(a, s2, steps, "model") + push, -2, 0.49)
                exact = root(lambda a: vsdm_grad(a, s2, 3000, "I") + push, -2, 0.49)
                print(f"  zeta {zeta}, {steps:3d} steps, data variance {s2}: plain {plain:+.4f}  paired {paired:+.4f}  exact {exact:+.4f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["roots"]:
        vsdm_roots()
    elif sys.argv[1:] == ["image"]:
        image_roots()
        sys.exit()
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    table("VSMD c", momentum_grad, [-0.6, -0.3, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2], [1.0, 4.4, 348.0], steps)
    table("VSDM a", vsdm_grad, [-0.3, -0.1, 0.0, 0.1, 0.2, 0.4], [1.0, 4.4, 348.0], steps)
