"""The fast paths give the baseline's values (the timings themselves live in benchmarks/)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from ncpaper.metrics import neural_collapse_streaming


def load_benchmark(name):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("n", "dim", "c"), [(3000, 64, 10), (2000, 200, 20)])
def test_streaming_nc1_equals_the_public_notebook_baseline(n, dim, c):
    bench = load_benchmark("bench_metrics")
    h, y, w = bench.make_features(n, dim, c, seed=1)
    batches = bench.batched(h, y, 256)
    ours = neural_collapse_streaming(batches, w, c, dim)["nc1"]
    assert ours == pytest.approx(bench.baseline_nc1(batches, w, c, dim), rel=1e-6)


def test_in_memory_loop_matches_a_dataloader_loop_step_for_step():
    """Same batches in the same order: ncpaper's indexed batches equal a DataLoader over the same tensors."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(100, 5), torch.randint(0, 3, (100,))
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    ours = [(x[order[i:i + 32]], y[order[i:i + 32]]) for i in range(0, 100, 32)]
    loader = DataLoader(TensorDataset(x, y), batch_size=32, sampler=order.tolist())
    for (xa, ya), (xb, yb) in zip(ours, loader, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
