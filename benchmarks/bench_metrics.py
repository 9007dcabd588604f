"""NC measurement: ncpaper's streaming float64 metrics against the usual way of public NC code.

The baseline follows the Papyan-Han-Donoho notebook style: class means in a first pass; in a second
pass, per class and per batch, the within-class covariance as a sum of per-sample outer products
(B x p x p); NC1 through ``scipy.linalg.pinv`` of the p x p Sigma_B. Both run on the same features,
fed in batches of 1,024, on the CPU.

    python benchmarks/bench_metrics.py   # N = 50,000, p = 512, C = 10; N = 10,000, p = 2,048, C = 100
    python benchmarks/bench_metrics.py --measure   # one whole measurement (ncpaper.measure.measure) of a network
    python benchmarks/bench_metrics.py --against fb215c8 [--measure]   # also time ncpaper at that commit

``--measure`` times :func:`ncpaper.measure.measure` (every column of a metrics.csv row, training and test
set) on freshly initialised networks of the profiles' sizes and random balanced inputs. ``--against``
extracts ``ncpaper/`` at a commit (``git archive``) and times it beside today's, alternating the two in
every repeat so that both see the same load.
"""

from __future__ import annotations

import argparse
import importlib
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

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


def ncpaper_at(commit: str):
    """The ``ncpaper`` package as it was at ``commit`` (or as copied into the folder ``commit``/ncpaper),
    imported as ``ncpaper_<name>``."""
    folder = Path(tempfile.mkdtemp(prefix="ncpaper-bench-"))
    if (Path(commit) / "ncpaper").is_dir():  # an extracted copy, for a machine without the git history
        shutil.copytree(Path(commit) / "ncpaper", folder / "ncpaper")
        commit = Path(commit).name
    else:
        root = Path(__file__).resolve().parents[1]
        archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit, "ncpaper"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    name = f"ncpaper_{commit[:10]}"
    (folder / "ncpaper").rename(folder / name)
    sys.path.insert(0, str(folder))
    for module in ("metrics", "measure"):
        importlib.import_module(f"{name}.{module}")
    return importlib.import_module(name)


def timed_pair(first, second, repeats):
    """Median seconds of two callables, alternated in every repeat; and their last values."""
    times, values = ([], []), [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            tic = time.perf_counter()
            values[k] = fn()
            times[k].append(time.perf_counter() - tic)
    return statistics.median(times[0]), statistics.median(times[1]), values


def bench_case(n, dim, c, batch, repeats, before=None):
    h, y, w = make_features(n, dim, c)
    batches = batched(h, y, batch)
    ours_s, ours = timed(lambda: neural_collapse_streaming(batches, w, c, dim), repeats)
    base_s, base = timed(lambda: baseline_nc1(batches, w, c, dim), max(1, repeats - 2))
    state_mb = (c * dim + 2 * c + dim * (c - 1)) * 8 / 2**20  # means, counts, sums of squares, span basis
    rel = abs(ours["nc1"] - base) / abs(base)
    line = f"| {n:,} | {dim:,} | {c} | {base_s:.2f} | "
    if before is not None:
        old = before.metrics.neural_collapse_streaming
        before_s, ours_s, (old_value, _) = timed_pair(lambda: old(batches, w, c, dim),
                                                       lambda: neural_collapse_streaming(batches, w, c, dim), repeats)
        line += (f"{before_s:.3f} ({base_s / before_s:.0f}x) | "
                 f"{abs(old_value['nc1'] - base) / abs(base):.1e} | ")
    return line + f"{ours_s:.3f} | {base_s / ours_s:.0f}x | {rel:.1e} | {state_mb:.2f} |"


MEASURE_CASES = [  # (label, input shape, hidden widths, training images, test images)
    ("default MNIST", (1, 28, 28), [512, 512], 1_000, 1_000),
    ("default CIFAR-10", (3, 32, 32), [512, 512, 512], 1_000, 1_000),
    ("paper CIFAR-10", (3, 32, 32), [512, 512, 512], 50_000, 10_000),
]


def bench_measure(repeats, before=None):
    from ncpaper.data import LabelledImages
    from ncpaper.measure import measure
    from ncpaper.models import make_model

    def split(n, shape, seed):
        g = torch.Generator().manual_seed(seed)
        return LabelledImages(torch.randn(n, *shape, generator=g), torch.arange(n) % 10,
                              tuple(str(c) for c in range(10)))

    if before is None:
        print("| network | training + test images | measure s | columns |")
        print("| --- | --- | --- | --- |")
    else:
        print("| network | training + test images | before s | columns | now s | columns | now / before |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, shape, widths, n_train, n_test in MEASURE_CASES:
        torch.manual_seed(0)
        model = make_model("mlp", shape, 10, widths=widths)
        train, test = split(n_train, shape, 1), split(n_test, shape, 2)
        measure(model, train, test, 1e-3, 4096)  # warm-up (first linear-algebra calls, allocator)
        now = lambda: measure(model, train, test, 1e-3, 4096)  # noqa: B023, E731
        line = f"| {label}, MLP {'-'.join(map(str, widths))} | {n_train:,} + {n_test:,} | "
        if before is None:
            seconds, row = timed(now, repeats)
            print(line + f"{seconds:.3f} | {len(row)} |")
        else:
            old = lambda: before.measure.measure(model, train, test, 1e-3, 4096)  # noqa: B023, E731
            old()
            old_s, now_s, (old_row, row) = timed_pair(old, now, repeats)
            print(line + f"{old_s:.3f} | {len(old_row)} | {now_s:.3f} | {len(row)} | {now_s / old_s:.2f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", action="store_true", help="time one whole measurement instead")
    parser.add_argument("--against", metavar="COMMIT", help="also time ncpaper as it was at this git commit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--large-n", type=int, default=10_000, help="N for C = 100, p = 2,048 (the baseline is slow)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    before = ncpaper_at(args.against) if args.against else None
    if args.measure:
        bench_measure(args.repeats, before)
        return
    then = f"{args.against} s (speed-up) | {args.against} NC1 rel. diff. | " if before else ""
    print(f"| N | p | C | baseline s | {then}ncpaper s | speed-up | NC1 relative difference | ncpaper state MB |")
    print("| --- | --- | --- | --- |" + " --- |" * (6 if before else 4))
    for n, dim, c in [(50_000, 512, 10), (args.large_n, 2048, 100)]:
        print(bench_case(n, dim, c, args.batch, args.repeats, before))


if __name__ == "__main__":
    main()
