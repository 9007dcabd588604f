"""Several weight decays trained together as one batched model (``torch.func`` + ``vmap``).

The runs of a figure differ only in lambda: same data, same initialisation (same seed), same batch
order. Stacking their K networks' weights (``torch.func.stack_module_state``) and mapping the
forward pass over the stack (``vmap``) turns K small matrix products per layer into one batched
product, and K Python training loops into one. The gradient of the summed loss with respect to
model k's weights is model k's own gradient, and lambda_k W_k is added to it exactly as SGD's
``weight_decay`` does, so each model follows the trajectory that :func:`ncpaper.train.fit` gives
it (up to floating-point rounding). Whether this is faster depends on the machine and the network
size: ``benchmarks/bench_batched.py`` measures it.
"""

from __future__ import annotations

import copy
import time

import torch

from .train import RunConfig, batch_loss, initial_model, lr_scheduler

__all__ = ["train_together"]


def _check_together(configs: list[RunConfig]) -> RunConfig:
    if not configs:
        raise ValueError("give at least one configuration to train")
    first = configs[0].validated()
    for config in configs[1:]:
        config.validated()
        differing = sorted(k for k, v in config.to_dict().items()
                           if k != "weight_decay" and v != first.to_dict()[k])
        if differing:
            raise ValueError(f"runs trained together may differ only in weight_decay; "
                             f"{config.describe()} also differs in {differing}")
    return first


def train_together(configs: list[RunConfig], train, epochs: int | None = None) -> tuple[list, dict]:
    """Train the networks of ``configs`` (equal but for weight_decay) on ``train`` as one batched model.

    Returns (models, timings): one ordinary ``nn.Module`` per config with its trained weights, and
    ``images_per_second`` counted over all K networks. ``epochs`` overrides the configs' epochs
    (the learning-rate milestones still follow the configs), for benchmarks.
    """
    config = _check_together(configs)
    epochs = config.epochs if epochs is None else epochs
    device = torch.device(config.device)
    torch.set_flush_denormal(True)
    models = [initial_model(config, train) for _ in configs]  # the initialisation fit() gives each run
    params, buffers = torch.func.stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return torch.func.functional_call(skeleton, (p, b), (x,))

    batched = torch.vmap(forward, in_dims=(0, 0, None))
    lam = torch.tensor([c.weight_decay for c in configs], device=device)
    optimizer = torch.optim.SGD(params.values(), lr=config.lr, momentum=config.momentum)
    scheduler = lr_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    x, y = train.x.to(device), train.y.to(device)
    targets = torch.nn.functional.one_hot(y, train.num_classes).float()
    n = len(y)
    tic = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            out = batched(params, buffers, x[idx])  # K x B x C
            loss = batch_loss(out, targets[idx], config.loss)  # the sum of the K networks' losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p in params.values():  # the penalty's gradient lambda_k W_k, as SGD's weight_decay
                    p.grad.add_(p * lam.view(-1, *([1] * (p.dim() - 1))))
            optimizer.step()
        scheduler.step()
    seconds = time.perf_counter() - tic
    for k, model in enumerate(models):
        model.load_state_dict({name: p[k].detach().clone() for name, p in params.items()})
    return models, {"train_seconds": seconds, "images_per_second": len(configs) * n * epochs / seconds}
