"""Training with the slides' objective, measuring Neural Collapse at log-spaced epochs.

    L(W) = 1/(2NC) sum_{n,c} ||y_{n(c)} - f(x_{n(c)})||^2 + lambda/2 sum_k ||W_k||_F^2      (one-hot y)

with N examples per class and C classes (NC in all): the data term is half the mean over examples of
||y - f||^2. It is optimised by SGD with momentum and learning rate eta; the penalty's gradient
lambda W_k is exactly SGD's ``weight_decay=lambda``, applied to every layer (the networks have no
other parameters). In ``nn.MSELoss`` units the same run is lr = C eta / 2, weight_decay = 2 lambda / C
(:func:`mse_equivalent`).
This module returns rows and states; it knows nothing of files (see :mod:`ncpaper.results`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from . import data as data_module
from .measure import TrainingDivergedError, measure, square_loss
from .models import MODELS, BiasFreeMLP, make_model, weight_matrices
from .settle import readout_decomposition, settle, stationarity

__all__ = ["LOSSES", "RunConfig", "TrainingDivergedError", "fit", "measure", "measurement_epochs", "mse_equivalent",
           "slides_from_mse", "square_loss"]


# Fields added after the first results were cached: left out of RunConfig.to_dict (and so of the
# cache key) while at these defaults, so that those results stay valid.
_LATER_FIELDS = {"precision": "float32", "input_pool": 1, "init_scale": 1.0, "loss": "square"}

# The data terms a run can minimise (both with the same penalty lambda/2 sum_k ||W_k||_F^2):
# "square": the slides' 1/(2NC) sum ||y - f||^2; "cross_entropy": the mean over examples of
# -log softmax(f)_{y} (``nn.CrossEntropyLoss``'s units).
LOSSES = ("square", "cross_entropy")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers (and so its cache key)."""

    dataset: str = "mnist"
    model: str = "mlp"
    sizes: dict = field(default_factory=lambda: {"widths": [512, 512, 512]})
    n_per_class: int | None = 100
    n_test_per_class: int | None = 100
    # Average the images over input_pool x input_pool pixel blocks before the network (CIFAR-10
    # 32x32 -> 16x16 at 2): a first layer input_pool^2 times cheaper; 1 keeps the images as they are.
    input_pool: int = 1
    weight_decay: float = 0.0  # the slides' lambda (nn.MSELoss + SGD: weight_decay = 2 lambda / C)
    lr: float = 0.005  # the slides' eta (nn.MSELoss + SGD: lr = C eta / 2)
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 1000
    lr_milestones: tuple = (0.8,)  # fractions of `epochs` where the rate is multiplied by lr_gamma
    lr_gamma: float = 0.1
    n_measurements: int = 30
    seed: int = 0
    device: str = "cpu"
    # "bfloat16": the forward pass under torch.autocast (AMX on recent Xeons); weights, optimiser
    # state and every measurement stay in float32/float64.
    precision: str = "float32"
    # Weight-decay runs only: after training, move the network to a critical point of the same
    # objective (ncpaper.settle) and record it as an extra row with phase "settled".
    settle: bool = True
    # Every layer's default initialisation multiplied by init_scale (1: PyTorch's, or He's for a ConvNet with
    # init "he"): W_k -> s W_k, so a network homogeneous of degree L starts at s^L times its default outputs.
    init_scale: float = 1.0
    loss: str = "square"  # one of LOSSES

    def __post_init__(self):
        if self.weight_decay == 0 and math.copysign(1.0, self.weight_decay) < 0:  # -0.0 is the run of lambda = 0
            object.__setattr__(self, "weight_decay", 0.0)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration key(s) {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values).validated()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    def validated(self) -> RunConfig:
        """Check the configuration before any work; raise ValueError naming what is wrong."""
        problems = []
        if self.dataset not in data_module.DATASETS:
            problems.append(f"unknown dataset {self.dataset!r} (choose from {list(data_module.DATASETS)})")
        if self.model not in MODELS:
            problems.append(f"unknown model {self.model!r} (choose from {sorted(MODELS)})")
        for name in ("lr", "epochs", "batch_size", "n_measurements"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive, got {value!r}")
        for name in ("epochs", "batch_size", "n_measurements", "seed"):
            if int(getattr(self, name)) != getattr(self, name):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay (lambda) must be >= 0, got {self.weight_decay!r}")
        if not (0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (0 < self.lr_gamma <= 1):
            problems.append(f"lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            problems.append(f"lr_milestones are fractions of the epochs in (0, 1), got {list(self.lr_milestones)}")
        for name in ("n_per_class", "n_test_per_class"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                problems.append(f"{name} must be a positive integer or null (whole split), got {value!r}")
        try:
            data_module.check_input_pool(self.input_pool)
        except ValueError as err:
            problems.append(str(err))
        if not isinstance(self.settle, bool):
            problems.append(f"settle must be true or false, got {self.settle!r}")
        if not (isinstance(self.init_scale, int | float) and math.isfinite(self.init_scale) and self.init_scale > 0):
            problems.append(f"init_scale must be a positive number, got {self.init_scale!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        elif self.loss != "square" and self.settle and self.weight_decay > 0:
            problems.append("settling (settle: true) finds critical points of the square loss's objective; "
                            f"set settle to false for loss {self.loss!r}")
        if self.precision not in ("float32", "bfloat16"):
            problems.append(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            problems.append(f"device must be 'cpu', 'cuda' or 'mps', got {self.device!r}")
        if problems:
            raise ValueError("invalid run configuration: " + "; ".join(problems))
        return self

    def architecture(self) -> str:
        """E.g. "bias-free MLP (512-512)" or "bias-free CONVNET (16-32-64)"."""
        layers = self.sizes.get("widths", self.sizes.get("channels", []))
        return f"bias-free {self.model.upper()} ({'-'.join(str(v) for v in layers)})"

    def describe(self) -> str:
        return (f"{self.dataset}/{self.model} lambda={self.weight_decay:g} seed={self.seed} "
                f"n={self.n_per_class}/class epochs={self.epochs}"
                + (f" pooled {self.input_pool}x{self.input_pool}" if self.input_pool > 1 else "")
                + (f" {self.precision}" if self.precision != "float32" else "")
                + (f" init x{self.init_scale:g}" if self.init_scale != 1 else "")
                + (f" lr={self.lr:g}" if self.init_scale != 1 or self.loss != "square" else "")
                + (f" {self.loss.replace('_', '-')}" if self.loss != "square" else ""))

    def load_data(self, split: str, root=None) -> data_module.LabelledImages | None:
        """This run's ``split`` ("train" or "test"): balanced, pooled as configured (None: no test split)."""
        n = self.n_per_class if split == "train" else self.n_test_per_class
        if split == "test" and n is None:
            return None
        return data_module.load(self.dataset, split, n, self.seed, root=root, input_pool=self.input_pool)


def measurement_epochs(epochs: int, n: int) -> list[int]:
    """About ``n`` log-spaced epochs in 1..epochs, always including the last."""
    points = np.unique(np.round(np.geomspace(1, epochs, num=max(n, 2))).astype(int))
    return sorted({int(e) for e in points} | {epochs})


def initial_model(config: RunConfig, train: data_module.LabelledImages) -> torch.nn.Module:
    """The network of ``config`` at initialisation (seeded by ``config.seed``), on its device."""
    torch.manual_seed(config.seed)
    model = make_model(config.model, train.input_shape, train.num_classes, **config.sizes)
    if config.init_scale != 1:
        scale_weights(model, config.init_scale)
    return model.to(torch.device(config.device))


@torch.no_grad()
def scale_weights(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Multiply every layer W_1 .. W_L by ``scale`` in place; a bias-free ReLU network's outputs scale by scale^L."""
    for _, weight in weight_matrices(model):
        weight.mul_(scale)
    return model


def lr_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """The rate multiplied by ``lr_gamma`` at the ``lr_milestones`` fractions of the epochs (stepped per epoch)."""
    milestones = sorted({max(1, round(m * config.epochs)) for m in config.lr_milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_gamma)


def sgd(parameters, config: RunConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay lambda (the penalty's gradient lambda W_k) at rate eta.

    On the CPU the fused kernel (one pass over each weight, its gradient and momentum per step:
    1.1-1.2x faster steps for the default profile's networks, benchmarks/README.md) gives the same
    weights bit for bit as the plain loop (a test holds it to that); elsewhere torch's default.
    """
    fused = {"fused": True} if torch.device(config.device).type == "cpu" else {}
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           **fused)


def sgd_step(model, optimizer: torch.optim.Optimizer, x: torch.Tensor, targets: torch.Tensor,
             autocast=None, by_hand: bool | None = None, loss: str = "square") -> torch.Tensor:
    """One step of training on the batch (``x``, one-hot ``targets``): the forward pass under ``autocast`` (if given),
    the data term ``loss`` (:func:`batch_loss`), its gradient, the optimiser's step. Returns the batch loss
    (detached).

    ``by_hand`` (default: for a bias-free MLP on the CPU in float32) takes the gradient with
    :func:`mlp_backward` instead of autograd: for the square loss the same weights bit for bit, fewer
    overheads per step.
    """
    if by_hand is None:
        by_hand = type(model) is BiasFreeMLP and x.device.type == "cpu" and autocast is None
    if by_hand:
        value = mlp_backward(model, x, targets, loss)
    else:
        with autocast or contextlib.nullcontext():
            out = model(x)
        value = batch_loss(out, targets, loss)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
    optimizer.step()
    return value.detach()


def output_gradient(outputs: torch.Tensor, targets: torch.Tensor, loss: str = "square") -> torch.Tensor:
    """d(batch data term)/d f for a batch of B examples: (f - y)/B for the square loss, (softmax(f) - y)/B for
    cross-entropy (one-hot ``targets``, B x C)."""
    scale = 1.0 / targets.shape[0]
    if loss == "square":
        return (outputs - targets) * scale
    if loss == "cross_entropy":
        return (torch.softmax(outputs, dim=-1) - targets) * scale
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


@torch.no_grad()
def mlp_backward(model: BiasFreeMLP, x: torch.Tensor, targets: torch.Tensor, loss: str = "square") -> torch.Tensor:
    """Set each W_l.grad of a bias-free MLP to the gradient of the batch data term; return the term.

    Forward: h_0 = x flattened, h_l = s(h_{l-1} W_l^T), f = h_{L-1} W_L^T. With r = d(term)/d f
    (:func:`output_gradient`: (f - y)/B for :func:`batch_loss`'s square loss 1/(2B) sum ||y - f||^2,
    (softmax(f) - y)/B for its cross-entropy), backward:
    grad W_l = d_l^T h_{l-1}, d_L = r, d_{l-1} = (d_l W_l) masked where h_{l-1} = 0.
    These are the matrix products autograd performs, in its order, without building its graph: for the
    square loss the same gradients bit for bit (a test), 1.1-1.5x faster steps at the phase diagrams'
    batch of 32; for cross-entropy equal to autograd's up to rounding (a test).
    """
    if not isinstance(model, BiasFreeMLP):
        raise TypeError(f"the hand-written gradient is for a bias-free MLP, not {type(model).__name__}: "
                        f"train it with by_hand=False (autograd)")
    weights = [w for _, w in weight_matrices(model)]
    hidden = [x.flatten(1)]
    for weight in weights[:-1]:
        hidden.append(torch.relu(hidden[-1] @ weight.T))
    outputs = hidden[-1] @ weights[-1].T
    if loss == "square":
        residual = outputs - targets
        value = residual.pow(2).sum() * (0.5 / targets.shape[0])
        delta = residual * (1.0 / targets.shape[0])
    else:
        value = batch_loss(outputs, targets, loss)
        delta = output_gradient(outputs, targets, loss)
    for layer in range(len(weights) - 1, -1, -1):
        weights[layer].grad = delta.T @ hidden[layer]
        if layer:
            delta = torch.ops.aten.threshold_backward(delta @ weights[layer], hidden[layer], 0)
    return value


def batch_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str = "square") -> torch.Tensor:
    """The data term on a batch of B examples with one-hot ``targets`` (B x C).

    ``"square"``: 1/(2B) sum_i ||y_i - f_i||^2, the slides' data term on the batch (half the mean over its
    examples). ``"cross_entropy"``: (1/B) sum_i -log softmax(f_i)_{y_i}. ``outputs`` may carry leading
    dimensions (K stacked networks): their losses are summed.
    """
    if loss == "square":
        return (outputs.float() - targets).pow(2).sum() * (0.5 / targets.shape[0])
    if loss == "cross_entropy":
        return -(torch.log_softmax(outputs.float(), dim=-1) * targets).sum() * (1.0 / targets.shape[0])
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


def mse_equivalent(lr: float, weight_decay: float, num_classes: int) -> dict:
    """The same SGD run written for ``nn.MSELoss`` + ``torch.optim.SGD(weight_decay=...)``.

    nn.MSELoss averages over the B x C entries, so it is (2/C) x the slides' data term; SGD steps
    eta (grad D + lambda W) = lr (grad MSE + wd W) when lr = C eta / 2 and wd = 2 lambda / C.
    """
    return {"lr": num_classes * lr / 2, "weight_decay": 2 * weight_decay / num_classes}


def slides_from_mse(lr: float, weight_decay: float, num_classes: int) -> dict:
    """Inverse of :func:`mse_equivalent`: (eta, lambda) in the slides' units from nn.MSELoss's (lr, wd)."""
    return {"lr": 2 * lr / num_classes, "weight_decay": num_classes * weight_decay / 2}


def _diverged(config: RunConfig, epoch: int, why: str) -> TrainingDivergedError:
    return TrainingDivergedError(f"training diverged at epoch {epoch} ({why}) for {config.describe()}, "
                                 f"lr={config.lr}: lower the learning rate or the weight decay")


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""

    epoch: int
    rows: list
    model: dict
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    train_seconds: float
    measure_seconds: float


def fit(config: RunConfig, train=None, test=None, progress: bool = False, resume: TrainingState | None = None,
        on_checkpoint=None, checkpoint_every: int = 0) -> tuple[list[dict], torch.nn.Module, dict]:
    """Train one run; return (rows, model, timings). One row per measured epoch.

    ``resume`` continues from a :class:`TrainingState`; ``on_checkpoint(state)`` is called every
    ``checkpoint_every`` epochs (0: never) so a caller can save it.
    """
    config = config.validated()
    device = torch.device(config.device)
    # Weight decay drives weights towards zero; subnormal floats would slow CPU arithmetic many-fold.
    torch.set_flush_denormal(True)
    if train is None:
        train = config.load_data("train")
    if test is None:
        test = config.load_data("test")
    for split in (train, test):
        if split is not None and split.provenance.get("input_pool", 1) != config.input_pool:
            raise ValueError(f"{config.describe()} averages its inputs over {config.input_pool}x{config.input_pool} "
                             f"pixels, but the data given were pooled {split.provenance.get('input_pool', 1)}x: "
                             f"load them with config.load_data(split)")
    model = initial_model(config, train)
    optimizer = sgd(model.parameters(), config)
    scheduler = lr_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    rows: list[dict] = []
    start_epoch, train_seconds, measure_seconds = 0, 0.0, 0.0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        generator.set_state(resume.generator)
        rows, start_epoch = list(resume.rows), resume.epoch
        train_seconds, measure_seconds = resume.train_seconds, resume.measure_seconds

    x, y = train.x.to(device), train.y.to(device)
    targets = torch.nn.functional.one_hot(y, train.num_classes).float()
    n = len(y)
    to_measure = set(measurement_epochs(config.epochs, config.n_measurements))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bfloat16" else None
    epochs = range(start_epoch + 1, config.epochs + 1)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=config.describe(), initial=start_epoch, total=config.epochs)
    for epoch in epochs:
        tic = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        # one gather an epoch; each batch is then a view (x[order][a:b] == x[order[a:b]], value for value)
        shuffled_x, shuffled_targets = x[order], targets[order]
        total = torch.zeros((), device=device)
        for start in range(0, n, config.batch_size):
            stop = min(start + config.batch_size, n)
            loss = sgd_step(model, optimizer, shuffled_x[start:stop], shuffled_targets[start:stop], autocast,
                            loss=config.loss)
            total += loss * (stop - start)
        scheduler.step()
        train_seconds += time.perf_counter() - tic
        epoch_loss = total.item()
        if not math.isfinite(epoch_loss):
            raise _diverged(config, epoch, f"loss {epoch_loss}")
        if epoch in to_measure:
            tic = time.perf_counter()
            try:
                row = measure(model, train, test, config.weight_decay, loss=config.loss)
            except TrainingDivergedError as err:  # NaN or infinite features
                raise _diverged(config, epoch, str(err)) from None
            measure_seconds += time.perf_counter() - tic
            rows.append({"epoch": epoch, "phase": "train", "lr": optimizer.param_groups[0]["lr"], **row})
            if progress:
                epochs.set_postfix(loss=f"{row['train_loss']:.2e}", nc1=f"{row['nc1']:.2e}")
        if on_checkpoint and checkpoint_every and (epoch % checkpoint_every == 0) and epoch < config.epochs:
            on_checkpoint(TrainingState(epoch, rows, model.state_dict(), optimizer.state_dict(),
                                        scheduler.state_dict(), generator.get_state(), train_seconds,
                                        measure_seconds))
    timings = {"train_seconds": train_seconds, "measure_seconds": measure_seconds,
               "images_per_second": n * config.epochs / max(train_seconds, 1e-9)}
    if config.settle and config.weight_decay > 0 and rows and rows[-1]["phase"] == "train":
        rows.append(settled_row(model, train, test, config))
        timings["settle_seconds"] = rows[-1].pop("settle_seconds")  # a timing, not a number of the run
    return rows, model, timings


def settled_row(model: torch.nn.Module, train, test, config: RunConfig) -> dict:
    """The measurement row of ``model`` settled onto a critical point (:mod:`ncpaper.settle`), phase "settled".

    Besides :func:`measure`'s columns: the stationarity of every layer, the readout's decomposition and NC1's
    bounds by the spread of the outputs with the NC3 split (:func:`ncpaper.bounds.settled_columns`).
    """
    from .bounds import settled_columns

    device = next(model.parameters()).device
    result = settle(model, train.x.to(device), train.y.to(device), config.weight_decay)
    try:
        row = measure(result.model, train, test, config.weight_decay)
    except TrainingDivergedError as err:
        raise _diverged(config, config.epochs, f"after settling: {err}") from None
    gradients = stationarity(result.model, train, config.weight_decay)
    return {"epoch": config.epochs, "phase": "settled", "lr": math.nan, **row, **result.summary(),
            **readout_decomposition(result.model, train.x, train.y),
            **settled_columns(result.model, train, config.weight_decay),
            **{f"settle_gradient_{k}": g for k, g in enumerate(gradients, start=1)}}
