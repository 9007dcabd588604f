"""This CPU's table for benchmarks/README.md: GEMM peaks, each default-profile network's training speed, FLOPs.

For the machine it runs on: the CPU model and whether it has AMX and AVX-512 BF16; the float32 and
bfloat16 GEMM rate of 1 and 2 threads (2048^3 products, best of 5); for each network of a profile
(figures and phase diagrams) the training images/s of one run on 1 thread as the book runs it (fit's
step: fused SGD, the slides' loss, batches by index) in float32 and under bfloat16 autocast, its
achieved GFLOP/s (6 x weights per image: forward, and backward for activations and weights) and the
fraction of the 1-thread GEMM peak of that precision; and the profile's total training FLOPs.
Writes benchmarks/results/cpu-<model>-<date>.json beside printing the Markdown tables.

    python benchmarks/bench_cpu.py [--profile default] [--steps 200]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import time
from pathlib import Path

import torch

from ncpaper.models import make_model
from ncpaper.profiles import load_profile, section_configs
from ncpaper.train import sgd, sgd_step

INPUTS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def cpu_model() -> dict:
    """Model name and the flags that matter for bf16 arithmetic (from /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.*)", text)
    flag_line = re.search(r"flags\s*:\s*(.*)", text)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    return {"model": name.group(1).strip() if name else platform.processor(), "amx": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "avx512f": "avx512f" in flags}


def gemm_gflops(threads: int, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(f) -> float:
    tic = time.perf_counter()
    f()
    return time.perf_counter() - tic


def input_shape(config) -> tuple[int, int, int]:
    """The network's input: the dataset's images after ``config.input_pool``."""
    channels, height, width = INPUTS[config.dataset]
    return channels, height // config.input_pool, width // config.input_pool


def synthetic_run(config):
    """(model, optimizer, x, one-hot targets): ``config``'s network with fit's optimiser, and random balanced
    data of its training set's size."""
    torch.manual_seed(0)
    model = make_model(config.model, input_shape(config), 10, **config.sizes)
    n = config.n_per_class * 10
    x, targets = torch.randn(n, *input_shape(config)), torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
    return model, sgd(model.parameters(), config), x, targets


def network_speed(config, precision: str, steps: int, seconds: float = 3.0) -> float:
    """Training images/s of ``config``'s network on random data, fit's step, 1 thread (best of 3 blocks of at
    most ``steps`` steps and about ``seconds``)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model, optimizer, x, targets = synthetic_run(config)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else None

    def block(count):
        for _ in range(count):
            idx = torch.randint(0, len(x), (config.batch_size,))
            sgd_step(model, optimizer, x[idx], targets[idx], autocast)

    per_step = _timed(lambda: block(5)) / 5  # warm-up, and the step count for blocks of about `seconds`
    count = max(3, min(steps, int(seconds / per_step)))
    return config.batch_size * count / min(_timed(lambda: block(count)) for _ in range(3))


def weights(config) -> int:
    return sum(p.numel() for p in make_model(config.model, input_shape(config), 10, **config.sizes).parameters())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    cpu = cpu_model()
    peaks = {f"{dtype}_{threads}t": gemm_gflops(threads, getattr(torch, dtype))
             for dtype in ("float32", "bfloat16") for threads in (1, 2)}
    print(f"**{cpu['model']}** (AMX {'yes' if cpu['amx'] else 'no'}, AVX-512 BF16 "
          f"{'yes' if cpu['avx512_bf16'] else 'no'}), torch {torch.__version__}, {datetime.date.today()}\n")
    print("| GEMM 2048^3 | 1 thread GFLOP/s | 2 threads GFLOP/s |\n| --- | --- | --- |")
    for dtype in ("float32", "bfloat16"):
        print(f"| {dtype} | {peaks[f'{dtype}_1t']:.3g} | {peaks[f'{dtype}_2t']:.3g} |")
    print("\n| part | network | batch | MFLOP/image | runs | TFLOP | fp32 images/s | fp32 GFLOP/s (of peak) "
          "| bf16 images/s | bf16 GFLOP/s (of peak) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows, total = [], 0.0
    spec = load_profile(args.profile)
    for section in ("figures", "phase"):
        for name in spec.get(section, {}):
            configs = section_configs(args.profile, section, name)
            c = configs[0]
            mflop = 6 * weights(c) / 1e6
            tflop = sum(mflop * 1e6 * x.n_per_class * 10 * x.epochs for x in configs) / 1e12
            total += tflop
            rates = {p: network_speed(c, p, args.steps) for p in ("float32", "bfloat16")}
            gflops = {p: r * mflop / 1e3 for p, r in rates.items()}
            pooled = f", {c.input_pool}x{c.input_pool} pooled" if c.input_pool > 1 else ""
            rows.append({"part": f"{section} {name}", "network": c.architecture() + pooled, "batch": c.batch_size,
                         "mflop_per_image": mflop, "runs": len(configs), "tflop": tflop,
                         **{f"{p}_images_per_s": r for p, r in rates.items()},
                         **{f"{p}_gflops": g for p, g in gflops.items()}})
            print(f"| {section} {name} | {c.architecture()}{pooled} | {c.batch_size} | {mflop:.2f} | {len(configs)} "
                  f"| {tflop:.1f} | {rates['float32']:,.0f} | {gflops['float32']:.0f} "
                  f"({gflops['float32'] / peaks['float32_1t']:.0%}) | {rates['bfloat16']:,.0f} | "
                  f"{gflops['bfloat16']:.0f} ({gflops['bfloat16'] / peaks['bfloat16_1t']:.0%}) |")
    print(f"\nProfile '{args.profile}': {total:.1f} TFLOP of training in all.")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", cpu["model"].lower()).strip("-")
    path = out / f"cpu-{slug}-{datetime.date.today()}.json"
    path.write_text(json.dumps({"cpu": cpu, "torch": torch.__version__, "profile": args.profile, "gemm_gflops": peaks,
                                "networks": rows, "total_tflop": total}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
