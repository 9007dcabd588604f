"""torch.compile (inductor, CPU) on the default profile's training step, against eager.

For each network of a profile: the first-call (compile) time and the steady step time of
``torch.compile(model)`` and of the eager model, fit's step otherwise (fused SGD, the slides' loss),
1 thread, random data. A run of the book trains in a fresh worker, so compile time is paid per run
unless inductor's cache on disk is warm (the second column measures a warm cache: the same process
compiles the same graph again after ``torch._dynamo.reset()``).

    python benchmarks/bench_compile.py [--profile default] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_cpu import synthetic_run

from ncpaper.profiles import load_profile, section_configs
from ncpaper.train import sgd_step


def step_times(config, compiled: bool, steps: int) -> tuple[float, float]:
    """(seconds of the first step, steady seconds per step) for ``config``'s network."""
    model, optimizer, x, targets = synthetic_run(config)
    forward = torch.compile(model) if compiled else model

    def step():
        idx = torch.randint(0, len(x), (config.batch_size,))
        sgd_step(forward, optimizer, x[idx], targets[idx])

    tic = time.perf_counter()
    step()
    first = time.perf_counter() - tic
    for _ in range(10):
        step()
    best = float("inf")
    for _ in range(3):
        tic = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - tic) / steps)
    return first, best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, 1 thread, profile '{args.profile}'\n")
    print("| part | network | batch | eager ms/step | compiled ms/step | ratio | compile s (cold) | compile s (warm) "
          "| steps per run | break-even steps (cold) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    spec = load_profile(args.profile)
    for section in ("figures", "phase"):
        for name in spec.get(section, {}):
            c = section_configs(args.profile, section, name)[0]
            eager_first, eager = step_times(c, False, args.steps)
            torch._dynamo.reset()
            cold_first, compiled = step_times(c, True, args.steps)
            torch._dynamo.reset()
            warm_first, _ = step_times(c, True, 20)
            per_run = c.epochs * -(-c.n_per_class * 10 // c.batch_size)
            saved = eager - compiled
            even = f"{(cold_first - eager_first) / saved:,.0f}" if saved > 0 else "never"
            print(f"| {section} {name} | {c.architecture()} | {c.batch_size} | {eager * 1e3:.2f} | "
                  f"{compiled * 1e3:.2f} | {eager / compiled:.2f}x | {cold_first:.1f} | {warm_first:.1f} | "
                  f"{per_run:,} | {even} |")


if __name__ == "__main__":
    main()
