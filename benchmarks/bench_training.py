"""Training throughput: ncpaper's in-memory loop against a standard torchvision DataLoader loop.

Same network (the default profile's bias-free MLP 784-512-512-10), same 1,000 MNIST images, same
loss, optimiser and batch size. The baseline is the usual tutorial loop: ``torchvision.datasets.MNIST``
with ``ToTensor`` and ``Normalize`` transforms, a ``Subset`` and a shuffling ``DataLoader``; ncpaper
holds the subset as one tensor and indexes batches. Also reports the cost of ncpaper's NC
measurements (log-spaced epochs) as a fraction of the training time.

    NCPAPER_DATA=../shared/data python benchmarks/bench_training.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch.utils.data import DataLoader, Subset

from ncpaper import data
from ncpaper.models import make_model
from ncpaper.train import RunConfig, fit


def dataloader_images_per_second(indices, epochs, batch_size, workers):
    transform = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))])
    dataset = Subset(torchvision.datasets.MNIST(str(data.data_root()), train=True, transform=transform), indices)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = make_model("mlp", (1, 28, 28), 10, widths=[512, 512])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    tic = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            out = model(x)
            loss = (out - torch.nn.functional.one_hot(y, 10).float()).pow(2).sum() / (2 * out.numel())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return len(indices) * epochs / (time.perf_counter() - tic)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    subset = data.load("mnist", "train", n_per_class=100, seed=0)
    labels = torchvision.datasets.MNIST(str(data.data_root()), train=True).targets.numpy()
    indices = data.balanced_indices(labels, 10, 100, 0).tolist()
    config = RunConfig.from_dict({"sizes": {"widths": [512, 512]}, "lr": 0.2, "weight_decay": 5e-4,
                                  "epochs": args.epochs, "n_test_per_class": None, "n_measurements": 2})
    ours, base0, base2 = [], [], []
    for _ in range(args.repeats):
        ours.append(fit(config, train=subset)[2]["images_per_second"])
        base0.append(dataloader_images_per_second(indices, args.epochs, 128, 0))
        base2.append(dataloader_images_per_second(indices, args.epochs, 128, 2))
    ours_m, b0, b2 = (statistics.median(v) for v in (ours, base0, base2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs x 1,000 images, "
          f"median of {args.repeats}")
    print("| loop | images/s | ncpaper / this |")
    print("| --- | --- | --- |")
    print(f"| ncpaper (tensors in memory, batches by index) | {ours_m:,.0f} | 1.0 |")
    print(f"| DataLoader, num_workers=0 | {b0:,.0f} | {ours_m / b0:.1f}x |")
    print(f"| DataLoader, num_workers=2 | {b2:,.0f} | {ours_m / b2:.1f}x |")

    full = RunConfig.from_dict({"sizes": {"widths": [512, 512]}, "lr": 0.2, "weight_decay": 5e-4, "epochs": 1000,
                                "n_test_per_class": 100})
    _, _, timings = fit(full, train=subset)
    share = timings["measure_seconds"] / timings["train_seconds"]
    print(f"\nmeasurement at {full.n_measurements} log-spaced epochs of the default MNIST run (1,000 epochs): "
          f"{timings['measure_seconds']:.1f} s against {timings['train_seconds']:.1f} s of training ({share:.1%})")


if __name__ == "__main__":
    main()
