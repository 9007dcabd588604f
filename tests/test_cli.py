"""The command line: where results went, and one-line errors (exit 2) for bad input and bad folders."""

import errno
import pathlib
import shutil

import pytest

from ncpaper import results
from ncpaper.cli import build_parser, main

SMALL = ["--widths", "16", "--n-per-class", "3", "--n-test-per-class", "1", "--epochs", "3", "--batch-size", "10"]


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``ncpaper argv``; argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line_error(code, err, message):
    assert code == 2 and err.startswith("ncpaper: error:") and "\n" not in err and message in err, err


def test_train_prints_where_the_result_went(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "train", *SMALL, "--weight-decay", "1e-3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "lambda=0.001" in out and "nc1=" in out


def test_global_options_also_after_the_subcommand(tmp_path, capsys, data_root):
    code, out, _ = run_cli(["train", *SMALL, "--quiet", "--results", str(tmp_path), "--data", str(data_root)], capsys)
    assert code == 0 and out.startswith(f"results in {tmp_path.resolve()}:")
    code, out, _ = run_cli(["--results", "/nonexistent", "train", *SMALL, "--quiet", "--results", str(tmp_path)],
                           capsys)
    assert code == 0 and out.startswith(f"results in {tmp_path.resolve()}:")  # after the subcommand wins


def test_version_and_help(capsys):
    from ncpaper import __version__

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"ncpaper {__version__}\n"
    top = build_parser().format_help()
    assert "``" not in top and "ncpaper train (one run)" in top
    train_help = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--weight-decay WEIGHT_DECAY the slides' lambda (default: 0.0)" in train_help
    assert "--dataset {mnist,cifar10} training and test data (default: mnist)" in train_help
    assert "--model {convnet,mlp}" in train_help and "(default: 1000)" in train_help


def test_sweep_over_weight_decays_and_seeds(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "sweep", *SMALL, "--weight-decays", "0", "1e-3",
                 "--seeds", "0", "1"]) == 0
    assert capsys.readouterr().out.count(str(tmp_path)) == 5  # the folder, then four runs


def test_one_or_two_threads_are_two_runs(tmp_path, capsys):
    paths = []
    for threads in ("1", "2"):
        assert main(["--results", str(tmp_path), "train", *SMALL, "--quiet", "--threads", threads]) == 0
        paths.append(pathlib.Path(capsys.readouterr().out.splitlines()[1].split()[0]))
    assert paths[0] != paths[1]
    assert [results.load_run(p).meta["threads"] for p in paths] == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "fashion"], "argument --dataset: invalid choice: 'fashion'"),
        (["train", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["sweep", "--profile", "smoke", "--figure", "svhn"], "argument --figure: invalid choice: 'svhn'"),
        (["train", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["train", "--lr", "-0.1"], "lr must be positive"),
        (["train", "--weight-decay", "-1"], "must be >= 0"),
        (["train", "--epochs", "0"], "epochs must be positive"),
        (["train", "--threads", "0"], "argument --threads: must be a positive integer at most 1024, got '0'"),
        (["train", "--n-per-class", "7000"], "has only 5421"),
        (["train", "--input-pool", "0"], "input_pool must be a positive integer"),
        (["sweep", "--weight-decays"], "the sweep is empty"),
        (["--data", "/nonexistent", "train", "--epochs", "1"], "not found under data root /nonexistent"),
        (["train", *SMALL, "--device", "cuda"], "device 'cuda' asked for, but this torch"),
    ],
)
def test_bad_input_is_one_line_on_stderr(args, message, capsys, tmp_path, monkeypatch):
    import torch
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    one_line_error(*run_cli(["--results", str(tmp_path), *args], capsys)[::2], message)


@pytest.fixture
def key_folder(tmp_path, capsys):
    """The folder of SMALL's run, trained once and then stripped of its meta.json (so it is uncached)."""
    assert main(["--results", str(tmp_path / "r"), "train", *SMALL, "--quiet"]) == 0
    folder = pathlib.Path(capsys.readouterr().out.splitlines()[1].split()[0])
    (folder / "meta.json").unlink()
    return folder


def _file_instead_of_folder(folder):
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def _folder_instead_of(name):
    def damage(folder):
        (folder / name).unlink()
        (folder / name).mkdir()
    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_file_instead_of_folder, "{folder} is a file where the run's folder should be: move or delete it"),
        (lambda f: pathlib.Path(f"{f}.lock").unlink(missing_ok=True) or pathlib.Path(f"{f}.lock").mkdir(),
         "{folder}.lock is a folder where the run's lock file should be: remove it"),
        (_folder_instead_of("metrics.csv"), "{folder}/metrics.csv is a folder where the run's metrics.csv file"),
        (_folder_instead_of("model.pt"), "{folder}/model.pt is a folder where the run's model.pt file should be"),
    ],
    ids=["run-folder-is-a-file", "lock-is-a-folder", "metrics-is-a-folder", "model-is-a-folder"],
)
def test_bad_run_folders_fail_before_training(key_folder, damage, message, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1))
    damage(key_folder)
    code, _, err = run_cli(["--results", str(key_folder.parent), "train", *SMALL, "--quiet"], capsys)
    one_line_error(code, err, message.format(folder=key_folder))
    assert trained == []


def test_results_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("")
    code, _, err = run_cli(["--results", str(tmp_path / "results"), "train", *SMALL], capsys)
    one_line_error(code, err, f"the results folder {tmp_path / 'results'} is a file: point --results")


def test_a_read_only_results_folder(tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "shared-results"
    read_only.mkdir(mode=0o555)
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # what a 0o555 folder answers to anyone but root
        if self.parent == read_only:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, _, err = run_cli(["--results", str(read_only), "train", *SMALL], capsys)
    one_line_error(code, err, f"cannot write the run into {read_only}/")
    assert "(Permission denied): the run is not cached there; give a writable --results" in err


def test_a_disk_too_full_for_the_result(tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1))
    monkeypatch.setattr(results, "_free_bytes", lambda folder: 0)
    code, _, err = run_cli(["--results", str(tmp_path), "train", *SMALL, "--quiet"], capsys)
    one_line_error(code, err, f"no space for the run in {tmp_path}: its model.pt, metrics.csv and meta.json take ~")
    assert err.endswith("MB and 0 MB is free; nothing was trained: free some space or give another --results (or "
                        "NCPAPER_RESULTS)")
    assert trained == [] and list(tmp_path.iterdir()) == []


def test_damaged_data_files_are_named(tmp_path, capsys, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").symlink_to(data_root / "MNIST" / "raw" / "train-images-idx3-ubyte")
    (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    code, _, err = run_cli(["--data", str(tmp_path), "--results", str(tmp_path / "r"), "train", *SMALL], capsys)
    one_line_error(code, err, f"{raw}/train-labels-idx1-ubyte is damaged (0 bytes, shorter than its 8-byte header)")
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes((data_root / "cifar10-jpeg.tar.gz").read_bytes()[:100_000])
    code, _, err = run_cli(["--data", str(tmp_path), "--results", str(tmp_path / "r"), "train", *SMALL,
                            "--dataset", "cifar10"], capsys)
    one_line_error(code, err, f"{tmp_path}/cifar10-jpeg.tar.gz is damaged (EOFError")


def test_a_sweep_whose_worker_keeps_dying(tmp_path, capsys, monkeypatch):
    import dask
    import distributed  # noqa: F401  (loads its config first: set() would otherwise drop the whole section on exit)

    from ncpaper import sweep

    def die(*args, **kwargs):
        import os

        os._exit(1)

    monkeypatch.setattr(sweep, "_run_in_worker", die)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        code, _, err = run_cli(["--results", str(tmp_path), "sweep", *SMALL, "--weight-decays", "0.001",
                                "--workers", "2"], capsys)
    last = err.splitlines()[-1]
    one_line_error(code, last, "a Dask worker died each time it ran mnist/mlp lambda=0.001 seed=0")
    assert last.endswith("the runs that finished are cached: rerun the sweep to continue")

