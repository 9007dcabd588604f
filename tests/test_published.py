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


def test_the_committed_full_scale_results_are_the_paper_profile_and_reach_the_terminal_phase():
    """published/paper/ holds every run of the paper profile and nothing else, each finished, small, with provenance
    and the per-layer and test-set columns; each figure has two weight decays in the terminal phase (training error
    <= 0.2%, NC1 and centred NC3 >= 5x below lambda = 0) whose settled rows meet Lemma 2's balance within 5%."""
    from ncpaper.analysis import last_rows, settled_rows
    from ncpaper.profiles import all_configs
    from ncpaper.published import published_dir
    from ncpaper.results import collect

    folder = published_dir() / "paper"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(
        r.meta["key"] for r in load_published(all_configs("paper"), "paper"))  # no stale runs left behind
    for figure in ("cifar10", "mnist"):
        configs = figure_configs("paper", figure)
        runs = load_published(configs, "paper")  # verifies each table against its sha256
        for config, run in zip(configs, runs, strict=True):
            assert sorted(p.name for p in run.path.iterdir()) == ["meta.json", "metrics.csv"]
            assert run.table["epoch"].iloc[-1] == config.epochs
            meta = run.meta
            assert meta["data"]["train"]["pixels_sha256"] and meta["device"] and meta["git"]["commit"]
            assert sum(meta["data"]["train"]["class_counts"]) == 10 * config.n_per_class
            assert meta["timings"]["images_per_second"] > 0 and meta["created"]
            assert {"test_error", "nc1_layer_1", "nc3_centred", "critical_residual"} <= set(run.table.columns)
        table = collect(runs)
        last = last_rows(table).set_index("weight_decay")
        zero = last.loc[0.0]
        passing = [w for w, row in last.iterrows() if w > 0 and row["train_error"] <= 0.002
                   and zero["nc1"] / row["nc1"] >= 5 and zero["nc3_centred"] / row["nc3_centred"] >= 5]
        assert len(passing) >= 2, f"{figure}: only {passing} reach the terminal phase with 5x collapse"
        settled = settled_rows(table).set_index("weight_decay")
        balance = [c for c in settled.columns if c.startswith("balance_")]
        assert len(balance) == 4 and set(passing) <= set(settled.index)
        assert (settled.loc[passing, balance] - 1).abs().to_numpy().max() <= 0.05


def test_a_profile_sweep_lists_published_runs_and_trains_only_what_is_missing(capsys, tmp_path):
    """`ncpaper sweep --profile paper --figure cifar10` on a fresh clone (no data, no GPU) trains nothing: every run
    is published. --device cpu asks for other runs (a CPU retrain), which are not published."""
    assert main(["sweep", "--profile", "paper", "--figure", "cifar10", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 run(s) already published" in out and "nothing to train" in out
    assert not any(tmp_path.iterdir())
    code = main(["sweep", "--profile", "paper", "--figure", "mnist", "--device", "cpu", "--results", str(tmp_path),
                 "--data", str(tmp_path / "no-data")])
    assert code == 2 and "already published" not in capsys.readouterr().out


def test_train_in_parallel_trains_a_profile_side_by_side_and_publishes_each_run(tmp_path):
    """scripts/train_in_parallel.py (how the paper profile was trained on one GPU) gives the runs the keys that
    `ncpaper sweep` gives them, and publishes them where the book finds them."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_in_parallel.py"
    done = subprocess.run([sys.executable, str(script), "--profile", "smoke", "--figure", "mnist", "--results",
                           str(tmp_path / "results"), "--publish", "--publish-to", str(tmp_path / "published")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" done mnist/mlp") == 3
    configs = figure_configs("smoke", "mnist")
    published = load_published(configs, "smoke", tmp_path / "published")
    swept = run_sweep(configs, results=tmp_path / "results", progress=False)  # read from the cache, not retrained
    assert [r.meta["key"] for r in published] == [r.meta["key"] for r in swept]
    assert all(r.meta["created"] == p.meta["created"] for r, p in zip(swept, published, strict=True))
