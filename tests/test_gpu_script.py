"""scripts/gpu_lease.py and benchmarks/bench_gpu_step.py (issue 26), on the CPU: the profiles they train, the FLOP
counts, the time model and its budget, the pilots' choice, the precision check, the data staging, and a whole toy
lease end to end (convnet_toy and smoke/mnist, --device cpu): trained, published, bundled, merged, resumed."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ncpaper.models import make_model, training_flops
from ncpaper.profiles import all_configs, figure_configs, load_profile, section_configs
from ncpaper.published import load_published
from ncpaper.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_lease.py"
BENCH = REPO / "benchmarks" / "bench_gpu_step.py"


@pytest.fixture(scope="module")
def lease():
    spec = importlib.util.spec_from_file_location("gpu_lease", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_lease"] = module
    spec.loader.exec_module(module)
    return module


def test_paper_seeds_are_the_paper_runs_with_seeds_1_and_2_in_bfloat16():
    seeds = all_configs("paper_seeds")
    assert len(seeds) == 20 and {c.seed for c in seeds} == {1, 2} and {c.precision for c in seeds} == {"bfloat16"}
    for figure in ("cifar10", "mnist"):
        paper = {json.dumps({**c.to_dict(), "seed": None}, sort_keys=True) for c in figure_configs("paper", figure)}
        for config in figure_configs("paper_seeds", figure):
            settings = {k: v for k, v in config.to_dict().items() if k != "precision"}
            assert json.dumps({**settings, "seed": None}, sort_keys=True) in paper


def test_convnet_profiles_expand_into_full_cifar10_runs_pilots_and_a_precision_pilot():
    runs = all_configs("convnet")
    assert len(runs) == 6 * 3 and {c.seed for c in runs} == {0, 1, 2} and 0.0 in {c.weight_decay for c in runs}
    for c in runs:
        assert (c.model, c.dataset, c.n_per_class, c.n_test_per_class, c.input_pool) == ("convnet", "cifar10", 5000,
                                                                                           1000, 1)
        assert (c.device, c.precision, c.sizes["channels_last"], c.sizes["init"]) == ("cuda", "bfloat16", True, "he")
    pilot = section_configs("convnet", "pilot", "cifar10")
    assert [c.weight_decay for c in pilot] == sorted({c.weight_decay for c in runs})
    assert {(c.n_per_class, c.seed, c.epochs) for c in pilot} == {(1000, 0, runs[0].epochs)}
    (check,) = section_configs("convnet", "precision_pilot", "cifar10")
    assert check in pilot
    toy = all_configs("convnet_toy")
    assert {c.device for c in toy} == {"cpu"} and set(load_profile("convnet_toy")) >= {"pilot", "precision_pilot"}


def test_training_flop_of_the_lease_runs(lease):
    """Per run: training_flops x images x epochs; the MLP's by hand, the ConvNet's against torch's own count."""
    mlp = figure_configs("paper_seeds", "cifar10")[0]
    by_hand = 6 * (3072 * 2048 + 2 * 2048 * 2048 + 2048 * 10) - 2 * 3072 * 2048
    assert lease.training_flop(mlp) == by_hand * 50_000 * 200
    net = figure_configs("convnet", "cifar10")[0]
    model = make_model("convnet", (3, 32, 32), 10, **net.sizes)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert lease.training_flop(net) == counter.get_total_flops() / 2 * 50_000 * net.epochs
    total = sum(lease.training_flop(c) for c in all_configs("paper_seeds"))
    assert 13.9e15 < total < 14.1e15  # the 16 PFLOP counted 6 x weights (the first layer's input gradient too)


def test_shared_device_finish_times(lease):
    """R_k / max(n, saturation) each: n equal runs take n F / R together, a lone run s F / R, a mix sum F_i / R_i."""
    device = lease.SharedDevice(rates={"a": 2.0, "b": 5.0}, saturation=1)
    assert device.finish_times([("a", 10.0)] * 4) == pytest.approx([20.0] * 4)
    assert device.finish_times([("a", 10.0)] * 4, parallel=2) == pytest.approx([10.0, 10.0, 20.0, 20.0])
    mixed = device.finish_times([("a", 10.0), ("b", 10.0), ("b", 40.0)])
    assert max(mixed) == pytest.approx(10 / 2 + 10 / 5 + 40 / 5)
    lone = lease.SharedDevice(rates={"a": 2.0}, saturation=3)
    assert lone.finish_times([("a", 10.0), ("a", 10.0)]) == pytest.approx([15.0, 15.0])
    with pytest.raises(ValueError, match="--rate c=TFLOPS"):
        device.finish_times([("c", 1.0)])


def _job(kind, flop, rank):
    return SimpleNamespace(kind=kind, flop=flop, rank=rank)


def test_startable_keeps_the_budget_and_holds_time_for_higher_priority_runs(lease):
    device = lease.SharedDevice(rates={"a": 1.0}, saturation=1)
    going = [lease.Flight(_job("a", 10.0, 0), 0.0, 6.0)]
    big, small = _job("a", 10.0, 1), _job("a", 2.0, 2)
    # 6 + 10 > 12 s: the big run would not finish (nor let the running one finish); the small one fits
    assert lease.startable(device, going, [big, small], 12.0, 5) == [small]
    assert lease.startable(device, going, [big, small], 16.0, 5) == [big]  # then the small one no longer fits
    assert lease.startable(device, going, [big, small], 16.0, 0) == []  # no free slot
    waiting = _job("a", 8.0, 1)  # a run waiting for its pilot, before the small one in priority
    assert lease.startable(device, going, [small], 14.0, 5, reserved=[waiting]) == []
    assert lease.startable(device, going, [small], 16.0, 5, reserved=[waiting]) == [small]
    late = _job("a", 8.0, 3)  # lower priority than the small run: holds nothing
    assert lease.startable(device, going, [small], 14.0, 5, reserved=[late]) == [small]


def test_plan_runs_pilots_first_and_defers_what_the_budget_cannot_finish(lease):
    fast = lease.SharedDevice(rates={k: 1.0 for k in lease.RATES}, saturation=1)  # 1 FLOP/s: toy runs take ~1e8 s
    flops = {r["run"]: r["pflop"] * 1e15 for r in lease.plan(["convnet_toy"], 1e12, 4, fast)}
    records = lease.plan(["convnet_toy", "smoke/mnist"], sum(flops.values()) * 10, 4, fast)
    pilots = [r for r in records if r["folder"] == "convnet_toy_pilot"]
    figure = [r for r in records if r["folder"] == "convnet_toy"]
    assert len(pilots) == 4 and len(figure) == 2 * 2  # 3 lambdas + 1 float32; lambda 0 and 1 chosen, 2 seeds
    last_pilot = max(r["finish_s"] for r in pilots if r["role"] == "pilot")  # the float32 run chooses nothing
    assert all(r["start_s"] >= last_pilot for r in figure)
    assert len([r for r in records if r["folder"] == "smoke"]) == 3 and all(r["finish_s"] for r in records)
    assert all(r["finish_s"] <= sum(flops.values()) * 10 for r in records)
    starved = lease.plan(["convnet_toy"], 1.0, 4, fast)
    assert all(r["start_s"] is None for r in starved) and len(starved) == 4 + 6  # deferred, every candidate waiting


def test_schedule_holds_back_only_the_piloted_figure_runs(lease):
    """convnet_toy's figure runs wait for its lambda pilot; smoke's runs (figures and phase diagrams) are queued at
    once, after the pilots; the released runs are what the choice keeps."""
    schedule = lease.Schedule(["convnet_toy", "smoke"], None, lambda job: False)
    assert [j.role for j in schedule.queue[:4]] == ["pilot"] * 3 + ["precision pilot"]
    assert len(schedule.queue) == 4 + len(all_configs("smoke")) and len(schedule.waiting["convnet_toy"]) == 6
    schedule.release({schedule.queue[0].ident}, lambda profile, jobs: jobs[:1])
    assert "convnet_toy" in schedule.waiting  # a lambda pilot is in flight
    schedule.queue = [j for j in schedule.queue if j.role not in ("pilot", "precision pilot")]
    schedule.release({next(iter(schedule.pilots["convnet_toy"])).ident}, lambda profile, jobs: jobs[:1])
    assert "convnet_toy" in schedule.waiting
    schedule.release(set(), lambda profile, jobs: [j for j in jobs if j.config.weight_decay == 0])
    assert not schedule.waiting and [j.config.weight_decay for j in schedule.queue if j.folder == "convnet_toy"] == [
        0.0, 0.0]


def test_choose_weight_decays_prefers_runs_that_fit_and_collapse(lease):
    last = pd.DataFrame({"weight_decay": [0.0, 1e-3, 2e-3, 4e-3, 8e-3],
                         "train_error": [0.0, 0.0, 0.001, 0.0, 0.05],
                         "nc1": [1.0, 0.5, 0.1, 0.01, 0.001],
                         "nc3_centred": [1.0, 0.1, 0.15, 0.1, 0.001]})
    # fit and 5x: 2e-3 (min ratio 6.7), 4e-3 (10); fits only: 1e-3 (2); 8e-3 does not fit
    assert lease.choose_weight_decays(last, 1) == [4e-3]
    assert lease.choose_weight_decays(last, 2) == [2e-3, 4e-3]
    assert lease.choose_weight_decays(last, 3) == [1e-3, 2e-3, 4e-3]
    assert lease.choose_weight_decays(last, 9) == [1e-3, 2e-3, 4e-3, 8e-3]
    no_zero = last[last["weight_decay"] > 0]
    assert lease.choose_weight_decays(no_zero, 1) == [1e-3]  # only the fit ranks: the smallest training error first


def test_precision_check_compares_nc1_and_nc3_with_float32(lease):
    def run(precision, nc1, nc3, settled=None):
        row = pd.Series({"nc1": nc1, "nc3_centred": nc3})
        config = SimpleNamespace(precision=precision, describe=lambda: "a run")
        return SimpleNamespace(config=config, last=row, settled=settled)

    check = lease.precision_check(run("float32", 0.2, 0.04), run("bfloat16", 0.201, 0.0403))
    assert check["last_nc1_relative_difference"] == pytest.approx(0.005)
    assert check["largest_relative_difference"] == pytest.approx(0.0075) and check["passes"]
    assert not lease.precision_check(run("float32", 0.2, 0.04), run("bfloat16", 0.2, 0.05))["passes"]
    settled = pd.Series({"nc1": math.nan, "nc3_centred": math.nan})
    check = lease.precision_check(run("float32", 0.2, 0.04, settled), run("bfloat16", 0.2, 0.04, settled))
    assert check["passes"] and "settled_nc1_relative_difference" not in check  # both undefined: not compared
    one_nan = pd.Series({"nc1": 0.1, "nc3_centred": 0.1})
    assert not lease.precision_check(run("float32", 0.2, 0.04, settled), run("bfloat16", 0.2, 0.04, one_nan))["passes"]


def test_stage_gzips_mnist_and_unstage_restores_every_byte(lease, tmp_path):
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(bytes(range(256)) * 400)
    (root / "cifar10-jpeg.tar.gz").write_bytes(b"tarball")
    (root / "README.md").write_text("not needed")
    lease.stage(tmp_path / "staged", root)
    staged = sorted(p.relative_to(tmp_path / "staged").as_posix() for p in (tmp_path / "staged").rglob("*")
                    if p.is_file())
    assert staged == ["MNIST/raw/train-images-idx3-ubyte.gz", "SHA256SUMS", "cifar10-jpeg.tar.gz"]
    back = lease.unstage(tmp_path / "staged", tmp_path / "restored")
    for name in ("MNIST/raw/train-images-idx3-ubyte", "cifar10-jpeg.tar.gz"):
        assert (back / name).read_bytes() == (root / name).read_bytes()
    (tmp_path / "staged" / "cifar10-jpeg.tar.gz").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="does not match its sha256"):
        lease.unstage(tmp_path / "staged", tmp_path / "again")


def _lease(tmp_path, *extra, publish_to="published"):
    command = [sys.executable, str(SCRIPT), "train", "--profiles", "convnet_toy", "smoke/mnist", "--device", "cpu",
               "--parallel", "2", "--results", str(tmp_path / "results"), "--publish-to", str(tmp_path / publish_to),
               "--out", str(tmp_path / "out"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=os.environ.copy())


def test_a_toy_lease_on_the_cpu_trains_publishes_bundles_and_resumes(lease, tmp_path):
    done = _lease(tmp_path, "--budget", "600")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "lease.json").read_text())
    chosen = report["chosen_weight_decays"]["convnet_toy"]["cifar10"]
    assert len(chosen) == 1 and chosen[0] in {0.01, 0.05}
    roles = pd.Series([r["role"] for r in report["runs"]]).value_counts().to_dict()
    assert roles == {"precision pilot": 1, "pilot": 3, "figure": 2 * 2 + 3}  # the bf16 twin is the pilot's run
    # every run published where the book finds it, with the key `ncpaper sweep` gives it
    figure = [c for c in figure_configs("convnet_toy", "cifar10") if c.weight_decay in (0.0, *chosen)]
    published = load_published(figure, "convnet_toy", tmp_path / "published")
    swept = run_sweep(figure, results=tmp_path / "results", progress=False)  # read from the cache, not retrained
    assert [r.meta["key"] for r in published] == [r.meta["key"] for r in swept]
    # the columns the published paper runs lack: NC at every hidden layer and on the test set; with weight decay,
    # the settled row's gradient ratio at every layer and NC1's bounds (the toy VGG-like net has L = 6 layers)
    for run in published:
        assert {f"nc1_layer_{k}" for k in range(1, 6)} | {"test_nc1"} <= set(run.table.columns)
        if run.config.weight_decay > 0:
            settled = run.settled
            assert {f"settle_gradient_{k}" for k in range(1, 7)} | {"nc1_lower", "nc1_upper"} <= set(settled.index)
    pilots = load_published(section_configs("convnet_toy", "pilot", "cifar10"), "convnet_toy_pilot",
                            tmp_path / "published")
    assert len(load_published(figure_configs("smoke", "mnist"), "smoke", tmp_path / "published")) == 3
    # per run: TFLOP/s = training FLOP / training seconds; what it ran with
    by_key = {r["key"]: r for r in report["runs"]}
    assert all(r["trained_here"] for r in report["runs"])  # none was in the result cache before
    for run in published + pilots:
        record = by_key[run.meta["key"]]
        assert record["training_pflop"] * 1e15 == pytest.approx(lease.training_flop(run.config))
        assert record["tflops"] == pytest.approx(record["training_pflop"] * 1e3 / run.meta["timings"]["train_seconds"])
        assert record["precision"] == run.config.precision and record["tf32"] is False
        assert record["last_nc1"] == pytest.approx(float(run.last["nc1"]))
        assert record["fraction_of_peak"] is None  # a CPU has no entry in the peak table
    (check,) = report["precision_checks"]
    float32 = next(r for r in report["runs"] if r["role"] == "precision pilot")
    assert check["last_nc1_float32"] == float32["last_nc1"] and check["precision"] == "bfloat16"
    # the bundle holds every published file; merging it elsewhere publishes the same runs
    with tarfile.open(tmp_path / "out" / "published.tar") as tar:
        names = {n for n in tar.getnames() if n.endswith((".csv", ".json"))}
    assert names == {p.relative_to(tmp_path / "published").as_posix()
                     for p in (tmp_path / "published").glob("*/*/*")}
    merged = subprocess.run([sys.executable, str(SCRIPT), "merge", str(tmp_path / "out" / "published.tar"), "--to",
                             str(tmp_path / "merged")], capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert [r.meta["key"] for r in load_published(figure, "convnet_toy", tmp_path / "merged")] == [
        r.meta["key"] for r in published]
    table = subprocess.run([sys.executable, str(SCRIPT), "report", str(tmp_path / "out" / "lease.json")],
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and table.stdout.count("\n| ") == 1 + len(by_key), table.stderr
    # the next lease trains nothing: every run is published (the same pilots make the same choice)
    again = _lease(tmp_path, "--budget", "600")
    assert again.returncode == 0 and "finished 0, already published 11" in again.stdout, again.stdout + again.stderr
    # a budget that nothing fits into starts nothing: every run deferred, exit status 3
    starved = _lease(tmp_path, "--budget", "0", publish_to="elsewhere")
    assert starved.returncode == 3, starved.stdout + starved.stderr
    report = json.loads((tmp_path / "out" / "lease.json").read_text())
    assert report["runs"] == [] and len(report["deferred"]) == 4 + 3 + 6


def test_bench_gpu_step_runs_the_eager_variants_on_the_cpu(tmp_path):
    out = tmp_path / "steps.json"
    done = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--toy", "--steps", "2", "--repeats", "1",
                           "--measure", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    steps = [r for r in rows if "ms_per_step" in r]
    assert {(r["figure"], r["precision"], r["channels_last"]) for r in steps} == {
        ("mnist", "float32", None), ("mnist", "bfloat16", None),
        ("cifar10", "float32", True), ("cifar10", "bfloat16", True), ("cifar10", "bfloat16", False)}
    for row in steps:
        config = figure_configs(row["profile"], row["figure"])[0]
        shape = (1, 28, 28) if config.dataset == "mnist" else (3, 16, 16)
        flops = training_flops(make_model(config.model, shape, 10, **config.sizes), shape) * config.batch_size
        assert row["tflops"] == pytest.approx(flops / (row["ms_per_step"] / 1e3) / 1e12)
    assert len([r for r in rows if "measure_seconds" in r]) == 2
