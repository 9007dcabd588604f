"""Published results: copied without weights, found again by configuration, verified, clear when missing."""

import json
import subprocess

import pandas as pd
import pytest

from ncpaper.cli import main
from ncpaper.profiles import figure_configs
from ncpaper.published import MissingResultError, TamperedResultError, find_finished, load_published, publish
from ncpaper.sweep import run_sweep
from ncpaper.train import RunConfig

TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 6, "lr": 0.1, "batch_size": 16, "n_measurements": 3}


@pytest.fixture
def finished(tmp_path):
    configs = [RunConfig.from_dict({**TINY, "weight_decay": wd}) for wd in (0.0, 1e-3)]
    return configs, run_sweep(configs, results=tmp_path / "results", progress=False)


def test_publish_then_load_gives_the_same_tables_without_weights(finished, tmp_path):
    configs, runs = finished
    folders = publish(runs, "demo", tmp_path / "published")
    assert sorted(p.name for p in folders[0].iterdir()) == ["meta.json", "metrics.csv"]
    back = load_published(list(reversed(configs)), "demo", tmp_path / "published")  # order as asked
    for run, original in zip(back, reversed(runs), strict=True):
        pd.testing.assert_frame_equal(run.table, original.table)
        assert run.config == original.config and run.meta["git"] == original.meta["git"]
        assert run.meta["data"]["train"]["pixels_sha256"] == original.meta["data"]["train"]["pixels_sha256"]
    assert find_finished(configs, tmp_path / "results")[1].path == runs[1].path
    assert runs[0].model().classifier.weight.shape == (10, 16)
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        back[0].model()


def test_missing_results_name_the_run_and_the_command(finished, tmp_path):
    configs, _ = finished
    with pytest.raises(MissingResultError, match=r"lambda=0 seed=0.*ncpaper sweep --profile demo.*ncpaper publish"):
        load_published(configs[:1], "demo", tmp_path / "published")
    other = RunConfig.from_dict({**TINY, "weight_decay": 5e-3})
    with pytest.raises(MissingResultError, match=r"lambda=0\.005.*Train them first"):
        find_finished([other], tmp_path / "results")


@pytest.mark.parametrize("name", ["metrics.csv", "meta.json"])
def test_an_edited_published_file_is_named_with_its_restore_command(finished, tmp_path, name):
    configs, runs = finished
    (folder,) = publish(runs[:1], "demo", tmp_path / "published")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder.parent, capture_output=True).returncode == 0
    edited = folder / name
    edited.write_text(edited.read_text().replace("0.", "1.", 1))  # one digit changed
    with pytest.raises(TamperedResultError) as err:
        load_published(configs[:1], "demo", tmp_path / "published")
    assert str(err.value) == (f"published file {edited} does not match its sha256 in {folder.parent / 'SHA256SUMS'} "
                              f"(edited or damaged): restore it with `git checkout -- {edited}`, or republish with "
                              "`ncpaper publish --profile demo`")


def test_swapped_or_extra_published_folders_are_refused(finished, tmp_path):
    configs, runs = finished
    a, b = publish(runs, "demo", tmp_path / "published")
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    with pytest.raises(TamperedResultError, match="does not match its sha256"):
        load_published(configs, "demo", tmp_path / "published")
    (stale := tmp_path / "published" / "demo" / f".{a.name}.tmp4194301").mkdir()  # a killed publish
    publish(runs, "demo", tmp_path / "published")
    assert not stale.exists() and len(load_published(configs, "demo", tmp_path / "published")) == 2
    extra = a.parent / "0000000000000000"
    extra.mkdir()
    (extra / "meta.json").write_text(json.dumps({"config": configs[0].to_dict()}))
    with pytest.raises(TamperedResultError, match=r"0000000000000000/meta.json is not listed in .*SHA256SUMS"):
        load_published(configs, "demo", tmp_path / "published")


def test_the_committed_results_are_sealed():
    """Every file under published/paper/ is in its SHA256SUMS, as `sha256sum -c` checks it."""
    from ncpaper.published import published_dir, verify_published

    folder = published_dir() / "paper"
    verify_published(folder, "paper")
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=folder).returncode == 0


def test_publish_command(tmp_path, capsys):
    results, published = str(tmp_path / "results"), str(tmp_path / "published")
    assert main(["--results", results, "publish", "--profile", "smoke", "--figure", "mnist", "--to", published]) == 2
    assert "no finished run" in capsys.readouterr().err
    run_sweep(figure_configs("smoke", "mnist"), results=results, progress=False)
    assert main(["--results", results, "publish", "--profile", "smoke", "--figure", "mnist", "--to", published]) == 0
    assert "published 3 run(s)" in capsys.readouterr().out
    assert len(load_published(figure_configs("smoke", "mnist"), "smoke", published)) == 3


def test_the_committed_full_scale_results_are_whole_or_named_as_missing():
    """published/paper/ holds each full-scale figure's runs finished, small and with provenance, or (while they
    are retrained in the slides' units with the settling phase) says exactly which are missing and how to make them.
    """
    from ncpaper.published import MissingResultError

    for figure in ("cifar10", "mnist"):
        configs = figure_configs("paper", figure)
        try:
            runs = load_published(configs, "paper")  # verifies each table against its sha256
        except MissingResultError as err:
            assert any(config.describe() in str(err) for config in configs)
            assert f"{figure}/mlp" in str(err) and "ncpaper sweep --profile paper" in str(err)
            continue
        for config, run in zip(configs, runs, strict=True):
            assert sorted(p.name for p in run.path.iterdir()) == ["meta.json", "metrics.csv"]
            assert run.table["epoch"].iloc[-1] == config.epochs
            meta = run.meta
            assert meta["data"]["train"]["pixels_sha256"] and meta["device"] and meta["git"]["commit"]
            assert sum(meta["data"]["train"]["class_counts"]) == 10 * config.n_per_class
            assert meta["timings"]["images_per_second"] > 0 and meta["created"]
