"""One GPU lease (issue 26): train every run of some profiles that is not published yet, side by side on one GPU,
within a time budget, publishing each run as it finishes.

    python scripts/gpu_lease.py plan --profiles convnet paper_seeds          # FLOP and a timeline; trains nothing
    python scripts/gpu_lease.py stage data/lease                             # here: the data to carry (< 64 MiB)
    python scripts/gpu_lease.py command --profiles convnet paper_seeds       # here: the device command line
    python3 scripts/gpu_lease.py train --profiles convnet paper_seeds --budget 400 --staged-data data/lease \\
        --results /tmp/results --publish-to /tmp/published --out $OUT        # there, as one device call
    python scripts/gpu_lease.py merge <files_at>/published.tar               # here: into published/<folder>/
    python scripts/gpu_lease.py report <files_at>/lease.json                 # here: the runs' TFLOP/s, a table

**What a lease trains**, per profile, in this order: its lambda pilot (the ``pilot`` entry: the figure's candidate
lambdas on fewer images), its precision pilot (each ``precision_pilot`` config trained in float32 as well as in its
own precision; :func:`precision_check` compares NC1 and NC3), then its figure runs: lambda = 0 and the
``choose_weight_decays`` candidates that :func:`choose_weight_decays` picks from the pilot, every seed. A profile
without a pilot trains all its runs. Pilots are published in ``published/<profile>_pilot/``, the rest in
``published/<profile>/``. A run published there already (in the repository or in ``--publish-to``) is not trained
again, so a lease that ends early is resumed by the next one, and the choice is made again from the same pilots.

**Side by side**: each run is one spawned process running :func:`ncpaper.results.run_or_load` on one CPU thread (so
it has the key ``ncpaper sweep`` gives it), its training set on the device (``fit`` moves it there once); at most
``--parallel`` at once (the H200 machine has 16 cores). A float32 run computes in IEEE float32: the worker turns
off TF32 for matrix products and cuDNN convolutions (torch lets cuDNN use TF32 by default), so that "float32" in a
run's config means what it says; a bfloat16 run's products run under autocast (``fit``), the rest in float32.

**Time**: a run is started only if :class:`SharedDevice`, a model of the GPU shared by time slices, says that it
and every run already going finish within ``--budget`` seconds of the start. In the model each of the n runs in
flight advances at R_kind / max(n, saturation) FLOP/s, where R_kind is the effective rate of its kind of run
(training FLOP per second of a busy GPU, measurements and settling included) and ``saturation`` the number of
runs it takes to keep the GPU busy. R_kind starts from :data:`RATES` and is re-estimated from each finished run.
After ``--deadline`` seconds, runs still going are stopped (each finished one is already published and bundled).

**What comes back**: ``--out`` holds ``published.tar`` (every run published so far, rewritten after each one),
``lease.json`` (settings, rates, the pilots' choices and precision checks, one record per run with its TFLOP/s and
fraction of the chip's peak) and ``lease.csv`` (the runs' records); the device returns at most 8 files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run from anywhere, ncpaper installed or not (the device has no venv)
    sys.path.insert(0, str(REPOSITORY))

# Dense peaks of the SXM parts, TFLOP/s, by NVIDIA's datasheets (the H200 has the H100's arithmetic); "float32" is
# the plain (non-tensor) rate. A bf16 product of 8192^3 ran at 769-798 TFLOP/s on this workplace's H200s.
PEAK_TFLOPS = {"H200": {"bfloat16": 989.0, "tfloat32": 494.0, "float32": 67.0},
               "H100": {"bfloat16": 989.0, "tfloat32": 494.0, "float32": 67.0}}

# Effective rates R_kind (TFLOP/s of training FLOP on a busy GPU, measurements included), keyed "model/precision".
# mlp/float32: the 10 published paper runs on one H100 (paper_rate(): their training FLOP over the 688 s from the
# first start to the last finish, 10.2). mlp/bfloat16: x 1.26, bf16 over float32 under sharing in the H100 pilot.
# The convnet's are assumptions, to be replaced by the lease's own measurements (its pilots finish first).
RATES = {"mlp/float32": 10.2, "mlp/bfloat16": 12.8, "convnet/bfloat16": 50.0, "convnet/float32": 15.0}
SATURATION = 2.7  # runs in flight it takes to keep the GPU busy: 2 paper runs alone ran at 73% of 8's aggregate
COLLAPSE_FACTOR = 5.0  # the book's criterion: NC1 and centred NC3 at least 5x below lambda = 0's
PRECISION_TOLERANCE = 0.01  # a precision pilot passes when NC1 and NC3 are within 1% of float32's
PILOT = "pilot"
PRECISION_PILOT = "precision_pilot"


# ---------------------------------------------------------------------------------------------------- the runs
@dataclass
class Job:
    """One run of the lease: its config, the published folder it goes to and why it is trained."""

    config: object  # ncpaper.train.RunConfig
    folder: str  # published/<folder>/
    role: str  # "precision pilot", "pilot" or "figure"
    profile: str
    entry: str
    flop: float = 0.0  # training FLOP: training_flops x images x epochs
    rank: int = 0  # priority in the lease, 0 first (set by Schedule)
    piloted: bool = False  # a figure run whose lambda is chosen by a pilot

    def __post_init__(self):
        self.flop = self.flop or training_flop(self.config)

    @property
    def kind(self) -> str:
        return f"{self.config.model}/{self.config.precision}"

    @property
    def ident(self) -> str:
        return json.dumps(self.config.to_dict(), sort_keys=True)


def training_flop(config) -> float:
    """FLOP of a run's training: :func:`ncpaper.models.training_flops` x training images x epochs."""
    from ncpaper import data
    from ncpaper.models import make_model, training_flops

    shape = data.input_shape(config.dataset, config.input_pool)
    classes = 10  # MNIST and CIFAR-10
    net = make_model(config.model, shape, classes, **config.sizes)
    return float(training_flops(net, shape)) * config.n_per_class * classes * config.epochs


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``profile`` (all its runs) or ``profile/figure`` (one entry of its figures section, with its pilots)."""
    profile, _, entry = spec.partition("/")
    return profile, entry or None


def profile_jobs(spec: str, device: str | None = None) -> dict[str, list[Job]]:
    """The runs a lease may train for ``spec``: {"precision pilot": [...], "pilot": [...], "figure": [...]}.

    "figure" holds every run of the profile's sections; those of a figure with a pilot entry are ``piloted``: every
    candidate lambda, of which the lease keeps lambda = 0 and those its pilot chooses.
    """
    from ncpaper.profiles import SECTIONS, load_profile, section_configs

    profile, only = parse_spec(spec)
    spec_dict = load_profile(profile)
    entries = [(s, e) for s in SECTIONS for e in spec_dict.get(s, {}) if only is None or (s, e) == ("figures", only)]
    if not entries:
        raise ValueError(f"profile {profile!r} has no figure {only!r}; it has {list(spec_dict.get('figures', {}))}")
    jobs: dict[str, list[Job]] = {"precision pilot": [], "pilot": [], "figure": []}
    for section, entry in entries:
        piloted = section == "figures" and entry in spec_dict.get(PILOT, {})
        for config in section_configs(profile, section, entry, device):
            jobs["figure"].append(Job(config, profile, "figure", profile, entry, piloted=piloted))
        if piloted:
            for config in section_configs(profile, PILOT, entry, device):
                jobs["pilot"].append(Job(config, f"{profile}_pilot", "pilot", profile, entry))
        if section == "figures" and entry in spec_dict.get(PRECISION_PILOT, {}):
            for config in section_configs(profile, PRECISION_PILOT, entry, device):
                for precision in dict.fromkeys(["float32", config.precision]):
                    jobs["precision pilot"].append(Job(dataclasses.replace(config, precision=precision),
                                                       f"{profile}_pilot", "precision pilot", profile, entry))
    jobs["figure"].sort(key=lambda j: (j.config.seed, j.entry, j.config.weight_decay))  # whole seeds first
    return jobs


def keep_count(profile: str) -> int:
    from ncpaper.profiles import load_profile

    keep = load_profile(profile).get("choose_weight_decays", 3)
    if not (isinstance(keep, int) and keep >= 1):
        raise ValueError(f"profile {profile!r}: choose_weight_decays must be a positive integer, got {keep!r}")
    return keep


def choose_weight_decays(last, keep: int, factor: float = COLLAPSE_FACTOR, max_train_error: float | None = None):
    """The ``keep`` lambdas > 0 of a pilot to train at full scale, ascending.

    ``last``: one row per pilot run (columns weight_decay, train_error, nc1, nc3_centred: its last training row).
    Ranked: first those that fit (training error <= 0.2%) with NC1 and centred NC3 both at least ``factor`` x below
    lambda = 0's, then those that only fit, then the rest; within a group by min(NC1 ratio, NC3 ratio), largest
    first (ratios are nan without a lambda = 0 run, and then only the fit and the training error rank).
    """
    from ncpaper.analysis import TERMINAL_TRAIN_ERROR

    max_error = TERMINAL_TRAIN_ERROR if max_train_error is None else max_train_error
    rows = last.set_index("weight_decay")
    zero = rows.loc[0.0] if 0.0 in rows.index else None
    ranked = []
    for lam, row in rows.iterrows():
        if lam <= 0:
            continue
        ratio = math.nan if zero is None else min(zero["nc1"] / row["nc1"], zero["nc3_centred"] / row["nc3_centred"])
        fits = row["train_error"] <= max_error
        group = 0 if fits and ratio >= factor else 1 if fits else 2
        ranked.append((group, -ratio if math.isfinite(ratio) else math.inf, row["train_error"], lam))
    return sorted(lam for *_, lam in sorted(ranked)[:keep])


def precision_check(reference, other) -> dict:
    """NC1 and centred NC3 of a run (``other``, e.g. bfloat16) against the same run in float32 (``reference``).

    Both runs' last training rows and, where both have one, their settled rows; relative differences
    |other - reference| / reference; ``passes`` when every one is at most 1%.
    """
    out = {"run": reference.config.describe(), "precision": other.config.precision}
    worst = 0.0
    for phase, a, b in (("last", reference.last, other.last), ("settled", reference.settled, other.settled)):
        if a is None or b is None:
            continue
        if all(math.isnan(float(row[c])) for row in (a, b) for c in ("nc1", "nc3_centred")):
            continue  # both undefined (a network that settled to zero): nothing to compare
        for column in ("nc1", "nc3_centred"):
            diff = _relative_difference(float(b[column]), float(a[column]))
            out[f"{phase}_{column}_float32"], out[f"{phase}_{column}_{other.config.precision}"] = (
                float(a[column]), float(b[column]))
            out[f"{phase}_{column}_relative_difference"] = diff
            worst = max(worst, diff)
    out["largest_relative_difference"] = worst
    out["passes"] = bool(worst <= PRECISION_TOLERANCE)
    return out


def _relative_difference(value: float, reference: float) -> float:
    """|value - reference| / |reference|; 0 when both are 0, inf when only the reference is 0 or either is nan."""
    if value == reference:
        return 0.0
    if reference == 0 or math.isnan(value) or math.isnan(reference):
        return math.inf
    return abs(value - reference) / abs(reference)


# ------------------------------------------------------------------------------------------- the time model
@dataclass
class SharedDevice:
    """The GPU shared by time slices among the runs in flight, as a model for the budget and the plan.

    Each of the n runs in flight advances at R_k / max(n, saturation) FLOP/s (R_k: the effective rate of its kind,
    in FLOP/s). Once enough runs are in flight, a set of runs takes sum_i F_i / R_i seconds whatever the order.
    """

    rates: dict = field(default_factory=lambda: {k: v * 1e12 for k, v in RATES.items()})
    saturation: float = SATURATION

    def rate(self, kind: str) -> float:
        if kind not in self.rates:
            raise ValueError(f"no rate for runs of kind {kind!r}: give one with --rate {kind}=TFLOPS")
        return self.rates[kind]

    def finish_times(self, remaining: list[tuple[str, float]], parallel: int | None = None) -> list[float]:
        """Seconds from now until each of ``remaining`` ((kind, FLOP left)) finishes; the first ``parallel`` run
        at once, the others start in order as runs finish."""
        left = [float(f) for _, f in remaining]
        rates = [self.rate(k) for k, _ in remaining]
        done = [math.nan] * len(left)
        parallel = parallel or len(left)
        active, waiting, now = list(range(min(parallel, len(left)))), list(range(parallel, len(left))), 0.0
        while active:
            share = 1.0 / max(len(active), self.saturation)
            step = min(left[i] / (rates[i] * share) for i in active)
            for i in active:
                left[i] -= rates[i] * share * step
            now += step
            for i in [i for i in active if left[i] <= 1e-9 * max(1.0, rates[i])]:
                done[i] = now
                active.remove(i)
                if waiting:
                    active.append(waiting.pop(0))
        return done

    def advance(self, flights: list[Flight], seconds: float, floor: float = 0.02) -> None:
        """Move the runs in flight on by ``seconds`` of the model; a run that the model has finished but that has
        not reported keeps ``floor`` of its FLOP to go (it is slower than modelled)."""
        share = 1.0 / max(len(flights), self.saturation)
        for flight in flights:
            flight.left = max(flight.left - self.rate(flight.job.kind) * share * seconds, floor * flight.job.flop)
            flight.share_seconds += share * seconds

    def observe(self, kind: str, flop: float, share_seconds: float) -> None:
        """Re-estimate R_kind from a finished run: its FLOP over the share of the GPU it had."""
        if share_seconds > 0:
            self.rates[kind] = flop / share_seconds


@dataclass
class Flight:
    """A run in flight: the job, when it started (lease seconds) and the model's view of it."""

    job: Job
    started: float
    left: float
    share_seconds: float = 0.0
    clock: float = field(default_factory=time.time)  # wall clock at the start, to tell a run trained here


def startable(device: SharedDevice, flights: list[Flight], queue: list[Job], time_left: float, free: int,
              reserved: list[Job] = ()) -> list[Job]:
    """The queued runs to start now, in queue order (the lease's priority): each only if, in the model, it and every
    run in flight or picked before it finish within ``time_left`` seconds, and so do the ``reserved`` runs (runs
    not startable yet, waiting for their pilots) that rank before it and fit: a lower-priority run never takes the
    time that a higher-priority run released later will need."""
    def fits(jobs: list[Job]) -> bool:
        going = [(f.job.kind, f.left) for f in flights] + [(j.kind, j.flop) for j in jobs]
        return not going or max(device.finish_times(going)) <= time_left

    held: list[Job] = []
    for job in sorted(reserved, key=lambda j: j.rank):
        if fits([*held, job]):
            held.append(job)
    picked: list[Job] = []
    for job in queue:
        if len(picked) >= free:
            break
        if fits([*(j for j in held if j.rank < job.rank), *picked, job]):
            picked.append(job)
    return picked


class Schedule:
    """The lease's queue, in priority order (the profiles' order; in each, its lambda pilot, its precision pilot, its
    runs by seed): a profile's figure runs are queued once none of its lambda-pilot runs is queued or in flight,
    those that ``choose`` keeps. Runs already done (``done(job)``: finished or published) are never queued."""

    def __init__(self, specs: list[str], device_name: str | None, done):
        self.done = done
        self.queue: list[Job] = []
        self.waiting: dict[str, list[Job]] = {}  # profile -> its figure jobs, until its pilots are settled
        self.pilots: dict[str, list[Job]] = {}
        rank = 0
        for spec in specs:
            profile, _ = parse_spec(spec)
            jobs = profile_jobs(spec, device_name)
            for job in jobs["pilot"] + jobs["precision pilot"] + jobs["figure"]:
                job.rank, rank = rank, rank + 1
            self.pilots[profile] = self.pilots.get(profile, []) + jobs["pilot"] + jobs["precision pilot"]
            self.add(jobs["pilot"] + jobs["precision pilot"])  # a precision pilot that is a lambda pilot: "pilot"
            if piloted := [j for j in jobs["figure"] if j.piloted]:
                self.waiting.setdefault(profile, []).extend(piloted)
            self.add([j for j in jobs["figure"] if not j.piloted])

    def add(self, jobs: list[Job]) -> None:
        queued = {j.ident for j in self.queue}
        for job in jobs:
            if job.ident not in queued and not self.done(job):
                self.queue.append(job)
                queued.add(job.ident)
        self.queue.sort(key=lambda j: j.rank)

    def release(self, in_flight: set[str], choose) -> None:
        """Queue ``choose(profile, figure jobs)`` for each profile none of whose lambda pilots is queued or in
        flight (its precision pilot may still run: it chooses nothing)."""
        pending = {j.ident for j in self.queue} | in_flight
        for profile in list(self.waiting):
            if not any(j.ident in pending for j in self.pilots[profile] if j.role == "pilot"):
                self.add(choose(profile, self.waiting.pop(profile)))

    def reserved(self) -> list[Job]:
        """The runs waiting for their pilots, as :func:`stand_in_choice` guesses the choice (for :func:`startable`)."""
        return [j for profile, jobs in self.waiting.items() for j in stand_in_choice(profile, jobs)]

    def deferred(self) -> list[Job]:
        return self.queue + [j for jobs in self.waiting.values() for j in jobs]


def stand_in_choice(profile: str, figure: list[Job]) -> list[Job]:
    """For the plan: lambda = 0 and the first ``choose_weight_decays`` candidates stand in for the pilot's choice."""
    keep = keep_count(profile)
    lams = {e: sorted({j.config.weight_decay for j in figure if j.entry == e and j.config.weight_decay > 0})[:keep]
            for e in {j.entry for j in figure}}
    return [j for j in figure if j.config.weight_decay == 0 or j.config.weight_decay in lams[j.entry]]


def plan(specs: list[str], budget: float, parallel: int, device: SharedDevice, device_name: str | None = None,
         published: list[Path] | None = None) -> list[dict]:
    """The lease as the model sees it: one record per run (start and finish, seconds; None: deferred), in the order
    the lease would start them. Runs published under ``published`` roots are left out."""
    finished: set[str] = set()
    schedule = Schedule(specs, device_name, lambda j: j.ident in finished or _published_run(j, published or []))
    records, flights, clock = [], [], 0.0
    while True:
        schedule.release({f.job.ident for f in flights}, stand_in_choice)
        for job in startable(device, flights, schedule.queue, budget - clock, parallel - len(flights),
                             schedule.reserved()):
            schedule.queue.remove(job)
            flights.append(Flight(job, clock, job.flop))
        if not flights:
            break
        ends = device.finish_times([(f.job.kind, f.left) for f in flights])
        step = min(ends)
        device.advance(flights, step, floor=0.0)
        clock += step
        for flight in [f for f, end in zip(flights, ends, strict=True) if end <= step * (1 + 1e-12)]:
            flights.remove(flight)
            finished.add(flight.job.ident)
            records.append(_plan_record(flight.job, flight.started, clock))
    schedule.release(set(), stand_in_choice)
    return records + [_plan_record(j, None, None) for j in schedule.deferred()]


def _plan_record(job: Job, start, finish) -> dict:
    return {"job": job, "folder": job.folder, "role": job.role, "run": job.config.describe(), "kind": job.kind,
            "pflop": job.flop / 1e15, "start_s": start, "finish_s": finish}


# ------------------------------------------------------------------------------------------- published runs
def _published_run(job: Job, folders: list[Path]):
    """The published run of ``job`` in any of ``folders`` (published/ roots), or None."""
    from ncpaper.published import split_published

    for root in folders:
        if (Path(root) / job.folder).is_dir():
            runs, _ = split_published([job.config], job.folder, root)
            if runs:
                return runs[0]
    return None


def bundle(published: Path, target: Path) -> None:
    """``target``: a tar of every published folder under ``published`` (written to a temporary name, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        for folder in sorted(p for p in published.iterdir() if p.is_dir()):
            tar.add(folder, arcname=folder.name)
    os.replace(tmp, target)


def merge(tar_path: Path, root: Path | None = None) -> list[str]:
    """Publish the runs of a lease's ``published.tar`` into ``root`` (default: the repository's published/)."""
    from ncpaper.published import publish
    from ncpaper.results import load_run

    merged = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        for folder in sorted(p for p in Path(tmp).iterdir() if p.is_dir()):
            for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                run = load_run(run_dir, older_metrics=True)
                if run is None:
                    raise ValueError(f"{folder.name}/{run_dir.name} in {tar_path} is not a valid published run")
                publish([run], folder.name, root)
                merged.append(f"{folder.name}/{run_dir.name}")
    return merged


# ---------------------------------------------------------------------------------------------------- data
def stage(target: Path, data_root: Path) -> list[Path]:
    """Copy what the lease's runs read into ``target`` (to carry to the device): the CIFAR-10 tarball (or the
    official batches) as it is and MNIST's IDX files gzipped (53 MB -> ~11 MB), with ``SHA256SUMS`` of the
    originals. :func:`unstage` restores them there byte for byte, so the runs' checksums and keys are the same."""
    target.mkdir(parents=True, exist_ok=True)
    written, sums = [], []
    for path in sorted(p for p in data_root.rglob("*") if p.is_file()):
        rel = path.relative_to(data_root)
        if rel.parts[0] == "MNIST" and "raw" in rel.parts and not path.name.endswith(".gz"):
            out = target / rel.with_name(rel.name + ".gz")
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as src, gzip.open(out, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
        elif rel.parts[0] == "MNIST" or rel.name.startswith("cifar10-jpeg") or "cifar-10-batches-py" in rel.parts:
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
        else:
            continue
        sums.append(f"{_sha256(path)}  {rel.as_posix()}\n")
        written.append(out)
    (target / "SHA256SUMS").write_text("".join(sums))
    return written


def unstage(staged: Path, data_root: Path) -> Path:
    """Rebuild the data root from :func:`stage`'s folder and check every file against its sha256."""
    lines = (staged / "SHA256SUMS").read_text().splitlines()
    for line in lines:
        digest, rel = line.split("  ", 1)
        out = data_root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        source = staged / rel
        if source.exists():
            shutil.copyfile(source, out)
        else:
            with gzip.open(staged / (rel + ".gz"), "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if _sha256(out) != digest:
            raise ValueError(f"{rel} restored from {staged} does not match its sha256: stage it again")
    return data_root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the workers
def train_one(config, results: str, data_root: str | None, cudnn_benchmark: bool) -> dict:
    """Train (or read) one run in this worker process; return its folder and the settings it ran with."""
    import torch

    from ncpaper.results import run_or_load

    torch.set_num_threads(1)
    settings = {"tf32": False, "cudnn_benchmark": False, "torch": torch.__version__}
    if config.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # "float32" means IEEE float32
        torch.backends.cudnn.allow_tf32 = False  # (torch's default lets cuDNN convolutions use TF32)
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"] = bool(cudnn_benchmark)
    run = run_or_load(config, results, data_root=data_root, threads=1)
    return {"path": str(run.path), **settings}


def peak_tflops(device_name: str, precision: str) -> float | None:
    for model, peaks in PEAK_TFLOPS.items():
        if model in (device_name or ""):
            return peaks.get(precision)
    return None


def run_record(job: Job, run, started: float | None, finished: float | None, settings: dict | None = None) -> dict:
    """One line of the lease's report: what the run is, its speed and its end-of-training numbers."""
    timings, meta = run.meta["timings"], run.meta
    peak = peak_tflops(meta.get("device", ""), job.config.precision)
    tflops = job.flop / timings["train_seconds"] / 1e12
    record = {"folder": job.folder, "role": job.role, "key": meta["key"], "run": job.config.describe(),
              "architecture": job.config.architecture(), "dataset": job.config.dataset,
              "weight_decay": job.config.weight_decay, "seed": job.config.seed, "precision": job.config.precision,
              "device": meta.get("device"), "training_pflop": job.flop / 1e15,
              "train_seconds": timings["train_seconds"], "measure_seconds": timings.get("measure_seconds"),
              "settle_seconds": timings.get("settle_seconds"), "wall_seconds": timings.get("wall_seconds"),
              "tflops": tflops, "tflops_wall": job.flop / timings["wall_seconds"] / 1e12,
              "peak_tflops": peak, "fraction_of_peak": tflops / peak if peak else None,
              "started_s": started, "finished_s": finished, **(settings or {})}
    record.pop("path", None)
    for name, row in (("last", run.last), ("settled", run.settled)):
        if row is None:
            continue
        for column in ("train_error", "test_error", "nc1", "nc3_centred", "nc1_lower", "nc1_upper"):
            if column in row.index and not math.isnan(value := float(row[column])):
                record[f"{name}_{column}"] = value
    return record


# ------------------------------------------------------------------------------------------------ the lease
class Lease:
    """The live lease: the schedule, what finished and failed, the pilots' choices; after each finished run it
    publishes it, rewrites the bundle and the report."""

    def __init__(self, args, device: SharedDevice):
        self.args, self.device = args, device
        self.tic = time.monotonic()
        self.out = Path(args.out).resolve()
        self.publish_to = Path(args.publish_to).resolve()
        self.roots = [REPOSITORY / "published", self.publish_to]
        self.records, self.failed, self.checks, self.chosen = [], [], [], {}
        self.runs: dict[str, object] = {}  # config ident -> finished or published Run
        self.found: list[str] = []  # the runs found published, not trained
        self.schedule = Schedule(args.profiles, args.device, self._known)

    def now(self) -> float:
        return time.monotonic() - self.tic

    def _known(self, job: Job) -> bool:
        if job.ident not in self.runs and (run := _published_run(job, self.roots)) is not None:
            self.runs[job.ident] = run
            self.found.append(job.config.describe())
        return job.ident in self.runs

    def release(self, in_flight: set[str]) -> None:
        self.schedule.release(in_flight, self.choose)

    def choose(self, profile: str, figure: list[Job]) -> list[Job]:
        """Lambda = 0 and the lambdas :func:`choose_weight_decays` picks from each entry's finished pilot runs."""
        import pandas as pd

        jobs = []
        for entry in dict.fromkeys(j.entry for j in figure):
            pilot_runs = [self.runs[j.ident] for j in self.schedule.pilots[profile]
                          if j.role == "pilot" and j.entry == entry and j.ident in self.runs]
            if not pilot_runs:
                print(f"{self.now():6.0f} s  {profile}/{entry}: no pilot run finished, so none of its runs is "
                      "trained", flush=True)
                continue
            last = pd.DataFrame([{**r.last.to_dict(), "weight_decay": r.config.weight_decay} for r in pilot_runs])
            chosen = choose_weight_decays(last, keep_count(profile))
            self.chosen.setdefault(profile, {})[entry] = chosen
            print(f"{self.now():6.0f} s  {profile}/{entry}: the pilot chose lambda = {chosen} (and 0)", flush=True)
            jobs += [j for j in figure if j.entry == entry and j.config.weight_decay in (0.0, *chosen)]
        return jobs

    def finished(self, job: Job, run, flight: Flight, settings: dict) -> None:
        from ncpaper.published import publish

        self.runs[job.ident] = run
        publish([run], job.folder, self.publish_to)
        bundle(self.publish_to, self.out / "published.tar")
        record = run_record(job, run, flight.started, self.now(), settings)
        created = datetime.datetime.fromisoformat(run.meta["created"]).timestamp()
        record["trained_here"] = created >= flight.clock - 1  # else it was in the result cache already
        self.records.append(record)
        if record["trained_here"]:  # a run read from the cache says nothing about the rate
            self.device.observe(job.kind, job.flop, flight.share_seconds)
        print(f"{self.now():6.0f} s  done {job.config.describe()} ({job.role}): {record['tflops']:.3g} TFLOP/s, "
              f"train_error={record.get('last_train_error', math.nan):.4g} nc1={record.get('last_nc1', math.nan):.4g} "
              f"nc3_centred={record.get('last_nc3_centred', math.nan):.4g}", flush=True)
        self.check_precision()

    def fail(self, job: Job, err: BaseException) -> None:
        self.failed.append({"ident": job.ident, "run": job.config.describe(), "role": job.role,
                            "error": f"{type(err).__name__}: {err}"})
        print(f"{self.now():6.0f} s  FAILED {job.config.describe()}: {type(err).__name__}: {err}", flush=True)

    def check_precision(self) -> None:
        """Compare each precision pilot with its float32 twin once both are there."""
        checked = {(c["profile"], c["run"], c["precision"]) for c in self.checks}
        for profile, pilots in self.schedule.pilots.items():
            for job in (j for j in pilots if j.role == "precision pilot" and j.config.precision != "float32"):
                reference = dataclasses.replace(job.config, precision="float32")
                twin = json.dumps(reference.to_dict(), sort_keys=True)
                if job.ident not in self.runs or twin not in self.runs or (
                        profile, reference.describe(), job.config.precision) in checked:
                    continue
                check = {"profile": profile, **precision_check(self.runs[twin], self.runs[job.ident])}
                self.checks.append(check)
                verdict = "within" if check["passes"] else "NOT within"
                print(f"{self.now():6.0f} s  precision pilot {check['run']}: {job.config.precision} is {verdict} 1% of "
                      f"float32 (largest difference {check['largest_relative_difference']:.2%})", flush=True)

    def write(self, stopped: list[Job] = ()) -> None:
        """``lease.json`` and ``lease.csv`` in --out (written to temporary names, then renamed)."""
        import pandas as pd

        report = {"profiles": self.args.profiles, "budget_s": self.args.budget, "deadline_s": self.args.deadline,
                  "parallel": self.args.parallel, "elapsed_s": self.now(), "commit": os.environ.get("NCPAPER_COMMIT"),
                  "rates_tflops": {k: v / 1e12 for k, v in self.device.rates.items()},
                  "saturation": self.device.saturation, "already_published": self.found,
                  "chosen_weight_decays": self.chosen, "precision_checks": self.checks, "runs": self.records,
                  "failed": [{k: v for k, v in f.items() if k != "ident"} for f in self.failed],
                  "stopped": [j.config.describe() for j in stopped],
                  "deferred": [j.config.describe() for j in self.schedule.deferred()]}
        self.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.out / "lease.json", json.dumps(_finite(report), indent=2, default=str))
        _write_atomic(self.out / "lease.csv", pd.DataFrame(self.records).to_csv(index=False))


def _finite(value):
    """``value`` with every nan or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(args) -> int:
    """The lease: start what fits, publish what finishes, stop at the deadline. Exit status 0: everything done;
    1: a run failed; 3: runs deferred or stopped (the next lease resumes them)."""
    from ncpaper import data
    from ncpaper.results import load_run

    device = SharedDevice(saturation=args.saturation)
    device.rates.update({k: v * 1e12 for k, v in args.rate})
    if args.staged_data:
        args.data = str(unstage(Path(args.staged_data), Path(args.data or tempfile.mkdtemp(prefix="ncpaper-data-"))))
    if args.data:
        args.data = os.environ["NCPAPER_DATA"] = str(Path(args.data).resolve())
    lease = Lease(args, device)
    schedule = lease.schedule
    for dataset in sorted({j.config.dataset for j in schedule.deferred()}):
        data.load(dataset, "test", 1, 0)  # unpack once, before the workers start
    results = str(Path(args.results).resolve())
    after = f", and the runs of {sorted(schedule.waiting)} after their pilots" if schedule.waiting else ""
    print(f"{lease.now():6.0f} s  {len(lease.found)} run(s) published already, {len(schedule.queue)} queued{after}",
          flush=True)
    pool = ProcessPoolExecutor(max_workers=args.parallel, mp_context=get_context("spawn"))
    flights: dict = {}  # future -> Flight
    last = lease.now()
    try:
        while True:
            lease.release({f.job.ident for f in flights.values()})
            now = lease.now()
            device.advance(list(flights.values()), now - last)
            last = now
            if now < args.budget:
                for job in startable(device, list(flights.values()), schedule.queue, args.budget - now,
                                     args.parallel - len(flights), schedule.reserved()):
                    schedule.queue.remove(job)
                    flights[pool.submit(train_one, job.config, results, args.data, args.cudnn_benchmark)] = Flight(
                        job, now, job.flop)
                    print(f"{now:6.0f} s  start {job.config.describe()} ({job.role}, {job.flop / 1e15:.3g} PFLOP)",
                          flush=True)
            lease.write()
            if not flights or now >= args.deadline:
                break
            done, _ = wait(list(flights), timeout=min(30.0, max(args.deadline - now, 0.1)),
                           return_when=FIRST_COMPLETED)
            device.advance(list(flights.values()), lease.now() - last)
            last = lease.now()
            for future in done:
                flight = flights.pop(future)
                try:
                    result = future.result()
                    lease.finished(flight.job, load_run(Path(result.pop("path"))), flight, result)
                except Exception as err:  # one failed run is reported; the others go on
                    lease.fail(flight.job, err)
    finally:
        stopped = [f.job for f in flights.values()]
        pool.shutdown(wait=not stopped, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        lease.write(stopped)
    deferred = schedule.deferred()
    print(f"{lease.now():6.0f} s  finished {len(lease.records)}, already published {len(lease.found)}, failed "
          f"{len(lease.failed)}, stopped {len(stopped)}, deferred {len(deferred)}", flush=True)
    if lease.failed:
        return 1
    return 3 if stopped or deferred else 0


# -------------------------------------------------------------------------------------------------- the CLI
def _rate(text: str) -> tuple[str, float]:
    kind, _, value = text.partition("=")
    try:
        return kind, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rate is KIND=TFLOPS (e.g. convnet/bfloat16=60), got {text!r}") from None


def plan_table(records: list[dict], budget: float) -> str:
    """The plan as a Markdown table, then totals."""
    lines = ["| folder | role | run | PFLOP | start s | finish s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        start = "deferred" if r["start_s"] is None else f"{r['start_s']:.0f}"
        finish = "" if r["finish_s"] is None else f"{r['finish_s']:.0f}"
        lines.append(f"| {r['folder']} | {r['role']} | {r['run']} | {r['pflop']:.3f} | {start} | {finish} |")
    trained = [r for r in records if r["finish_s"] is not None]
    end = max((r["finish_s"] for r in trained), default=0.0)
    lines.append("")
    done, total = sum(r["pflop"] for r in trained), sum(r["pflop"] for r in records)
    lines.append(f"{len(trained)} of {len(records)} runs ({done:.1f} of {total:.1f} PFLOP) finish by {end:.0f} s, "
                 f"within the {budget:.0f} s budget.")
    return "\n".join(lines)


def report_table(report: dict) -> str:
    """A lease's runs (``lease.json``) as a Markdown table: speed against the chip's peak, and the end of training."""
    header = ["published/", "run", "precision", "PFLOP", "train s", "wall s", "TFLOP/s", "of peak", "train error",
              "test error", "NC1", "NC3 centred"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def number(value, fmt):
        return "" if value is None else format(value, fmt)

    for r in report["runs"]:
        cells = [r["folder"], r["run"], r["precision"], number(r["training_pflop"], ".3f"),
                 number(r["train_seconds"], ".0f"), number(r["wall_seconds"], ".0f"), number(r["tflops"], ".3g"),
                 number(r["fraction_of_peak"], ".1%"), number(r.get("last_train_error"), ".2%"),
                 number(r.get("last_test_error"), ".2%"), number(r.get("last_nc1"), ".4g"),
                 number(r.get("last_nc3_centred"), ".4g")]
        lines.append("| " + " | ".join(cells) + " |")
    for check in report["precision_checks"]:
        worst = check["largest_relative_difference"]
        lines.append(f"\nPrecision pilot {check['run']}: {check['precision']} against float32, largest relative "
                     f"difference of NC1 and NC3 {'undefined' if worst is None else format(worst, '.2%')} "
                     f"({'within' if check['passes'] else 'NOT within'} 1%).")
    return "\n".join(lines)


def plan_summary(records: list[dict], device: SharedDevice) -> str:
    """The plan by group (published folder, role, network, images, epochs, precision): runs, PFLOP a run and in all,
    the GPU-seconds they need at their kind's rate (F / R), how many finish and when the last of them does."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["job"].config
        key = (r["folder"], r["role"], c.architecture(), f"{c.n_per_class * 10:,}", c.epochs, c.precision)
        groups.setdefault(key, []).append(r)
    header = ["published/", "role", "network", "images", "epochs", "precision", "runs", "PFLOP a run", "PFLOP",
              "GPU-s at R", "finish by budget", "last finish s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, rows in groups.items():
        flop = sum(r["job"].flop for r in rows)
        seconds = sum(r["job"].flop / device.rate(r["kind"]) for r in rows)
        ends = [r["finish_s"] for r in rows if r["finish_s"] is not None]
        last = f"{max(ends):.0f}" if ends else ""
        lines.append(" | ".join(["", *map(str, key), str(len(rows)), f"{rows[0]['pflop']:.3f}", f"{flop / 1e15:.2f}",
                                 f"{seconds:.0f}", str(len(ends)), last, ""]).strip())
    return "\n".join(lines)


def needed_speedup(specs: list[str], budget: float, parallel: int, device: SharedDevice, device_name=None,
                   published: list[Path] | None = None) -> float:
    """The smallest factor k (to 1%) such that with every rate times k the plan finishes every run in the budget."""
    def finishes(k: float) -> bool:
        faster = SharedDevice({kind: r * k for kind, r in device.rates.items()}, device.saturation)
        return all(r["finish_s"] is not None for r in plan(specs, budget, parallel, faster, device_name, published))

    lo, hi = 0.01, 1.0
    while not finishes(hi):
        lo, hi = hi, hi * 2
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if finishes(mid) else (mid, hi)
    return hi


def paper_rate(profile: str = "paper") -> float:
    """The effective rate of the published runs of ``profile``: their training FLOP over the seconds from the first
    start (finish minus wall time) to the last finish, TFLOP/s."""
    from ncpaper.profiles import all_configs
    from ncpaper.published import load_published

    runs = load_published(all_configs(profile), profile)
    flop = sum(training_flop(r.config) for r in runs)
    ends = [datetime.datetime.fromisoformat(r.meta["created"]).timestamp() for r in runs]
    starts = [e - r.meta["timings"]["wall_seconds"] for e, r in zip(ends, runs, strict=True)]
    return flop / (max(ends) - min(starts)) / 1e12


def device_command(args) -> str:
    """The one shell command of the device call (``carry: [args.staged]``); with ``--bench``, the step-time pilot
    (at most 120 s) runs first. Says on stderr when tracked files differ from the commit it names."""
    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    if git("status", "--porcelain", "--untracked-files=no").strip():
        print(f"gpu_lease: tracked files differ from {commit[:12]}: commit them first, or the runs will name a commit "
              "that is not the code they ran", file=sys.stderr)
    profiles = " ".join(args.profiles)
    bench = ("timeout 120 python3 benchmarks/bench_gpu_step.py --measure --out $OUT/steps.json 2>&1 "
             "| tee $OUT/bench.txt; " if args.bench else "")
    return (f"export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCPAPER_COMMIT={commit} NCPAPER_CACHE=/tmp/ncpaper-cache; "
            f"set -o pipefail; {bench}python3 scripts/gpu_lease.py train --profiles {profiles} "
            f"--budget {args.budget:g} --deadline {args.deadline:g} --parallel {args.parallel} "
            f"--staged-data {args.staged} --data /tmp/ncpaper-data --results /tmp/ncpaper-results "
            f"--publish-to /tmp/ncpaper-published --out $OUT 2>&1 | tee $OUT/log.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profiles", nargs="+", default=["convnet", "paper_seeds"],
                        help="profiles (or profile/entry), in priority order")
    common.add_argument("--budget", type=float, default=400.0, help="seconds in which every started run must finish")
    common.add_argument("--parallel", type=int, default=12, help="runs in flight at most")
    common.add_argument("--device", help="override the runs' device (cpu: a toy lease here)")
    common.add_argument("--rate", type=_rate, action="append", default=[],
                        help="KIND=TFLOPS, an effective rate (kinds: " + ", ".join(RATES) + ")")
    common.add_argument("--saturation", type=float, default=SATURATION)
    p_plan = sub.add_parser("plan", parents=[common], help="the lease as the model sees it; trains nothing")
    p_plan.add_argument("--json", action="store_true", help="the records as JSON instead of a table")
    p_plan.add_argument("--summary", action="store_true", help="by group, with the rates and the speed-up needed")
    p_train = sub.add_parser("train", parents=[common], help="train, publish and report")
    p_train.add_argument("--deadline", type=float, help="seconds; then stop the runs in flight (default: budget + 40)")
    p_train.add_argument("--results", default=os.environ.get("NCPAPER_RESULTS") or "results")
    p_train.add_argument("--data", help="data root (default: $NCPAPER_DATA)")
    p_train.add_argument("--staged-data", help="a folder made by `stage`: the data root is rebuilt from it")
    p_train.add_argument("--publish-to", required=True, help="published/ root to publish into")
    p_train.add_argument("--out", required=True, help="folder for published.tar, lease.json and lease.csv")
    p_train.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms")
    p_command = sub.add_parser("command", parents=[common], help="print the device command for `train`")
    p_command.add_argument("--deadline", type=float)
    p_command.add_argument("--staged", default="data/lease")
    p_command.add_argument("--bench", action="store_true", help="run benchmarks/bench_gpu_step.py first (<= 120 s)")
    p_stage = sub.add_parser("stage", help="copy the data to carry into FOLDER (MNIST gzipped)")
    p_stage.add_argument("folder")
    p_stage.add_argument("--data", help="data root (default: $NCPAPER_DATA)")
    p_report = sub.add_parser("report", help="a lease.json's runs as a Markdown table (TFLOP/s, fraction of peak)")
    p_report.add_argument("json")
    p_merge = sub.add_parser("merge", help="publish a lease's published.tar into the repository")
    p_merge.add_argument("tar")
    p_merge.add_argument("--to", help="published/ root (default: the repository's)")
    args = parser.parse_args(argv)

    if getattr(args, "parallel", 1) < 1:
        parser.error("--parallel must be at least 1")
    if hasattr(args, "deadline") and args.deadline is None:
        args.deadline = args.budget + 40
    if args.command == "plan":
        device = SharedDevice(saturation=args.saturation)
        device.rates.update({k: v * 1e12 for k, v in args.rate})
        records = plan(args.profiles, args.budget, args.parallel, device, args.device, [REPOSITORY / "published"])
        if args.json:
            print(json.dumps([{k: v for k, v in r.items() if k != "job"} for r in records], indent=2))
        elif args.summary:
            print(plan_summary(records, device))
            rates = ", ".join(f"{k} {v / 1e12:g}" for k, v in device.rates.items())
            speedup = needed_speedup(args.profiles, args.budget, args.parallel, device, args.device,
                                     [REPOSITORY / "published"])
            print(f"\nRates R (TFLOP/s): {rates}; saturation {device.saturation:g} runs; at most {args.parallel} "
                  f"in flight. Every run would finish within {args.budget:g} s with every rate x {speedup:.2f}. "
                  f"The published paper runs (H100, float32) ran at {paper_rate():.1f} TFLOP/s together.")
        else:
            print(plan_table(records, args.budget))
        return 0
    if args.command == "command":
        print(device_command(args))
        return 0
    if args.command == "stage":
        from ncpaper.data import data_root

        written = stage(Path(args.folder), data_root(args.data))
        size = sum(p.stat().st_size for p in written)
        print(f"staged {len(written)} file(s), {size / 2**20:.1f} MiB, in {args.folder}")
        return 0
    if args.command == "report":
        print(report_table(json.loads(Path(args.json).read_text())))
        return 0
    if args.command == "merge":
        merged = merge(Path(args.tar), Path(args.to) if args.to else None)
        print(f"published {len(merged)} run(s): " + ", ".join(merged))
        return 0
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
