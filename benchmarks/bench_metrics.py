"""NC measurement: ncpaper's streaming float64 metrics against the usual way of public NC code.

The baseline follows the Papyan-Han-Donoho notebook style: class means in a first pass; in a second
pass, per class and per batch, the within-class covariance as a sum of per-sample outer products
(B x p x p); NC1 through ``scipy.linalg.pinv`` of the p x p Sigma_B. Both run on the same features,
fed in batches of 1,024, on the CPU.

    python benchmarks/bench_metrics.py   # N = 50,000, p = 512, C = 10; N = 10,000, p = 2,048, C = 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.linalg
import torch

from ncpaper.metrics import neural_collapse_streaming


def baseline_nc1(batches, weights, num_classes, dim):
    """Per-class outer products and a p x p pseudo-inverse, as in the public NC notebooks."""
    means = torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for h, y in batches():
        for c in range(num_classes):
            members = h[y == c].double()
            means[c] += members.sum(0)
            counts[c] += len(members)
    means /= counts.unsqueeze(1)
    sigma_w = torch.zeros(dim, dim, dtype=torch.float64)
    for h, y in batches():
        for c in range(num_classes):
            z = h[y == c].double() - means[c]
            sigma_w += torch.matmul(z.unsqueeze(-1), z.unsqueeze(1)).sum(0)
    sigma_w /= counts.sum()
    centred = means - means.mean(0)
    sigma_b = centred.T @ centred / num_classes
    return float(np.trace(sigma_w.numpy() @ scipy.linalg.pinv(sigma_b.numpy())) / num_classes)


def make_features(n, dim, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(num_classes, dim, generator=g)
    # balanced, as the theory assumes (public NC code centres at the mean of class means, equal only then)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    h = (means[y] + torch.randn(n, dim, generator=g)).relu()  # non-negative, like ReLU features
    return h.float(), y, torch.randn(num_classes, dim, generator=g)


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), value


def batched(h, y, size, limit=None):
    """A callable returning a fresh iterator of (features, labels) batches over the first `limit` rows."""
    end = len(y) if limit is None else limit
    return lambda: ((h[i:min(i + size, end)], y[i:min(i + size, end)]) for i in range(0, end, size))


def bench_case(n, dim, c, batch, repeats):
    h, y, w = make_features(n, dim, c)
    batches = batched(h, y, batch)
    ours_s, ours = timed(lambda: neural_collapse_streaming(batches, w, c, dim), repeats)
    base_s, base = timed(lambda: baseline_nc1(batches, w, c, dim), max(1, repeats - 2))
    state_mb = (dim * dim + c * dim + c) * 8 / 2**20  # S_W, class means, counts: independent of N
    rel = abs(ours["nc1"] - base) / abs(base)
    return (f"| {n:,} | {dim:,} | {c} | {base_s:.2f} | {ours_s:.3f} | {base_s / ours_s:.0f}x | {rel:.1e} | "
            f"{state_mb:.1f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--large-n", type=int, default=10_000, help="N for C = 100, p = 2,048 (the baseline is slow)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| N | p | C | baseline s | ncpaper s | speed-up | NC1 relative difference | ncpaper state MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, dim, c in [(50_000, 512, 10), (args.large_n, 2048, 100)]:
        print(bench_case(n, dim, c, args.batch, args.repeats))


if __name__ == "__main__":
    main()
