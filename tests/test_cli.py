"""The command line: where results went, and one-line errors for bad input."""

import pytest

from ncpaper.cli import main

SMALL = ["--widths", "16", "--n-per-class", "3", "--n-test-per-class", "1", "--epochs", "3", "--batch-size", "10"]


def test_train_prints_where_the_result_went(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "train", *SMALL, "--weight-decay", "1e-3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "lambda=0.001" in out and "nc1=" in out


def test_sweep_over_weight_decays_and_seeds(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "sweep", *SMALL, "--weight-decays", "0", "1e-3",
                 "--seeds", "0", "1"]) == 0
    assert capsys.readouterr().out.count(str(tmp_path)) == 5  # the folder, then four runs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "fashion"], "unknown dataset 'fashion'"),
        (["train", "--lr", "-0.1"], "lr must be positive"),
        (["train", "--weight-decay", "-1"], "must be >= 0"),
        (["train", "--epochs", "0"], "epochs must be positive"),
        (["train", "--n-per-class", "7000"], "has only 5421"),
        (["sweep", "--weight-decays"], "the sweep is empty"),
        (["--data", "/nonexistent", "train", "--epochs", "1"], "not found under data root /nonexistent"),
    ],
)
def test_bad_input_is_one_line_on_stderr(args, message, capsys, tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    assert main(["--results", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("ncpaper: error:") and "\n" not in err
