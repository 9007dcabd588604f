"""Issue 33: the red-team pass on the reader's rerun path, publishing, profiles, data folders and the Dask
scheduler. One test per break (numbered as in the issue; 9a-9j are its lower-harm list), on tiny MNIST runs."""

import json
import math
import os
import pickle
import shutil
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_cache_attacks import TINY, dead_pid, deadline, one_line_error, run_cli
from test_cache_attacks import good as good  # a fixture

from ncpaper import book, data, profiles, published, results, sweep
from ncpaper.cli import _config, build_parser
from ncpaper.pages import FigurePage
from ncpaper.published import (
    MissingResultError,
    TamperedResultError,
    find_finished,
    load_published,
    publish,
    split_published,
    write_manifest,
)
from ncpaper.rerun import figure_stem, notebook_defaults, rerun_of
from ncpaper.train import RunConfig


def _git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def finished(tmp_path):
    configs = [RunConfig.from_dict({**TINY, "weight_decay": wd}) for wd in (0.0, 1e-3)]
    return configs, [results.run_or_load(c, tmp_path / "results") for c in configs]


# 2. A missing published folder (deleted, or a file) reads as "not yet published".


@pytest.mark.parametrize("how", ["deleted", "a-file"])
def test_a_committed_published_folder_that_is_gone_is_an_error_naming_the_checkout(finished, tmp_path, monkeypatch,
                                                                                    how):
    configs, runs = finished
    monkeypatch.delenv("NCPAPER_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    folder = publish(runs, "demo", repo / "published")[0].parent
    _git(repo, "add", "published")
    _git(repo, "commit", "-q", "-m", "publish")
    shutil.rmtree(folder)
    if how == "a-file":
        folder.write_text("not a folder")
    message = f"restore it with `git checkout HEAD -- {folder}`"
    for read in (load_published, split_published):
        with pytest.raises(TamperedResultError, match=r"published folder .* (is missing|is a file), but the "
                                                      r"repository's last commit holds the runs of profile 'demo'"):
            read(configs, "demo", repo / "published")
    with pytest.raises(TamperedResultError) as err:
        split_published(configs, "demo", repo / "published")
    assert message in str(err.value)
    _git(repo, "checkout", "HEAD", "--", str(folder))  # the remedy it names works
    assert len(load_published(configs, "demo", repo / "published")) == 2
    with pytest.raises(MissingResultError):  # a profile git holds nothing of is still just not published
        load_published(configs, "other", repo / "published")


# 3. Hostile entries in results/ hang or crash the build's input hash.


def test_hostile_meta_files_in_results_are_one_line_each_in_the_build_inputs(good, tmp_path, monkeypatch, capsys):
    root = tmp_path / "book"
    root.mkdir()
    cache = root / "results"
    shutil.copytree(good.path, cache / good.path.name)
    for name in ("fifo", "zero", "folder"):
        (cache / name).mkdir()
    os.mkfifo(cache / "fifo" / "meta.json")
    (cache / "zero" / "meta.json").symlink_to("/dev/zero")
    (cache / "folder" / "meta.json").mkdir()
    monkeypatch.setenv("NCPAPER_RESULTS", str(cache))
    with deadline(60):
        first = book.shared_inputs(root)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ncpaper: ") for line in lines), lines
    assert {line.split("/")[-2] for line in lines} == {"fifo", "zero", "folder"}
    (cache / good.path.name / "meta.json").write_text("{}")  # a run's record still counts
    assert book.shared_inputs(root) != first


# 4. SHA256SUMS as a link to /dev/zero or a FIFO.


@pytest.mark.parametrize("hostile", ["dev-zero", "fifo"])
def test_a_manifest_that_never_ends_is_an_error(finished, tmp_path, hostile):
    configs, runs = finished
    folder = publish(runs, "smoke", tmp_path / "published")[0].parent
    (folder / "SHA256SUMS").unlink()
    if hostile == "fifo":
        os.mkfifo(folder / "SHA256SUMS")
    else:
        (folder / "SHA256SUMS").symlink_to("/dev/zero")
    with deadline(30), pytest.raises(TamperedResultError, match=r"SHA256SUMS is missing or unreadable .*not a "
                                                                r"regular file.*git checkout"):
        split_published(configs, "smoke", tmp_path / "published")


# 5. A reader's rerun writes outside its folder, or fails on a long name.


@pytest.fixture
def page_runs(finished):
    return finished[1]


@pytest.mark.parametrize("number", ["2/../../../../pwned", "9" * 5000])
def test_a_rerun_figure_lands_in_book_figures(page_runs, tmp_path, number):
    root = tmp_path / "a" / "b" / "c" / "d"
    root.mkdir(parents=True)
    page = FigurePage("smoke", "mnist", number, runs=page_runs, root=str(root))
    files = page.files
    inside = (root / "book" / "figures").resolve()
    assert files.png.parent == inside and files.pdf.parent == inside and len(files.stem) < 150
    assert [p.name for p in (tmp_path / "a").rglob("*") if p.is_file() and inside not in p.parents] == []
    assert "/" not in figure_stem("figure2/../x", None) and figure_stem("figure2/../x", None) != "figure2/../x"


# 6. A rerun can overwrite the book's full-scale figure, and the build would not notice.


def test_a_rerun_never_takes_a_book_figure_name_unless_every_parameter_matches():
    paper = {**notebook_defaults("figure.md"), "profile": "paper", "figure": "cifar10", "figure_number": 1}
    assert rerun_of("figure.md", {**paper, "published": True}) is None  # the full-scale page itself
    assert rerun_of("figure.md", {**paper, "published": False}) is not None  # a local retrain: another name
    assert rerun_of("figure.md", {**paper, "published": False, "profile": "smoke"}) is None  # the smoke book's page


def test_a_changed_figure_file_has_its_page_executed_again(tmp_path):
    executed, figures = tmp_path / "book" / "executed", tmp_path / "book" / "figures"
    executed.mkdir(parents=True)
    figures.mkdir()
    (executed / "page.ipynb").write_text('{"src": "../figures/figure1_cifar10_paper.png"}')
    (figures / "figure1_cifar10_paper.png").write_bytes(b"the book's figure")
    book._record_inputs(tmp_path, "page", "inputs")
    assert book._unchanged(tmp_path, "page", "inputs")
    (figures / "figure1_cifar10_paper.png").write_bytes(b"a rerun's figure")
    assert not book._unchanged(tmp_path, "page", "inputs")


# 7. --scheduler at a port that listens but is not Dask.


@pytest.fixture
def not_dask():
    """A TCP port that accepts and reads, then answers like an HTTP server or not at all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            conn.recv(65536)
            if len(held) % 2:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_a_scheduler_address_that_is_not_dask_gives_up_within_10_seconds(not_dask, tmp_path, capsys):
    for _ in range(2):  # the HTTP-like answer, then silence
        tic = time.monotonic()
        with deadline(60):
            code, _, line = run_cli(["sweep", "--dataset", "mnist", "--widths", "8", "--n-per-class", "2",
                                     "--epochs", "2", "--weight-decays", "0", "--results", str(tmp_path),
                                     "--scheduler", not_dask], capsys)
        assert time.monotonic() - tic < 15
        one_line_error(code, line, f"cannot reach a Dask scheduler at '{not_dask}' within 10 s")


# 8. A damaged or empty cifar-10-batches-py.


def _fake_batches(folder: Path, monkeypatch) -> None:
    """Official-looking batches of random pixels, whose md5s torchvision's CIFAR10 is told to expect."""
    from torchvision.datasets import CIFAR10

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        entry = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)}))
    import hashlib

    for path in folder.iterdir():
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", md5[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})


def test_the_official_batches_read_as_torchvision_reads_them(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    _fake_batches(tmp_path / "cifar-10-batches-py", monkeypatch)
    for split, train in (("train", True), ("test", False)):
        images, labels, classes = data._read_batches(tmp_path / "cifar-10-batches-py", split)
        reference = CIFAR10(str(tmp_path), train=train, download=False)
        assert np.array_equal(images, reference.data.transpose(0, 3, 1, 2))
        assert labels.tolist() == reference.targets and list(classes) == reference.classes


def test_a_damaged_or_incomplete_batches_folder_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    official = tmp_path / "cifar-10-batches-py"
    _fake_batches(official, monkeypatch)
    (official / "data_batch_3").write_bytes(b"\x80damaged")
    with pytest.raises(data.DataCorruptError, match="data_batch_3 is damaged"):
        data.load("cifar10", "train", n_per_class=1, root=tmp_path, download=False)
    (official / "data_batch_3").unlink()
    with pytest.raises(data.DataCorruptError, match="data_batch_3 is damaged \\(missing"):
        data.load("cifar10", "train", n_per_class=1, root=tmp_path, download=False)
    code, _, line = run_cli(["--data", str(tmp_path), "--results", str(tmp_path / "r"), "train", "--dataset",
                             "cifar10", "--n-per-class", "1", "--epochs", "1", "--quiet"], capsys)
    one_line_error(code, line, "data_batch_3 is damaged")


def test_a_good_tarball_beside_an_empty_batches_folder_is_used(tmp_path, data_root):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar10-jpeg.tar.gz").symlink_to(data_root / "cifar10-jpeg.tar.gz")
    split = data.load("cifar10", "test", n_per_class=1, root=tmp_path, download=False)
    assert split.provenance["source"] == "CIFAR-10 (JPEG q75 copy)"


# 9a. publish with one edited cached metrics.csv.


def test_publish_with_a_damaged_cached_run_names_the_missing_run(finished, tmp_path, capsys):
    configs, runs = finished
    (runs[1].path / "metrics.csv").write_text("edited\n")
    with pytest.raises(MissingResultError, match="no finished run"):
        find_finished(configs, tmp_path / "results")


# 9b. The pixel-checksum memo outlives a change of the data.


def test_a_changed_data_file_is_not_served_from_the_checksum_memo(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data_root / "MNIST" / "raw" / name, raw / name)
    first = data.load("mnist", "test", n_per_class=2, root=tmp_path, download=False).provenance["pixels_sha256"]
    assert data.known_checksum("mnist", "test", 2, 0, root=tmp_path) == first
    images = bytearray((raw / "t10k-images-idx3-ubyte").read_bytes())
    images[16:16 + 784 * 10000] = bytes(255 - b for b in images[16:16 + 784 * 10000])
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes(images))
    os.utime(raw / "t10k-images-idx3-ubyte", ns=(1, 1))  # even with an old time: the size or the time moved
    assert data.known_checksum("mnist", "test", 2, 0, root=tmp_path) is None


# 9c. A read-only results folder holding a dead writer's temporary file.


def test_a_leftover_that_cannot_be_removed_does_not_refuse_a_valid_run(good, tmp_path, monkeypatch):
    (good.path / f".metrics.csv.tmp{dead_pid()}").write_bytes(b"partial")
    real = Path.unlink

    def read_only(path, *args, **kwargs):
        if ".tmp" in path.name:
            raise PermissionError(13, "Read-only file system", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    assert results.run_or_load(RunConfig.from_dict(TINY), tmp_path).meta == good.meta


# 9d. An MNIST file that is a FIFO, a link loop in the JPEG copy.


def test_an_mnist_file_that_is_a_fifo_is_one_line(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw)
    os.mkfifo(raw / "t10k-images-idx3-ubyte")
    with deadline(30), pytest.raises(data.DataCorruptError, match="t10k-images-idx3-ubyte is damaged \\(not a "
                                                                    "regular file"):
        data.load("mnist", "test", n_per_class=1, root=tmp_path, download=False)


def test_a_link_loop_in_the_jpeg_copy_is_one_line(tmp_path):
    for name in data.CIFAR10_CLASSES:
        (tmp_path / "cifar10-jpeg" / "test" / name).mkdir(parents=True)
    (tmp_path / "cifar10-jpeg" / "test" / "cat" / "loop").symlink_to("..")
    with deadline(30), pytest.raises(data.DataCorruptError, match="a link loop"):
        data.image_folder(str(tmp_path / "cifar10-jpeg" / "test"))


# 9e. A decompression bomb in the JPEG copy.


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (no pixels: a reader that trusts it decodes forever)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [20000, 64])
def test_an_image_too_large_or_of_another_size_is_one_line(tmp_path, size):
    for name in data.CIFAR10_CLASSES:
        (tmp_path / "cifar10-jpeg" / "test" / name).mkdir(parents=True)
        (tmp_path / "cifar10-jpeg" / "test" / name / "0.png").write_bytes(_png_header(size, size))
    with pytest.raises(data.DataCorruptError, match=r"0\.png is damaged") as err:
        data.load("cifar10", "test", n_per_class=1, root=tmp_path, download=False)
    assert "\n" not in str(err.value)


# 9f. A malformed profiles.yaml.


@pytest.mark.parametrize(("text", "message"), [
    ("smoke:\n  figures:\n    mnist: {weight_decays: [0], seeds: 1}\n", "seeds must be a list of integers"),
    ("- smoke\n- default\n", "must map profile names"),
    ("smoke: [\n", "cannot be read"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, "
     "*b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
     "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n", "an alias bomb"),
], ids=["seeds-not-a-list", "a-list-at-top", "not-yaml", "billion-laughs"])
def test_a_malformed_profiles_file_is_one_line(text, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "profiles.yaml").write_text(text)
    monkeypatch.setattr(profiles, "PROFILES", tmp_path / "profiles.yaml")
    with deadline(30):
        code, _, line = run_cli(["sweep", "--profile", "smoke"], capsys)
    one_line_error(code, line, message)


# 9g. Ctrl-C during a sweep.


def test_an_interrupted_sweep_is_one_line(tmp_path, capsys, monkeypatch):
    import ncpaper.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ncpaper.cli, "run_sweep", interrupted)
    code, out, line = run_cli(["sweep", "--weight-decays", "0", "--results", str(tmp_path)], capsys)
    assert code == 130 and line.startswith("ncpaper: interrupted") and "\n" not in line and out == ""
    sweep._ignore_interrupts()  # what a local cluster's worker runs (here: the test's main thread)
    import signal

    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.default_int_handler)


# 9h, 9i. SHA256SUMS: a file listed twice; the line forms `sha256sum -c` accepts.


def _sums(folder: Path) -> list[str]:
    return (folder / "SHA256SUMS").read_text().splitlines()


def test_a_file_listed_twice_in_the_manifest_is_an_error(finished, tmp_path):
    configs, runs = finished
    folder = publish(runs, "smoke", tmp_path / "published")[0].parent
    lines = _sums(folder)
    (folder / "SHA256SUMS").write_text("\n".join(["0" * 64 + lines[0][64:], *lines]) + "\n")
    with pytest.raises(TamperedResultError, match=r"SHA256SUMS is damaged \(line 2 lists .* a second time"):
        split_published(configs, "smoke", tmp_path / "published")


def test_every_line_form_sha256sum_accepts_is_accepted(finished, tmp_path):
    import subprocess

    configs, runs = finished
    folder = publish(runs, "smoke", tmp_path / "published")[0].parent
    lines = _sums(folder)
    forms = [lambda d, n: f"{d} {n}", lambda d, n: f"{d} *{n}", lambda d, n: f"SHA256 ({n}) = {d}",
             lambda d, n: f"  {d.upper()}\t{n}", lambda d, n: f"{d}  ./{n}"]
    for form in forms:
        text = "# published runs\n\n" + "\n".join(form(line[:64], line[66:]) for line in lines) + "\n"
        (folder / "SHA256SUMS").write_text(text)
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder).returncode == 0
        assert len(split_published(configs, "smoke", tmp_path / "published")[0]) == 2
        from ncpaper.published import read_manifest

        assert read_manifest(folder / "SHA256SUMS") == {line[66:]: line[:64] for line in lines}
    write_manifest(folder)


# 9j. lambda = -0.0 gets its own key.


def test_minus_zero_weight_decay_is_the_run_of_zero(monkeypatch):
    args = build_parser().parse_args(["train", "--weight-decay", "-0.0"])
    config = _config(args, args.weight_decay, 0)
    assert math.copysign(1, config.weight_decay) == 1
    assert config.to_dict() == _config(args, 0.0, 0).to_dict()
    (tmp := profiles.load_profile("smoke")["figures"]["mnist"])["weight_decays"] = [-0.0]
    monkeypatch.setattr(profiles, "load_profile", lambda name: {"figures": {"mnist": tmp}})
    assert all(math.copysign(1, c.weight_decay) == 1 for c in profiles.figure_configs("smoke", "mnist"))


def test_published_module_still_reads_the_repository_manifests():
    """The committed profiles' SHA256SUMS parse with the new reader, every line once."""
    from ncpaper.published import read_manifest

    for manifest in sorted(published.published_dir().glob("*/SHA256SUMS")):
        listed = read_manifest(manifest)
        assert len(listed) == len(manifest.read_text().splitlines())
        assert json.dumps(listed)  # names and digests are plain strings
