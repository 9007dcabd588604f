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
import pickle
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


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`); an OSError if it holds more than ``limit``."""
    with open_regular(path) as f:
        too_large = os.fstat(f.fileno()).st_size > limit
        data = b"" if too_large else f.read()  # a regular file ends (it may have grown since: checked below)
    if too_large or len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
    return data


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


MAX_DATA_FILE_BYTES = 1 << 28  # an MNIST IDX file or a CIFAR-10 batch is at most 47 MB


def _read_data_file(path: Path) -> bytes:
    """A data file's bytes; a FIFO, a device, a folder or a file over MAX_DATA_FILE_BYTES is one line naming it."""
    try:
        return read_regular(path, MAX_DATA_FILE_BYTES)
    except OSError as err:
        raise _damaged(path, err.strerror or str(err)) from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic 00 00 08 <ndim>, ndim big-endian uint32 sizes, the bytes."""
    raw = _read_data_file(path)
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


# Where each dataset's files are, under the data root: their sizes and times are part of a memo's key
_SOURCE_PATTERNS = {"mnist": ("MNIST/raw/*-ubyte",),
                    "cifar10": ("cifar-10-batches-py/*", "cifar10-jpeg.tar.gz", "cifar10-jpeg/*", "cifar10-jpeg/*/*")}


def _source_stamp(dataset: str, base: Path) -> tuple:
    """(path, size, mtime) of the files and class folders ``dataset`` is read from: a process that lives long (a
    kernel, a Dask worker) forgets a checksum once they change. An image edited in place in a class folder of the
    JPEG copy changes neither."""
    stamp = []
    for pattern in _SOURCE_PATTERNS.get(dataset, ()):
        for path in sorted(base.glob(pattern)):
            with contextlib.suppress(OSError):
                st = path.stat()
                stamp.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def _checksum_key(dataset, split, n_per_class, seed, base: Path) -> tuple:
    return dataset, split, n_per_class, int(seed), str(base.resolve()), _source_stamp(dataset, base)


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


# The official python batches of each split, and the file of class names
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}
CIFAR10_META = "batches.meta"


def _official_files(official: Path, split: str) -> list[Path]:
    return [official / name for name in (*CIFAR10_BATCHES[split], CIFAR10_META)]


def _load_cifar10(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, tuple, dict]:
    split = "train" if train else "test"
    official = root / "cifar-10-batches-py"
    folder = root / "cifar10-jpeg"
    tarball = root / "cifar10-jpeg.tar.gz"
    present = [os.path.lexists(f) for f in _official_files(official, split)]
    complete = all(present)
    if any(present) and not complete:  # part of the official files: one of them was lost
        absent = next(f for f, there in zip(_official_files(official, split), present, strict=True) if not there)
        raise _damaged(absent, "missing: the batches folder is incomplete")
    if not complete and not (folder / split).exists():  # an empty batches folder hides no other copy
        if tarball.exists():
            folder = _unpack_jpeg_tarball(tarball)
        elif download:
            from torchvision.datasets import CIFAR10

            try:
                with _removed_if_failed(root):
                    CIFAR10(str(root), train=train, download=True)
            except Exception as err:
                raise _missing("CIFAR-10", root, [official, folder, tarball], err) from None
            complete = True
        else:
            raise _missing("CIFAR-10", root, [official, folder, tarball], None)
    if complete:
        images, labels, classes = _read_batches(official, split)
        files = sorted(official.glob("*_batch*"))
        provenance = {"source": "CIFAR-10 (official python batches)", "location": str(official.resolve()),
                      "files": {f.name: sha256_file(f) for f in files}}
        return images, labels, classes, provenance
    classes, paths, labels = image_folder(str(folder / split))
    if classes != CIFAR10_CLASSES:
        raise ValueError(f"{folder / split} has class folders {list(classes)}, expected {list(CIFAR10_CLASSES)}")
    provenance = {"source": "CIFAR-10 (JPEG q75 copy)", "location": str((folder / split).resolve()),
                  "files": {tarball.name: sha256_file(tarball)} if tarball.exists() else {}}
    return _LazyImages(paths), labels, CIFAR10_CLASSES, provenance


def _read_batches(official: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(N x 3 x 32 x 32 uint8 images, labels, class names) of a split of the official batches, as torchvision's
    ``CIFAR10`` reads them; each file must be the official one (torchvision's md5), else one line naming it."""
    from torchvision.datasets import CIFAR10

    md5 = {name: digest for name, digest in (*CIFAR10.train_list, *CIFAR10.test_list)}
    md5[CIFAR10_META] = CIFAR10.meta["md5"]
    data, labels = [], []
    for name in CIFAR10_BATCHES[split]:
        entry = _official_pickle(official / name, md5[name])
        data.append(entry["data"])
        labels.extend(entry["labels"])
    classes = tuple(_official_pickle(official / CIFAR10_META, md5[CIFAR10_META])["label_names"])
    return np.vstack(data).reshape(-1, 3, 32, 32), np.asarray(labels), classes


def _official_pickle(path: Path, md5: str) -> dict:
    """One of the official batch files, unpickled only once its md5 is the official file's (a pickle can run code)."""
    raw = _read_data_file(path)
    if hashlib.md5(raw, usedforsecurity=False).hexdigest() != md5:
        raise _damaged(path, "it is not the official file: its md5 differs")
    return pickle.loads(raw, encoding="latin1")  # the official file, by its md5


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
        for folder, _, files in sorted(_walk(os.path.join(path, name))):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(folder, file))
                    labels.append(label)
    return classes, tuple(paths), np.asarray(labels, dtype=np.int64)


def _walk(top: str):
    """``os.walk(top, followlinks=True)``; a folder reached twice (a link loop, which would never end, or a folder
    linked twice, whose images would count twice) is one line naming it."""
    seen = set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            raise DataCorruptError(f"{folder} is a folder already read under {top} (a link loop, or a folder linked "
                                   "twice): remove the link")
        seen.add((st.st_dev, st.st_ino))
        yield folder, dirs, files


CIFAR10_SIZE = (32, 32)


def _rgb(path: str) -> np.ndarray:
    """One image of the JPEG copy as 32 x 32 x 3 bytes; anything else (not a regular file, not an image, another
    size, a decompression bomb) is one line naming it, decoded never."""
    from PIL import Image

    try:
        with open_regular(path) as f, Image.open(f) as image:
            size = image.size
            if size == CIFAR10_SIZE:
                return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _damaged(Path(path), f"{type(err).__name__}: {' '.join(str(err).split())[:120]}") from None
    raise _damaged(Path(path), f"{size[0]}x{size[1]} pixels, where CIFAR-10's images are 32x32")


class _LazyImages:
    """Decode only the images that a subset selects (a JPEG copy need not be decoded in full)."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([_rgb(self.paths[i]) for i in indices]).transpose(0, 3, 1, 2)


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
