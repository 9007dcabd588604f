"""The step-time pilot of a GPU lease (issue 26): does TF32, bf16, channels-last, a CUDA graph or torch.compile pay?

    python3 benchmarks/bench_gpu_step.py --out $OUT/steps.json              # on the GPU, ~1-2 minutes
    python3 benchmarks/bench_gpu_step.py --out $OUT/steps.json --compile    # + torch.compile (cold compiles)
    python benchmarks/bench_gpu_step.py --device cpu --toy --out /tmp/s.json  # the code paths, here, in seconds

For the networks of the lease's profiles (``paper_seeds``: the MLPs 2048x3 on CIFAR-10 and MNIST; ``convnet``; with
``--toy``: ``convnet_toy`` and ``smoke``), one SGD step of ``fit`` (:func:`ncpaper.train.sgd_step`, its optimiser
:func:`ncpaper.train.sgd`, batch of the profile, data on the device) timed as:

- ``float32``: IEEE float32 (TF32 off for matrix products and cuDNN);
- ``tfloat32``: TF32 on for both (what torch's default does for convolutions, not for matrix products);
- ``bfloat16``: the products under bf16 autocast, as ``RunConfig.precision = "bfloat16"``;
- ``bfloat16 graph`` (CUDA): the whole step (forward, loss, backward, SGD) captured once as a CUDA graph and
  replayed, the batch copied into its static input; the weights after the timed steps are compared with eager's
  (``graph_vs_eager``: max |w_graph - w_eager| / max |w_eager|, same start, same batches);
- ``bfloat16 compiled`` (CUDA, ``--compile``): ``torch.compile(model)``, its first step's seconds reported apart;
- for a ConvNet, ``bfloat16`` again with the usual (not channels-last) layout.

Each row: milliseconds a step (median of ``--repeats`` blocks of ``--steps``), images/s, TFLOP/s counted as
:func:`ncpaper.models.training_flops` x batch / step time, the fraction of the chip's peak for that precision, and
the seconds a whole run's steps would take on the GPU alone. ``--measure`` also times one NC measurement
(:func:`ncpaper.measure.measure`) on random data of the profile's sizes, and the run's ``n_measurements`` of them.
One process: the lease runs many side by side, so these are the single-run rates, not the shared ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from ncpaper import data  # noqa: E402
from ncpaper.models import make_model, training_flops  # noqa: E402
from ncpaper.profiles import figure_configs  # noqa: E402
from ncpaper.train import sgd, sgd_step  # noqa: E402

PEAK_TFLOPS = {"H200": {"bfloat16": 989.0, "tfloat32": 494.0, "float32": 67.0},
               "H100": {"bfloat16": 989.0, "tfloat32": 494.0, "float32": 67.0}}
NETWORKS = [("paper_seeds", "cifar10"), ("paper_seeds", "mnist"), ("convnet", "cifar10")]
TOY_NETWORKS = [("smoke", "mnist"), ("convnet_toy", "cifar10")]


def precision_flags(precision: str) -> None:
    """TF32 for matrix products and cuDNN convolutions on for "tfloat32", off otherwise (IEEE float32)."""
    tf32 = precision == "tfloat32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast_for(precision: str, device: torch.device, cache: bool = True):
    if precision != "bfloat16":
        return None
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def batches(shape, classes: int, batch: int, count: int, device: torch.device, seed: int = 0):
    """``count`` random batches (normalised-image-like inputs, one-hot targets), on the device."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(batch, *shape, generator=g).to(device)
        y = torch.randint(0, classes, (batch,), generator=g)
        out.append((x, torch.nn.functional.one_hot(y, classes).float().to(device)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EagerStep:
    """fit's step as it is: ``sgd_step`` (autograd) under the precision's autocast."""

    def __init__(self, model, optimizer, precision: str, device: torch.device):
        self.model, self.optimizer = model, optimizer
        self.autocast = autocast_for(precision, device)

    def __call__(self, x, targets):
        return sgd_step(self.model, self.optimizer, x, targets, self.autocast, by_hand=False)


class GraphedStep:
    """The whole step captured once as a CUDA graph (static input and target buffers), then replayed.

    As PyTorch's whole-network capture: three warm-up steps on a side stream, the gradients set to None before the
    capture (backward then allocates them from the graph's pool), autocast without its weight cache. A learning
    rate changed later (the milestone) would need a new capture: the rate is baked into the graph.
    """

    def __init__(self, model, optimizer, precision: str, device: torch.device, x, targets):
        self.static_x, self.static_targets = x.clone(), targets.clone()
        autocast = autocast_for(precision, device, cache=False)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                sgd_step(model, optimizer, self.static_x, self.static_targets, autocast, by_hand=False)
        torch.cuda.current_stream(device).wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = sgd_step(model, optimizer, self.static_x, self.static_targets, autocast, by_hand=False)

    def __call__(self, x, targets):
        self.static_x.copy_(x)
        self.static_targets.copy_(targets)
        self.graph.replay()
        return self.loss


def time_steps(step, data_batches, steps: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per step of ``repeats`` blocks of ``steps`` steps (after one warm-up block)."""
    times = []
    for block in range(repeats + 1):
        sync(device)
        tic = time.perf_counter()
        for i in range(steps):
            step(*data_batches[i % len(data_batches)])
        sync(device)
        if block:
            times.append((time.perf_counter() - tic) / steps)
    return times


def peak(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p[precision] for model, p in PEAK_TFLOPS.items() if model in name), None)


def network(profile: str, figure: str, channels_last: bool | None = None):
    config = figure_configs(profile, figure)[0]
    shape = data.input_shape(config.dataset, config.input_pool)
    sizes = dict(config.sizes)
    if channels_last is not None:
        sizes["channels_last"] = channels_last
    return config, shape, sizes


def bench_network(profile: str, figure: str, device: torch.device, args) -> list[dict]:
    config, shape, sizes = network(profile, figure)
    classes = 10
    variants = [("float32", "eager", None), ("bfloat16", "eager", None)]
    if device.type == "cuda":
        variants.insert(1, ("tfloat32", "eager", None))  # TF32 exists on NVIDIA GPUs only
    if config.model == "convnet":
        variants.append(("bfloat16", "eager", not sizes.get("channels_last", False)))
    if device.type == "cuda":
        variants.append(("bfloat16", "graph", None))
        if args.compile:
            variants.append(("bfloat16", "compiled", None))
    data_batches = batches(shape, classes, config.batch_size, 8, device)
    steps_per_run = math.ceil(config.n_per_class * classes / config.batch_size) * config.epochs
    rows = []
    for precision, how, layout in variants:
        precision_flags(precision)
        torch.manual_seed(0)
        use_sizes = {**sizes, "channels_last": layout} if layout is not None else sizes
        model = make_model(config.model, shape, classes, **use_sizes).to(device)
        flops = training_flops(model, shape) * config.batch_size
        optimizer = sgd(model.parameters(), dataclasses.replace(config, device=str(device)))
        row = {"profile": profile, "figure": figure, "network": config.architecture(), "batch": config.batch_size,
               "precision": precision, "step": how, "channels_last": use_sizes.get("channels_last")}
        tic = time.perf_counter()
        try:
            if how == "graph":
                step = GraphedStep(model, optimizer, precision, device, *data_batches[0])
            else:
                if how == "compiled":
                    model = torch.compile(model)
                step = EagerStep(model, optimizer, precision, device)
                step(*data_batches[0])
            sync(device)
            row["setup_seconds"] = time.perf_counter() - tic
            if how == "graph":
                row["graph_vs_eager"] = graph_vs_eager(config, shape, classes, sizes, device, data_batches)
            times = time_steps(step, data_batches, args.steps, args.repeats, device)
        except Exception as err:  # a variant that does not work here is a finding: recorded, the others go on
            if how == "eager":
                raise
            rows.append({**row, "error": f"{type(err).__name__}: {err}"})
            print(f"{config.architecture():32s} {precision:9s} {how:8s} FAILED: {type(err).__name__}: {err}",
                  flush=True)
            continue
        seconds = statistics.median(times)
        p = peak(device, precision)
        row.update({"ms_per_step": 1e3 * seconds, "ms_spread": 1e3 * (max(times) - min(times)),
                    "images_per_second": config.batch_size / seconds, "tflops": flops / seconds / 1e12,
                    "peak_tflops": p, "fraction_of_peak": flops / seconds / 1e12 / p if p else None,
                    "steps_per_run": steps_per_run, "run_step_seconds": steps_per_run * seconds})
        rows.append(row)
        print(f"{config.architecture():32s} {precision:9s} {how:8s} layout={row['channels_last']!s:5s} "
              f"{row['ms_per_step']:8.3f} ms/step {row['tflops']:8.2f} TFLOP/s, a run's steps "
              f"{row['run_step_seconds']:7.1f} s", flush=True)
    precision_flags("float32")
    if args.measure:
        rows.append(bench_measure(config, shape, classes, sizes, device))
    return rows


def graph_vs_eager(config, shape, classes, sizes, device, data_batches, steps: int = 20) -> float:
    """max |w_graph - w_eager| / max |w_eager| after ``steps`` bf16 steps from the same start on the same batches."""
    weights = []
    for how in ("eager", "graph"):
        torch.manual_seed(0)
        model = make_model(config.model, shape, classes, **sizes).to(device)
        optimizer = sgd(model.parameters(), dataclasses.replace(config, device=str(device)))
        if how == "graph":  # its three warm-up steps are steps too: give eager the same three first
            step = GraphedStep(model, optimizer, "bfloat16", device, *data_batches[0])
        else:
            step = EagerStep(model, optimizer, "bfloat16", device)
            for _ in range(3):
                step(*data_batches[0])
        for i in range(steps):
            step(*data_batches[i % len(data_batches)])
        sync(device)
        weights.append(torch.cat([p.detach().flatten().double() for p in model.parameters()]))
    return float((weights[1] - weights[0]).abs().max() / weights[0].abs().max())


def bench_measure(config, shape, classes, sizes, device) -> dict:
    """One NC measurement of the profile's network on random data of its training and test sizes (on the CPU, as
    ``fit`` keeps them; batches go to the device)."""
    from ncpaper.measure import measure

    torch.manual_seed(0)
    model = make_model(config.model, shape, classes, **sizes).to(device)
    split = []
    for n in (config.n_per_class * classes, config.n_test_per_class * classes):
        y = torch.arange(n) % classes
        split.append(data.LabelledImages(torch.randn(n, *shape), y, tuple(str(c) for c in range(classes))))
    sync(device)
    tic = time.perf_counter()
    measure(model, split[0], split[1], config.weight_decay or 1e-3)
    sync(device)
    seconds = time.perf_counter() - tic
    print(f"{config.architecture():32s} one measurement {seconds:.2f} s, x {config.n_measurements} a run", flush=True)
    return {"profile": "measure", "figure": config.dataset, "network": config.architecture(),
            "measure_seconds": seconds, "n_measurements": config.n_measurements,
            "run_measure_seconds": seconds * config.n_measurements}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true", help="the toy profiles' networks (the code paths, on a CPU)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (its cold compile is timed)")
    parser.add_argument("--measure", action="store_true", help="also one NC measurement of each network")
    parser.add_argument("--out", required=True, help="JSON file for the rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU: give --device cpu")
    torch.set_num_threads(1)
    rows = []
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "steps": args.steps, "repeats": args.repeats, "rows": rows}
    for profile, figure in TOY_NETWORKS if args.toy else NETWORKS:
        rows += bench_network(profile, figure, device, args)
        Path(args.out).write_text(json.dumps(info, indent=2))  # after each network: a timeout keeps what was timed
    return 0


if __name__ == "__main__":
    sys.exit(main())
