"""What each arm of the ``alternatives`` profile cost: run-seconds from the published runs' own timings.

Reads ``published/alternatives/*/meta.json`` (each run records its wall, training and measurement seconds, its device
and CPU model) and prints a Markdown table per arm and dataset: runs, epochs, the sum and the median of the runs'
wall times, and the training images per second. Runs trained side by side (``--workers 2``) each count their own
wall time, so the sum is core-seconds, about twice the sweep's wall time on 2 cores.

    python benchmarks/arm_costs.py [--profile alternatives]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def arm(config: dict) -> str:
    if config.get("model") == "convnet":
        return "D. ConvNet"
    if config.get("loss") == "cross_entropy":
        return "C. cross-entropy"
    if 0 < config["weight_decay"] < 0.0028:
        return "B. small λ"
    return "A. implicit bias"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="alternatives")
    args = parser.parse_args()
    groups: dict = {}
    machines = set()
    for path in sorted((REPO / "published" / args.profile).glob("*/meta.json")):
        meta = json.loads(path.read_text())
        config, timings = meta["config"], meta["timings"]
        machines.add((meta.get("cpu", "unknown"), meta.get("device", "unknown")))
        key = (arm(config), config["dataset"], config["epochs"])
        groups.setdefault(key, []).append((timings["wall_seconds"], timings.get("images_per_second", float("nan"))))
    print("| arm | data | epochs | runs | run-seconds (sum) | median s per run | images/s (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    total = 0.0
    for (name, dataset, epochs), runs in sorted(groups.items()):
        walls = [w for w, _ in runs]
        total += sum(walls)
        print(f"| {name} | {dataset} | {epochs:,} | {len(runs)} | {sum(walls):,.0f} | {statistics.median(walls):,.1f} "
              f"| {statistics.median(r for _, r in runs):,.0f} |")
    print(f"\nAll: {total:,.0f} run-seconds ({total / 3600:.2f} run-hours). Machines: "
          + "; ".join(f"{cpu} ({device})" for cpu, device in sorted(machines)))


if __name__ == "__main__":
    main()
