"""Weight decays trained together in one vmapped model follow the runs trained one at a time."""

import pytest
import torch

from ncpaper import data
from ncpaper.batched import train_together
from ncpaper.train import RunConfig, fit

TINY = {"dataset": "mnist", "sizes": {"widths": [32, 32]}, "n_per_class": 10, "n_test_per_class": None,
        "epochs": 5, "lr": 0.1, "batch_size": 16, "n_measurements": 2, "lr_milestones": [0.6]}


def test_together_equals_one_after_another():
    train = data.load("mnist", "train", 10, 0)
    configs = [RunConfig.from_dict({**TINY, "weight_decay": wd}) for wd in (0.0, 1e-2, 5e-2)]
    models, timings = train_together(configs, train)
    assert timings["images_per_second"] > 0
    finals = []
    for config, model in zip(configs, models, strict=True):
        _, reference, _ = fit(config, train)
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        finals.append(model.classifier.weight.norm().item())
    assert finals[0] > finals[1] > finals[2]  # the decays really differ between the stacked networks


def test_only_weight_decay_may_differ():
    configs = [RunConfig.from_dict(TINY), RunConfig.from_dict({**TINY, "lr": 0.05, "seed": 1})]
    with pytest.raises(ValueError, match=r"differ only in weight_decay.*\['lr', 'seed'\]"):
        train_together(configs, data.load("mnist", "train", 10, 0))
    with pytest.raises(ValueError, match="at least one"):
        train_together([], None)
