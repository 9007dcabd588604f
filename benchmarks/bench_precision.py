"""bfloat16 autocast against float32 training: images per second at full scale, and NC values.

Speed: the paper profile's networks on their full training sets, a few epochs each way.
Values: the default profile's Figures 1-2 trained in both precisions (float32 runs come from the
result cache when the book was built); NC1 and NC3 at the last epoch compared run by run.
Measurements are float32/float64 in both: only the forward pass of training runs in bfloat16.

    NCPAPER_DATA=../shared/data python benchmarks/bench_precision.py [--part speed|values|both]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ncpaper import data
from ncpaper.profiles import figure_configs
from ncpaper.sweep import run_sweep
from ncpaper.train import fit


def speed(epochs: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {epochs} epochs, paper profile networks")
    print("| data | network | images | float32 images/s | bfloat16 images/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for figure in ("mnist", "cifar10"):
        config = figure_configs("paper", figure)[1]
        train = data.load(figure, "train", config.n_per_class, config.seed)
        rates = {}
        for precision in ("float32", "bfloat16"):
            short = replace(config, epochs=epochs, n_measurements=1, precision=precision, n_test_per_class=None)
            rates[precision] = fit(short, train)[2]["images_per_second"]
        print(f"| {figure} | {config.architecture()} | {len(train.y):,} | {rates['float32']:,.0f} | "
              f"{rates['bfloat16']:,.0f} | {rates['bfloat16'] / rates['float32']:.2f}x |")


def values(workers: int) -> None:
    print("| data | λ | NC1 float32 | NC1 bfloat16 | rel. diff | NC3 float32 | NC3 bfloat16 | rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for figure in ("cifar10", "mnist"):
        configs = figure_configs("default", figure)
        f32 = run_sweep(configs, workers=workers, progress=False)
        b16 = run_sweep([replace(c, precision="bfloat16") for c in configs], workers=workers, progress=False)
        for a, b in zip(f32, b16, strict=True):
            cells = []
            for metric in ("nc1", "nc3"):
                x, y = float(a.last[metric]), float(b.last[metric])
                worst = max(worst, abs(y - x) / x) if a.config.weight_decay > 0 else worst
                cells += [f"{x:.4g}", f"{y:.4g}", f"{(y - x) / x:+.1%}"]
            print(f"| {figure} | {a.config.weight_decay:g} | " + " | ".join(cells) + " |")
    print(f"\nlargest relative difference with weight decay: {worst:.1%}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["speed", "values", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.part in ("speed", "both"):
        speed(args.epochs)
    if args.part in ("values", "both"):
        values(args.workers)


if __name__ == "__main__":
    main()
