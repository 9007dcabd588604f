"""Build the book: run the profile's sweep, execute every notebook with papermill, render with Jupyter Book.

Notebooks are Jupytext MyST files in ``notebooks/``; executed copies land in ``book/executed/``
(never committed). The site is rendered into a staging folder and moved to ``_build/html`` only
when the build succeeded, so a failed build never leaves a site that looks complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["NOTEBOOKS", "PDF", "build_book", "build_pdf", "build_site", "execute_notebooks", "fold_parameters",
           "glued_values", "install_note", "page_inputs", "page_names", "shared_inputs"]

# (source in notebooks/, executed name in book/executed/, extra papermill parameters, page title or None)
NOTEBOOKS = [
    ("setting.md", "setting", {}, None),
    ("lemma1.md", "lemma1", {}, None),
    ("lemma2.md", "lemma2", {}, None),
    ("theorem.md", "theorem", {}, None),
    ("bounds.md", "bounds", {}, None),
    ("figure.md", "figure1_cifar10", {"figure": "cifar10", "figure_number": 1},
     "Figure 1: Neural Collapse on CIFAR-10, with and without weight decay"),
    ("figure.md", "figure2_mnist", {"figure": "mnist", "figure_number": 2},
     "Figure 2: Neural Collapse on MNIST, with and without weight decay"),
    ("figure.md", "figure1_cifar10_paper", {"figure": "cifar10", "figure_number": 1, "profile": "paper",
                                            "published": True},
     "Figure 1 at full scale: CIFAR-10, 50,000 training images"),
    ("figure.md", "figure2_mnist_paper", {"figure": "mnist", "figure_number": 2, "profile": "paper",
                                          "published": True},
     "Figure 2 at full scale: MNIST, 54,210 training images"),
    ("phase.md", "phase_mnist", {"dataset": "mnist"},
     "Where Neural Collapse sets in: a weight-decay phase diagram on MNIST"),
    ("phase.md", "phase_cifar10", {"dataset": "cifar10"},
     "Where Neural Collapse sets in: a weight-decay phase diagram on CIFAR-10"),
    ("necessity.md", "necessity", {"profile": "horizon"}, None),  # published runs on every profile
    ("layers.md", "layers", {}, None),
    ("reproduce.md", "reproduce", {}, None),
]


# The PDF edition, as built by build_pdf (Jupyter Book's LaTeX builder; the name is _config.yml's targetname)
PDF = Path("_build") / "latex" / "ncpaper.pdf"
TEX_TOOLS = ("xelatex", "latexmk", "makeindex")


class NotebookFailed(RuntimeError):
    pass


def page_names() -> list[str]:
    """The pages ``ncpaper book --only`` accepts: the executed notebooks' names."""
    return [name for _, name, _, _ in NOTEBOOKS]


def _check_pages(only: list[str] | None) -> None:
    unknown = sorted(set(only or []) - set(page_names()))
    if unknown:
        raise ValueError(f"no page named {', '.join(unknown)}; choose from {', '.join(page_names())}")


def fold_parameters(nb) -> bool:
    """Write papermill's injected values into the notebook's own parameters cell and drop the injected cell, so
    that the notebook a reader downloads runs as it was executed: its visible parameters cell is the only one
    that sets parameters (an injected cell after it silently undid any change made there). Each assignment keeps
    its comment; a parameter the cell lacks is added at its end. Returns whether anything was injected."""
    import ast

    def tags(cell):
        return cell.get("metadata", {}).get("tags", [])

    injected = [c for c in nb.cells if "injected-parameters" in tags(c)]
    if not injected:
        return False
    values = {}
    for cell in injected:
        tree = ast.parse(cell.source)
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = ast.get_source_segment(cell.source, node.value)
    own = next((c for c in nb.cells if "parameters" in tags(c)), None)
    if own is None:
        raise ValueError("papermill injected parameters into a notebook without a parameters cell")
    lines = own.source.split("\n")
    done = set()
    for node in reversed(ast.parse(own.source).body):  # from the end, so that earlier offsets stay valid
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in values:
            name, value = node.targets[0].id, node.value
            first, last = lines[value.lineno - 1], lines[value.end_lineno - 1]
            lines[value.lineno - 1:value.end_lineno] = [first[:value.col_offset] + values[name]
                                                         + last[value.end_col_offset:]]
            done.add(name)
    lines += [f"{name} = {text}" for name, text in values.items() if name not in done]
    own.source = "\n".join(lines)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in tags(c)]
    return True


def install_note() -> str:
    """The first cell of every executed notebook (off the site: ``remove-cell``): how to run it outside the book."""
    from . import __version__
    from .citing import source_archive

    archive = source_archive()
    where = (f"the source archive `{archive.name}` (the link in the footer of every page of the book's site)"
             if archive else "the ncpaper source (the link in the footer of every page of the book's site)")
    return (f"**Running this notebook.** It needs the `ncpaper` package (version {__version__}) and the book's "
            f"files, and runs in the book's root folder (it reads `results/` and `published/` there). Download "
            f"{where}, unpack it, and in its folder run `pip install -e '.[book]'` (Python 3.11+); open this notebook "
            "from that folder, or run `%cd path/to/that/folder` first. Datasets are read from `$NCPAPER_DATA` (the "
            "README's Data section). The parameters cell below is the only one that sets parameters: change it and "
            "run all cells. A run with parameters other than the book page's writes its figures under names made "
            "from those parameters, and their citation lines say that they are not the book's figures.")


def _prepare_download(path: Path) -> None:
    """Make an executed notebook the one a reader can download and run: parameters folded into the visible
    parameters cell (:func:`fold_parameters`) and a first cell, off the site, on how to run it."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    fold_parameters(nb)
    note = nbformat.v4.new_markdown_cell(install_note(), metadata={"tags": ["remove-cell"]})
    nb.cells.insert(0, note)
    nbformat.write(nb, path)


# The environment variables that say where data, results and the cache are
_LOCATIONS = ("NCPAPER_DATA", "NCPAPER_RESULTS", "NCPAPER_CACHE")


def _absolute_environment() -> None:
    """Kernels run in the book's root: make relative NCPAPER_* paths absolute from here first."""
    for name in _LOCATIONS:
        if os.environ.get(name):
            os.environ[name] = str(Path(os.environ[name]).expanduser().resolve())


def _execute_one(root: Path, source: str, name: str, params: dict, title: str | None, profile: str) -> float:
    """Execute one notebook into ``book/executed/<name>.ipynb``; return its seconds."""
    import jupytext
    import papermill as pm

    out_dir = root / "book" / "executed"
    nb = jupytext.read(root / "notebooks" / source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if title:  # one template, several pages: each page gets its own title
        heading = next(c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# "))
        heading.source = "\n".join([f"# {title}", *heading.source.split("\n")[1:]])
    staged = out_dir / f".{name}.input.ipynb"
    jupytext.write(nb, staged, fmt="ipynb")
    tic = time.perf_counter()
    try:
        # the notebooks' progress bars (stderr) go to this log, not to the page
        pm.execute_notebook(str(staged), str(out_dir / f"{name}.ipynb"), cwd=str(root),
                            parameters={"profile": profile, **params}, kernel_name="python3",
                            progress_bar=False, stderr_file=sys.stderr,
                            # ipykernel's "Kernel is running over TCP" warning, once per page, is noise here
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(f"notebook notebooks/{source} (as {name}) failed in cell {err.exec_count}: "
                             f"{err.ename}: {err.evalue}") from None
    finally:
        staged.unlink(missing_ok=True)
    _prepare_download(out_dir / f"{name}.ipynb")
    seconds = time.perf_counter() - tic
    print(f"executed {name} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return seconds


# What no page's execution reads: tools' folders, the pages' own outputs, and the results folder (whose runs
# enter page_inputs through their meta.json files instead)
_NOT_INPUTS = {".git", ".venv", "_build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
               ".ipynb_checkpoints", "results", "data", "checkpoints", "book/executed", "book/figures"}


def _results_dir(root: Path) -> Path:
    """The results folder that the pages, run in ``root``, read."""
    from .results import results_dir

    return (Path(root) / results_dir()).resolve()


def page_inputs(root: Path, name: str, params: dict, profile: str, shared: str | None = None) -> str:
    """A sha256 of everything that executing page ``name`` reads, so that an unchanged page need not run again:
    its parameters and profile, and what all pages share (:func:`shared_inputs`, computed if not given)."""
    import hashlib
    import json

    shared = shared_inputs(root) if shared is None else shared
    page = json.dumps({"name": name, "params": params, "profile": profile}, sort_keys=True)
    return hashlib.sha256(f"{shared}\0{page}".encode()).hexdigest()


def shared_inputs(root: Path) -> str:
    """A sha256 of what every page may read. Conservative: every file of the checkout outside ``_NOT_INPUTS``
    (notebooks, ``published/``, the benchmarks' tables, the citation ...) and of the ncpaper package wherever it
    is installed, the commit the pages print, every cached run's ``meta.json`` (which holds its metrics'
    sha256), the data files' sizes and times, the ``NCPAPER_*`` locations, Python's and every installed
    distribution's version."""
    import hashlib
    import importlib.metadata
    import json

    from .data import data_root
    from .pages import code_commit
    from .results import MAX_META_BYTES

    root = Path(root).resolve()
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    locations = {k: os.environ.get(k) for k in _LOCATIONS}
    add("setting", json.dumps({"commit": code_commit(), "python": sys.version, "env": locations,
                               "distributions": sorted(f"{d.metadata['Name']}=={d.version}"
                                                       for d in importlib.metadata.distributions())},
                              sort_keys=True).encode())
    package = Path(__file__).resolve().parent
    for top in (root, package) if root not in package.parents else (root,):
        for file in _source_files(top):
            add(f"{top.name}/{file}", _guarded_bytes(top / file, MAX_SOURCE_BYTES))
    results = _results_dir(root)
    for meta in sorted(results.glob("*/meta.json")) if results.is_dir() else []:
        add(f"run {meta.parent.name}", _guarded_bytes(meta, MAX_META_BYTES, "not a run's record: the run is "
                                                                            "recomputed when a page asks for it"))
    data = root / data_root()  # the data folder that the pages, run in root, read
    for path in sorted(p for pattern in ("*", "*/*", "*/*/*") for p in data.glob(pattern)) if data.is_dir() else []:
        if path.is_file():
            stat = path.stat()
            add(f"data {path.relative_to(data)}", f"{stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


MAX_SOURCE_BYTES = 1 << 30  # a file of the checkout larger than this is not read into the inputs' hash


def _guarded_bytes(path: Path, limit: int, meaning: str = "left out of the pages' inputs") -> bytes:
    """``path``'s bytes for the inputs' hash; where it is not a regular file of at most ``limit`` bytes (a FIFO, a
    link to a device, a folder), one line saying so, and a marker of what it is instead."""
    from .data import read_regular
    from .results import notice

    try:
        return read_regular(path, limit)
    except OSError as err:
        notice(f"{path} skipped ({err.strerror or err}): {meaning}")
        return f"unreadable: {err.strerror or err}".encode()


def _source_files(top: Path) -> list[str]:
    """The files under ``top`` that a page may read, relative and sorted: in a git checkout those git tracks or
    would track (.gitignore keeps out virtual environments and outputs), else every file; never ``_NOT_INPUTS``."""
    listed = subprocess.run(["git", "-C", str(top), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True)
    if listed.returncode == 0:
        files = [f for f in listed.stdout.decode().split("\0") if f and (top / f).is_file()]
    else:
        files = [(Path(folder) / f).relative_to(top).as_posix() for folder, _, names in os.walk(top) for f in names]

    def excluded(path: str) -> bool:
        parts = path.split("/")
        return any(p in _NOT_INPUTS or p.endswith(".egg-info") for p in parts[:-1]) or any(
            path.startswith(f"{prefix}/") for prefix in _NOT_INPUTS if "/" in prefix)

    return sorted(f for f in files if not excluded(f))


def _inputs_file(root: Path, name: str) -> Path:
    return root / "book" / "executed" / f".{name}.inputs"


def _unchanged(root: Path, name: str, inputs: str) -> bool:
    """Whether ``book/executed/<name>.ipynb`` was executed from exactly ``inputs`` and its figure files are as that
    execution left them."""
    executed, recorded = root / "book" / "executed" / f"{name}.ipynb", _inputs_file(root, name)
    if not (executed.is_file() and recorded.is_file()):
        return False
    figures = _figures_digest(root, name)
    return figures is not None and recorded.read_text() == f"{inputs}\n{figures}"


def _figures_digest(root: Path, name: str) -> str | None:
    """A sha256 of the figure files that page ``name``'s executed notebook links (book/figures/): they count as the
    page's inputs, so that a figure file changed since (a reader's rerun) has the page executed again. None when one
    is missing or not a regular file."""
    import hashlib
    import re

    from .data import sha256_of

    executed = root / "book" / "executed" / f"{name}.ipynb"
    digest = hashlib.sha256()
    for figure in sorted(set(re.findall(r"figures/([\w.-]+\.(?:png|pdf|svg))", executed.read_text(errors="replace")))):
        try:
            digest.update(f"{figure}\0{sha256_of(root / 'book' / 'figures' / figure)}\0".encode())
        except OSError:
            return None
    return digest.hexdigest()


def _record_inputs(root: Path, name: str, inputs: str) -> None:
    """After a successful execution: what page ``name`` was executed from, and the figure files it made."""
    _inputs_file(root, name).write_text(f"{inputs}\n{_figures_digest(root, name)}")


def execute_notebooks(root: Path, profile: str, only: list[str] | None = None, workers: int = 1,
                      force: bool = False) -> dict[str, float | None]:
    """Execute every notebook on ``profile``, ``workers`` at a time; return seconds per notebook.

    A page whose inputs (:func:`page_inputs`) are those of its last execution is not executed again (its
    seconds are None), unless ``force`` or it is named in ``only``. Fails naming notebook and cell. The pages
    are independent (each reads its runs from the cache or ``published/`` and writes its own figure files),
    so two can run side by side: each is mostly a kernel's start-up, imports and plotting on one core.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    root = Path(root).resolve()
    _check_pages(only)
    _absolute_environment()
    (root / "book" / "executed").mkdir(parents=True, exist_ok=True)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pages = [(source, name, params, title) for source, name, params, title in NOTEBOOKS
             if not only or name in only]
    shared = shared_inputs(root)
    inputs = {name: page_inputs(root, name, params, profile, shared) for _, name, params, _ in pages}
    skipped = [] if force or only else [name for name in inputs if _unchanged(root, name, inputs[name])]
    if skipped:
        print(f"unchanged since their last execution, not executed again: {', '.join(skipped)}", file=sys.stderr)
    pages = [page for page in pages if page[1] not in skipped]
    for name in inputs:
        if name not in skipped:
            _inputs_file(root, name).unlink(missing_ok=True)  # written again only when the execution succeeds
    seconds = dict.fromkeys(skipped)
    if workers == 1 or len(pages) <= 1:
        for source, name, params, title in pages:
            seconds[name] = _execute_one(root, source, name, params, title, profile)
            _record_inputs(root, name, inputs[name])
    else:
        # the longest pages first (those that read and plot many runs), so that no long one starts last
        order = sorted(pages, key=lambda page: next((k for k, prefix in enumerate(_LONGEST_FIRST)
                                                     if page[1].startswith(prefix)), len(_LONGEST_FIRST)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            jobs = {name: pool.submit(_execute_one, root, source, name, params, title, profile)
                    for source, name, params, title in order}
            for _, name, _, _ in pages:  # the first failure (in page order) is raised
                seconds[name] = jobs[name].result()
                _record_inputs(root, name, inputs[name])
    return {name: seconds[name] for name in inputs}


# Page names by how long they take to execute (the default profile, benchmarks/README.md), longest first
_LONGEST_FIRST = ("layers", "phase", "figure")


def build_site(root: Path) -> Path:
    """Render the book with warnings as errors; replace ``_build/html`` only on success."""
    root = Path(root).resolve()
    staging = root / "_build" / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "--path-output", str(staging),
           "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"Jupyter Book build failed (exit {result.returncode}); the previous site, if any, "
                           f"is untouched.\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    html = root / "_build" / "html"
    shutil.rmtree(html, ignore_errors=True)
    os.replace(staging / "_build" / "html", html)
    shutil.rmtree(staging, ignore_errors=True)
    return html


def _check_tex() -> None:
    missing = [tool for tool in TEX_TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"TeX is not installed ({', '.join(missing)} not found): bash scripts/build-pdf.sh "
                           "installs it with apt-get")


def build_pdf(root: Path, site: bool = True) -> Path:
    """Typeset the executed pages as one PDF, ``_build/latex/ncpaper.pdf``; executes and trains nothing.

    Jupyter Book's LaTeX builder with warnings as errors, then XeLaTeX (latexmk) on the result, in a staging
    folder: ``_build/latex`` is replaced only when the PDF was made. The pages' HTML figures and tables are
    rebuilt for print by ``book/_ext/ncpaper_pdf.py``. ``site``: then re-render ``_build/html``, which copies
    the PDF into the site and links it from every page (the site links a PDF only when it is newer than
    every executed notebook).
    """
    root = Path(root).resolve()
    absent = [n for n in page_names() if not (root / "book" / "executed" / f"{n}.ipynb").exists()]
    if absent:
        raise ValueError(f"the PDF typesets the executed pages, but book/executed/ lacks {', '.join(absent)}: "
                         "build the book first (bash scripts/build-book.sh)")
    _check_tex()
    staging = root / "_build" / ".staging-pdf"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "--builder", "pdflatex",
           "--path-output", str(staging), "-W", "-n", "--keep-going"]
    # TeX stops at its first error instead of asking the terminal what to do
    env = {**os.environ, "LATEXOPTS": "-interaction=nonstopmode -halt-on-error", "LATEXMKOPTS": "-halt-on-error"}
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    made = staging / "_build" / "latex" / PDF.name
    if result.returncode != 0 or not made.is_file():
        log = staging / "_build" / "latex" / PDF.with_suffix(".log").name
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("!")] \
            if log.is_file() else []
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"PDF build failed (exit {result.returncode}); the previous PDF, if any, is untouched."
                           f"\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}\nTeX errors: {errors[:10]}")
    latex = root / PDF.parent
    shutil.rmtree(latex, ignore_errors=True)
    latex.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "_build" / "latex", latex)
    shutil.rmtree(staging, ignore_errors=True)
    if site:
        build_site(root)
    return root / PDF


def build_book(root: Path, profile: str = "default", workers: int = 1, only: list[str] | None = None,
               pdf: bool = False, force: bool = False) -> dict:
    """Sweep, execute, render. Returns timings in seconds.

    ``workers``: training runs side by side (Dask), then notebooks side by side. ``only``: execute just
    these pages (names from :func:`page_names`; their notebooks train or read their own runs) and render
    the site with the other pages as last executed. Pages whose inputs are unchanged since their last
    execution are not executed again unless ``force`` (:func:`execute_notebooks`). ``pdf``: typeset the PDF
    edition (:func:`build_pdf`, needs TeX) before rendering the site, which then links it.
    """
    from .profiles import all_configs
    from .sweep import run_sweep

    root = Path(root).resolve()
    _check_pages(only)
    if only:
        absent = [n for n in page_names() if n not in only and not (root / "book" / "executed" / f"{n}.ipynb").exists()]
        if absent:
            raise ValueError(f"--only renders the other pages as last executed, but book/executed/ lacks "
                             f"{', '.join(absent)}: build the whole book once first (ncpaper book --profile {profile})")
    if pdf:
        _check_tex()  # before hours of training, not after
    timings = {}
    tic = time.perf_counter()
    if not only:
        run_sweep(all_configs(profile), workers=workers, results=_results_dir(root))
    timings["sweep"] = time.perf_counter() - tic
    timings["notebooks"] = execute_notebooks(root, profile, only, workers=workers, force=force)
    if pdf:
        tic = time.perf_counter()
        build_pdf(root, site=False)
        timings["pdf"] = time.perf_counter() - tic
    tic = time.perf_counter()
    build_site(root)
    timings["render"] = time.perf_counter() - tic
    return timings


def glued_values(notebook: Path) -> dict:
    """The values a notebook glued with myst-nb, as the text the page shows."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    values = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:  # myst-nb stores glued data under "application/papermill.record/<mime>"
                data = {"/".join(k.split("/")[-2:]): v for k, v in output.get("data", {}).items()}
                values[name] = data.get("text/plain")
    return values
