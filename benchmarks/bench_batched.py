"""The weight decays of a figure trained together (one vmapped model) against one after another.

For each network of the default profile's figures (and the paper profile's), trains the figure's
three lambdas for a few epochs both ways from the same initialisation and data, and reports images
per second summed over the three networks, and how far apart the trained weights end up.

    NCPAPER_DATA=../shared/data python benchmarks/bench_batched.py [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch

from ncpaper import data
from ncpaper.batched import train_together
from ncpaper.profiles import figure_configs
from ncpaper.train import fit


def compare(profile: str, figure: str, epochs: int, repeats: int, n_per_class: int | None) -> dict:
    configs = figure_configs(profile, figure)
    n = n_per_class or configs[0].n_per_class
    configs = [replace(c, epochs=epochs, n_per_class=n, n_test_per_class=None, n_measurements=1) for c in configs]
    train = data.load(figure, "train", n, 0)
    together, apart, gap = [], [], 0.0
    for _ in range(repeats):
        models, timings = train_together(configs, train)
        together.append(timings["images_per_second"])
        seconds = 0.0
        for config, model in zip(configs, models, strict=True):
            _, reference, t = fit(config, train)
            seconds += t["train_seconds"]
            with torch.no_grad():
                gap = max(gap, max(float((a - b).norm() / b.norm())
                                   for a, b in zip(model.parameters(), reference.parameters(), strict=True)))
        apart.append(len(configs) * len(train.y) * epochs / seconds)
    return {"profile": profile, "figure": figure, "network": configs[0].architecture(), "images": len(train.y),
            "together": statistics.median(together), "apart": statistics.median(apart), "gap": gap}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [compare("default", "mnist", args.epochs, args.repeats, None),
            compare("default", "cifar10", args.epochs, args.repeats, None),
            compare("paper", "mnist", max(1, args.epochs // 10), 1, 1000),
            compare("paper", "cifar10", max(1, args.epochs // 10), 1, 1000)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; images/s summed over the 3 lambdas")
    print("| profile | data | network | images | together (vmap) | one after another | ratio | weights rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['profile']} | {r['figure']} | {r['network']} | {r['images']:,} | {r['together']:,.0f} | "
              f"{r['apart']:,.0f} | {r['together'] / r['apart']:.2f}x | {r['gap']:.1e} |")


if __name__ == "__main__":
    main()
