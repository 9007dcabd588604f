"""ncpaper train (one run), sweep (a profile's runs, or a weight-decay grid), publish, book, pdf."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .book import page_names
from .data import DATASETS, DataNotFoundError
from .models import MODELS
from .profiles import all_configs, figure_configs, load_profile, profile_names
from .results import MAX_THREADS, results_dir
from .sweep import SweepError, run_sweep
from .train import LOSSES, RunConfig, TrainingDivergedError


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``ncpaper: error: ...`` (exit 2), and defaults in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"ncpaper: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a width, a channel count)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    """argparse type: an integer >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _thread_count(text: str) -> int:
    """argparse type: torch threads, 1 to MAX_THREADS."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be a positive integer at most {MAX_THREADS}, got {text!r}")
    return int(text)


def _folder(text: str) -> str:
    """argparse type: a path, not empty (an empty one would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a folder, or leave the option out for its default")
    return text


def _figure_names() -> list[str]:
    return sorted({name for p in profile_names() for name in load_profile(p).get("figures", {})})


def _locations(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--results and --data, before or after the subcommand (after it, they win)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--results", default=default, type=_folder,
                        help="results folder (unset: $NCPAPER_RESULTS or ./results)")
    parser.add_argument("--data", default=default, type=_folder, help="data root (unset: $NCPAPER_DATA or ./data)")


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_thread_count, help="torch threads per run, part of its cache key (1 and "
                        "2 threads give different last bits); more is faster for one big run. Unset: $NCPAPER_THREADS "
                        "or 1")


def _sizes(args) -> dict:
    if args.model == "mlp":
        return {"widths": args.widths}
    return {"channels": args.channels, "fc_width": args.fc_width}


def _run_settings(parser: argparse.ArgumentParser) -> None:
    d = RunConfig()
    parser.add_argument("--dataset", default=d.dataset, choices=DATASETS, help="training and test data")
    parser.add_argument("--model", default=d.model, choices=sorted(MODELS), help="bias-free network")
    parser.add_argument("--widths", type=_positive_int, nargs="+", default=[512, 512, 512], help="MLP hidden widths")
    parser.add_argument("--channels", type=_positive_int, nargs="+", default=[16, 32, 64], help="ConvNet channels")
    parser.add_argument("--fc-width", type=_positive_int, default=256, help="ConvNet feature width")
    parser.add_argument("--n-per-class", type=int, default=d.n_per_class, help="training images per class")
    parser.add_argument("--n-test-per-class", type=int, default=d.n_test_per_class, help="test images per class")
    parser.add_argument("--input-pool", type=int, default=d.input_pool,
                        help="average the images over k x k pixel blocks (2: CIFAR-10 at 16x16; 1: as they are)")
    parser.add_argument("--lr", type=float, default=d.lr, help="the slides' learning rate eta")
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    parser.add_argument("--n-measurements", type=int, default=d.n_measurements,
                        help="about this many log-spaced epochs are measured")
    parser.add_argument("--device", help=f"cpu, cuda or cuda:N, mps (unset: {d.device}, or with --profile the "
                        "profile's device)")
    parser.add_argument("--precision", default=d.precision, choices=["float32", "bfloat16"],
                        help="bfloat16: forward pass under autocast (weights and measurements stay float32+)")
    parser.add_argument("--init-scale", type=float, default=d.init_scale,
                        help="every layer's default initialisation times this (the outputs start s^L times theirs)")
    parser.add_argument("--loss", default=d.loss, choices=list(LOSSES),
                        help="the data term: the slides' square loss, or the mean cross-entropy (same penalty "
                             "lambda/2 sum ||W||^2; cross-entropy runs are not settled)")


def _config(args, weight_decay: float, seed: int) -> RunConfig:
    return RunConfig.from_dict({
        "dataset": args.dataset, "model": args.model, "sizes": _sizes(args), "n_per_class": args.n_per_class,
        "n_test_per_class": args.n_test_per_class, "input_pool": args.input_pool,
        "weight_decay": weight_decay + 0.0,  # -0.0 is lambda = 0: one run, one key
        "lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size, "epochs": args.epochs,
        "n_measurements": args.n_measurements, "seed": seed, "device": args.device or RunConfig().device,
        "precision": args.precision, "init_scale": args.init_scale, "loss": args.loss,
        "settle": args.loss == "square"})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ncpaper", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ncpaper {__version__}")
    _locations(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or read from the cache) one run")
    _locations(train)
    _run_settings(train)
    train.add_argument("--weight-decay", type=float, default=0.0, help="the slides' lambda")
    train.add_argument("--seed", type=_seed, default=0, help="initialisation, subset and batch order")
    _threads(train)
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    sweep = commands.add_parser("sweep", help="run a profile's figures, or a weight-decay x seed grid")
    _locations(sweep)
    sweep.add_argument("--profile", choices=profile_names(), help="run every run of this profile")
    sweep.add_argument("--figure", choices=_figure_names(), help="with --profile: only this figure")
    _run_settings(sweep)
    sweep.add_argument("--weight-decays", type=float, nargs="*", default=[0.0, 1e-3, 5e-3],
                       help="the slides' lambdas")
    sweep.add_argument("--seeds", type=_seed, nargs="*", default=[0], help="one run per seed and lambda")
    sweep.add_argument("--retrain-published", action="store_true",
                       help="with --profile: train runs that published/<profile>/ already holds")
    sweep.add_argument("--workers", type=int, default=1, help="parallel runs on a local Dask cluster")
    sweep.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786)")
    _threads(sweep)

    publish = commands.add_parser("publish", help="copy a profile's finished runs (tables, metadata) into published/")
    _locations(publish)
    publish.add_argument("--profile", choices=profile_names(), default="paper", help="whose runs to publish")
    publish.add_argument("--figure", choices=_figure_names(), help="only this figure")
    publish.add_argument("--to", type=_folder, help="published folder (unset: the repository's published/)")

    book = commands.add_parser("book", help="run the notebooks on a profile and render the site (_build/html)")
    _locations(book)
    book.add_argument("--profile", choices=[p for p in profile_names() if "phase" in load_profile(p)],
                      default="default", help="the profile of the pages that are retrained (the full-scale "
                      "pages always read published/paper/)")
    book.add_argument("--workers", type=int, default=2, help="training runs, then notebooks, side by side")
    book.add_argument("--root", default=".", help="the repository (holds _config.yml, _toc.yml, notebooks/)")
    book.add_argument("--only", nargs="+", metavar="PAGE", choices=page_names(),
                      help="re-execute only these pages (after one whole build) and re-render the site")
    book.add_argument("--pdf", action="store_true", help="also typeset the PDF edition (_build/latex/ncpaper.pdf, "
                      "needs TeX: see scripts/build-pdf.sh), which the site then links")
    book.add_argument("--force", action="store_true", help="execute every page, also those whose inputs (files, "
                      "runs, versions) are unchanged since their last execution")

    pdf = commands.add_parser("pdf", help="typeset the executed pages as one PDF (_build/latex/ncpaper.pdf) and "
                              "re-render the site to link it; executes and trains nothing")
    pdf.add_argument("--root", default=".", help="the repository (holds _config.yml, _toc.yml, book/executed/)")
    pdf.add_argument("--no-site", action="store_true", help="only the PDF: leave _build/html as it is")
    return parser


def _book(args) -> int:
    import time
    from pathlib import Path

    from .book import NotebookFailed, build_book

    if args.results:
        os.environ["NCPAPER_RESULTS"] = args.results
    if args.data:
        os.environ["NCPAPER_DATA"] = args.data
    tic = time.perf_counter()
    try:
        timings = build_book(Path(args.root), profile=args.profile, workers=args.workers, only=args.only,
                             pdf=args.pdf, force=args.force)
    except (NotebookFailed, RuntimeError, ValueError, DataNotFoundError) as err:
        print(f"ncpaper: book build failed: {err}", file=sys.stderr)
        return 1
    site = Path(args.root).resolve() / "_build" / "html" / "index.html"
    notebooks = ", ".join(f"{k} {v:.0f} s" if v is not None else f"{k} unchanged"
                          for k, v in timings["notebooks"].items())
    pdf = f"; PDF {timings['pdf']:.0f} s" if "pdf" in timings else ""
    print(f"book built in {time.perf_counter() - tic:.0f} s (training/cache {timings['sweep']:.0f} s; "
          f"notebooks: {notebooks}{pdf}; rendering {timings['render']:.0f} s)\nopen {site}")
    return 0


def _pdf(args) -> int:
    import time
    from pathlib import Path

    from .book import build_pdf

    tic = time.perf_counter()
    try:
        pdf = build_pdf(Path(args.root), site=not args.no_site)
    except (RuntimeError, ValueError) as err:
        print(f"ncpaper: PDF build failed: {err}", file=sys.stderr)
        return 1
    linked = "" if args.no_site else f"; the site links it ({pdf.parents[1] / 'html' / pdf.name})"
    print(f"PDF built in {time.perf_counter() - tic:.0f} s: {pdf} ({pdf.stat().st_size / 1e6:.1f} MB){linked}")
    return 0


def _profile_configs(profile: str, figure: str | None, device: str | None = None) -> list[RunConfig]:
    """One figure's runs of a profile, or all of its runs."""
    return figure_configs(profile, figure, device) if figure else all_configs(profile, device)


def _unpublished(configs: list[RunConfig], profile: str) -> list[RunConfig]:
    """The configs still to train: published runs (``published/<profile>/``) are reported, not retrained."""
    from .published import split_published

    done, todo = split_published(configs, profile)
    if done:
        print(f"{len(done)} of {len(configs)} run(s) already published in published/{profile}/ (not retrained; "
              "--retrain-published trains them again):")
        for run in done:
            print(f"  {run.config.describe()}  (run {run.meta['key']}, {run.meta.get('device', 'unknown device')})")
    if not todo:
        print("nothing to train: every run is published")
    return todo


def _publish(args) -> int:
    from .published import MissingResultError, find_finished, publish

    try:
        configs = _profile_configs(args.profile, args.figure)
        folders = publish(find_finished(configs, args.results), args.profile, args.to)
    except (ValueError, OSError, MissingResultError) as err:
        return _error(err)
    print(f"published {len(folders)} run(s):")
    for folder in folders:
        print(f"  {folder}")
    return 0


def _error(err: Exception) -> int:
    """``ncpaper: error: <message>`` on one line (a message of several lines is joined), exit status 2."""
    print(f"ncpaper: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The command line; an interrupt (Ctrl-C) is one line, exit status 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("ncpaper: interrupted; the runs that finished are cached (run the command again to continue)",
              file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()  # reads profiles.yaml
    except ValueError as err:
        return _error(err)
    args = parser.parse_args(argv)
    if args.command == "book":
        return _book(args)
    if args.command == "pdf":
        return _pdf(args)
    if args.command == "publish":
        return _publish(args)
    try:
        if args.command == "train":
            configs = [_config(args, args.weight_decay, args.seed)]
            workers, scheduler = 1, None
        else:
            if args.profile:
                configs = _profile_configs(args.profile, args.figure, args.device)  # None: the profile's
                if not args.retrain_published:
                    configs = _unpublished(configs, args.profile)
                    if not configs:
                        return 0
            else:
                configs = [_config(args, wd, s) for wd in args.weight_decays for s in args.seeds]
            workers, scheduler = args.workers, args.scheduler
        runs = run_sweep(configs, workers=workers, scheduler=scheduler, results=args.results,
                         data_root=args.data, progress=not getattr(args, "quiet", False), threads=args.threads)
    except (ValueError, OSError, TrainingDivergedError, ConnectionError, SweepError) as err:
        return _error(err)
    print(f"results in {results_dir(args.results).resolve()}:")
    for run in runs:
        last = run.last
        print(f"  {run.path}  {run.config.describe()}  nc1={last['nc1']:.3g} nc3={last['nc3']:.3g} "
              f"train_error={last['train_error']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
