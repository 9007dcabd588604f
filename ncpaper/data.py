"""MNIST and CIFAR-10 as balanced, in-memory tensors with a provenance record.

The data root is, in order: the ``root`` argument, the ``NCPAPER_DATA`` environment variable,
``./data``. Sources tried for each dataset (the first found wins, and the provenance says which):

* MNIST: torchvision's layout ``<root>/MNIST/raw/*-ubyte``; otherwise torchvision downloads it.
* CIFAR-10: the official python batches ``<root>/cifar-10-batches-py``; a class-folder copy
  ``<root>/cifar10-jpeg/{train,test}/<class>/*.jpg`` (listed as ``ImageFolder`` does); the tarball
  ``<root>/cifar10-jpeg.tar.gz`` unpacked once into the cache (``NCPAPER_CACHE``, default
  ``~/.cache/ncpaper``); otherwise torchvision downloads the official files.

A balanced subset takes ``n_per_class`` images of every class, chosen by ``seed``; the whole
subset is held as one float32 tensor so training does no per-sample Python work. ``input_pool=k``
averages the normalised images over k x k pixel blocks (CIFAR-10 32x32 -> 16x16 at k = 2): fewer
inputs, so a cheaper first layer, for experiments that state it.

A damaged file (a truncated IDX file or tarball, labels out of range) raises
:class:`DataCorruptError` naming the file; an unpack killed midway leaves nothing behind for good
(its ``.tmp<pid>`` folder is removed on the next start).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DataCorruptError", "DataNotFoundError", "LabelledImages", "cache_dir", "data_root",
           "input_shape", "known_checksum", "load", "process_alive"]

# Per-channel normalisation constants of the official training sets.
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
DATASETS = tuple(_NORMALISATION)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
# (channels, height, width) of each dataset's images, and its number of classes.
_IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_CLASSES = {"mnist": 10, "cifar10": 10}


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable."""


class DataCorruptError(ValueError):
    """A dataset file is truncated or damaged."""


@dataclass
class LabelledImages:
    """A split held in memory: normalised images ``x`` (N x ...), labels ``y`` (N), provenance."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...]
    provenance: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()

    def is_balanced(self) -> bool:
        return len(set(self.class_counts())) == 1

    def require_balanced(self) -> None:
        """The theory assumes a balanced set: raise if this one is not."""
        if not self.is_balanced():
            raise ValueError(f"the theory assumes balanced classes, but this {self.provenance.get('dataset')} "
                             f"split has class counts {self.class_counts()}; load it with n_per_class")


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("NCPAPER_DATA") or "data").expanduser()


def input_shape(dataset: str, input_pool: int = 1) -> tuple[int, int, int]:
    """The shape of one of ``dataset``'s images as a network sees it (after ``input_pool`` x ``input_pool`` pooling)."""
    channels, height, width = _IMAGE_SHAPES[dataset]
    return channels, height // input_pool, width // input_pool


def cache_dir() -> Path:
    """``$NCPAPER_CACHE`` (default ``~/.cache/ncpaper``); a ValueError if it, or a folder above it, is a file."""
    folder = Path(os.environ.get("NCPAPER_CACHE") or "~/.cache/ncpaper").expanduser()
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise ValueError(f"the cache folder {folder} cannot be made: {place} is a file; point NCPAPER_CACHE "
                                 "at a folder")
            break
    return folder


def open_regular(path: str | os.PathLike):
    """``path`` opened for reading in binary; an OSError if it is not a regular file (a FIFO would block a
    reader forever, a link to /dev/zero never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a regular file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def sha256_file(path: Path) -> str:
    """sha256 of a dataset file, computed once per process for an unchanged file (size and mtime)."""
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _missing(dataset: str, root: Path, looked_for: list[Path], err: Exception | None) -> DataNotFoundError:
    where = ", ".join(str(p) for p in looked_for)
    why = f" and downloading failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})" if err else ""
    return DataNotFoundError(
        f"{dataset} not found under data root {root.resolve()} (looked for {where}){why}. "
        "Put the files there, or point the NCPAPER_DATA environment variable (or root=) at a folder "
        "that holds them.")


def _load_mnist(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, tuple, dict]:
    split = "train" if train else "t10k"
    raw = root / "MNIST" / "raw"
    files = [raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"]
    source = "MNIST IDX files (torchvision layout)"
    if not all(f.exists() for f in files):
        if not download:
            raise _missing("MNIST", root, files, None)
        from torchvision.datasets import MNIST  # only to download: importing torchvision takes seconds

        try:
            with _removed_if_failed(raw):
                MNIST(str(root), train=train, download=True)
        except Exception as err:
            raise _missing("MNIST", root, files, err) from None
        source = "MNIST downloaded by torchvision"
    images, labels = _read_idx(files[0], 3), _read_idx(files[1], 1)
    if len(images) != len(labels):
        raise _damaged(files[1], f"{len(labels)} labels for the {len(images)} images of {files[0].name}")
    if len(labels) and (bad := int(labels.max())) > 9:
        raise _damaged(files[1], f"label {bad} at position {int(labels.argmax())}; MNIST labels are 0-9")
    provenance = {"source": source, "location": str(raw.resolve()),
                  "files": {f.name: sha256_file(f) for f in files}}
    return images[:, None, :, :], labels, tuple(str(i) for i in range(10)), provenance


@contextlib.contextmanager
def _removed_if_failed(folder: Path):
    """A download into ``folder``: if it fails, the folders it created on the way (``folder`` and missing
    parents, as long as they are empty) are removed again, so a failed download leaves no data root behind."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break
        raise


def _damaged(path: Path, why: str) -> DataCorruptError:
    return DataCorruptError(f"{path} is damaged ({why}): restore it from the original files, or delete it so "
                            "that it is downloaded again")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic 00 00 08 <ndim>, ndim big-endian uint32 sizes, the bytes."""
    raw = path.read_bytes()
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _damaged(path, f"{len(raw)} bytes, shorter than its {header}-byte header")
    if raw[:4] != bytes([0, 0, 8, ndim]):
        raise _damaged(path, f"it does not start like an IDX file of bytes with {ndim} dimension(s)")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise _damaged(path, f"{len(raw):,} bytes where its header {dims} promises {expected:,}; truncated?")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (the owner of a temporary file or a training registration)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# pixels_sha256 of every split this process has loaded: a cached run's key needs only the checksum,
# so reading many results that share their data (a phase diagram's lambdas) decodes it once.
_CHECKSUMS: dict[tuple, str] = {}


def _checksum_key(dataset, split, n_per_class, seed, base: Path) -> tuple:
    return dataset, split, n_per_class, int(seed), str(base.resolve())


def known_checksum(dataset: str, split: str = "train", n_per_class: int | None = None, seed: int = 0,
                   root: str | os.PathLike | None = None) -> str | None:
    """The ``pixels_sha256`` :func:`load` gave these arguments in this process (any pooling), or None if not loaded."""
    return _CHECKSUMS.get(_checksum_key(dataset, split, n_per_class, seed, data_root(root)))


def check_input_pool(input_pool) -> None:
    """``input_pool`` must be a positive integer (1: the images as they are)."""
    if isinstance(input_pool, bool) or not isinstance(input_pool, int | float) or int(input_pool) != input_pool \
            or input_pool < 1:
        raise ValueError(f"input_pool must be a positive integer (1 keeps the images as they are), got {input_pool!r}")


def _remove_stale_unpacks(cache: Path) -> None:
    """``cifar10-jpeg-<hash>.tmp<pid>`` folders of unpacks whose process is gone."""
    for tmp in cache.glob("cifar10-jpeg-*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack_jpeg_tarball(tarball: Path) -> Path:
    """Unpack the CIFAR-10 JPEG tarball once into the cache; return the ``cifar10-jpeg`` folder."""
    target = cache_dir() / f"cifar10-jpeg-{sha256_file(tarball)[:12]}"
    if not (target / "train").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_unpacks(target.parent)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            inner = next((p.parent for p in tmp.rglob("train") if (p.parent / "test").is_dir()), None)
            if inner is None:
                raise DataCorruptError(f"{tarball} holds no train/ and test/ class folders: restore it")
            try:
                inner.rename(target)  # atomic: a reader sees a complete folder or none
            except OSError:
                if not (target / "train").exists():
                    raise
        except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as err:
            why = " ".join(str(err).split())[:120] or "truncated"  # one line: tarfile's messages span several
            raise _damaged(tarball, f"{type(err).__name__}: {why}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_cifar10(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, tuple, dict]:
    split = "train" if train else "test"
    official = root / "cifar-10-batches-py"
    folder = root / "cifar10-jpeg"
    tarball = root / "cifar10-jpeg.tar.gz"
    if not official.exists() and not (folder / split).exists():
        if tarball.exists():
            folder = _unpack_jpeg_tarball(tarball)
        elif download:
            from torchvision.datasets import CIFAR10

            try:
                with _removed_if_failed(root):
                    CIFAR10(str(root), train=train, download=True)
            except Exception as err:
                raise _missing("CIFAR-10", root, [official, folder, tarball], err) from None
        else:
            raise _missing("CIFAR-10", root, [official, folder, tarball], None)
    if official.exists():
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(root), train=train, download=False)
        images = ds.data.transpose(0, 3, 1, 2)
        files = sorted(official.glob("*_batch*"))
        provenance = {"source": "CIFAR-10 (official python batches)", "location": str(official.resolve()),
                      "files": {f.name: sha256_file(f) for f in files}}
        return images, np.asarray(ds.targets), tuple(ds.classes), provenance
    classes, paths, labels = image_folder(str(folder / split))
    if classes != CIFAR10_CLASSES:
        raise ValueError(f"{folder / split} has class folders {list(classes)}, expected {list(CIFAR10_CLASSES)}")
    provenance = {"source": "CIFAR-10 (JPEG q75 copy)", "location": str((folder / split).resolve()),
                  "files": {tarball.name: sha256_file(tarball)} if tarball.exists() else {}}
    return _LazyImages(paths), labels, CIFAR10_CLASSES, provenance


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@functools.lru_cache(maxsize=4)
def image_folder(path: str) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(classes, image paths, labels) of ``<path>/<class>/**/<image>``, in torchvision ``ImageFolder``'s order
    (classes sorted, then each class's files in sorted walk order; a test holds the two equal), without
    importing torchvision (seconds per process). Listed once per process: 50,000 files take about a second,
    which every run of a sweep's worker would otherwise pay again."""
    classes = tuple(sorted(entry.name for entry in os.scandir(path) if entry.is_dir()))
    if not classes:
        raise DataNotFoundError(f"{path} has no class folders: expected {path}/<class>/<image>.jpg")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(os.path.join(path, name), followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(folder, file))
                    labels.append(label)
    return classes, tuple(paths), np.asarray(labels, dtype=np.int64)


class _LazyImages:
    """Decode only the images that a subset selects (a JPEG copy need not be decoded in full)."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        def rgb(path):
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))

        return np.stack([rgb(self.paths[i]) for i in indices]).transpose(0, 3, 1, 2)


_LOADERS = {"mnist": _load_mnist, "cifar10": _load_cifar10}


def balanced_indices(labels: np.ndarray, num_classes: int, n_per_class: int, seed: int,
                     dataset: str = "dataset") -> np.ndarray:
    """``n_per_class`` indices of every class, drawn without replacement by ``seed``, sorted."""
    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(counts.argmin())
    if n_per_class > counts[smallest]:
        raise ValueError(f"asked for {n_per_class} images per class, but class {smallest} of {dataset} "
                         f"has only {counts[smallest]}: ask for at most {counts[smallest]}")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=n_per_class, replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def load(dataset: str, split: str = "train", n_per_class: int | None = None, seed: int = 0,
         root: str | os.PathLike | None = None, download: bool = True, input_pool: int = 1) -> LabelledImages:
    """Load ``dataset`` ('mnist' or 'cifar10'), ``split`` ('train' or 'test') as tensors.

    ``n_per_class=None`` keeps the whole split (unbalanced for MNIST); an integer takes a
    balanced subset chosen by ``seed``. ``input_pool=k > 1`` averages the normalised images over
    k x k pixel blocks (the provenance records it; the checksum stays that of the source pixels).
    """
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n_per_class is not None and (int(n_per_class) != n_per_class or n_per_class < 1):
        raise ValueError(f"n_per_class must be a positive integer or None, got {n_per_class!r}")
    check_input_pool(input_pool)
    base = data_root(root)
    images, labels, classes, provenance = _LOADERS[dataset](base, split == "train", download)
    if n_per_class is None:
        indices = np.arange(len(labels))
    else:
        indices = balanced_indices(labels, len(classes), int(n_per_class), seed, f"the {dataset} {split} split")
    pixels = np.ascontiguousarray(images[indices])
    mean, std = _NORMALISATION[dataset]
    x = torch.from_numpy(pixels).float().div_(255)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if input_pool > 1:
        if min(x.shape[-2:]) < input_pool:
            raise ValueError(f"input_pool={input_pool} is larger than the {dataset} images ({tuple(x.shape[-2:])})")
        x = torch.nn.functional.avg_pool2d(x, input_pool)
        provenance["input_pool"] = int(input_pool)
    y = torch.from_numpy(labels[indices].astype(np.int64))
    checksum = hashlib.sha256(pixels.tobytes() + y.numpy().tobytes()).hexdigest()
    _CHECKSUMS[_checksum_key(dataset, split, n_per_class, seed, base)] = checksum
    provenance.update({
        "dataset": dataset, "split": split, "n_per_class": n_per_class, "seed": seed,
        "class_counts": torch.bincount(y, minlength=len(classes)).tolist(),
        "pixels_sha256": checksum,
        "normalisation": {"mean": list(mean), "std": list(std)},
    })
    return LabelledImages(x=x, y=y, class_names=classes, provenance=provenance)
