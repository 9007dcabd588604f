"""Balanced subsets, provenance, the JPEG copy of CIFAR-10, and missing-data errors."""

import pytest
import torch

from ncpaper import data


def test_mnist_balanced_subset_is_seeded_and_recorded():
    a = data.load("mnist", "train", n_per_class=5, seed=1)
    b = data.load("mnist", "train", n_per_class=5, seed=1)
    c = data.load("mnist", "train", n_per_class=5, seed=2)
    assert a.x.shape == (50, 1, 28, 28) and a.x.dtype == torch.float32
    assert a.class_counts() == [5] * 10 and a.is_balanced()
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    p = a.provenance
    assert p["source"].startswith("MNIST") and p["dataset"] == "mnist" and p["seed"] == 1
    assert p["files"]["train-images-idx3-ubyte"].startswith("ba891046")  # sha256 in shared/data/README.md
    assert p["pixels_sha256"] == b.provenance["pixels_sha256"] != c.provenance["pixels_sha256"]


def test_whole_mnist_split_is_unbalanced_and_the_theory_refuses_it():
    test = data.load("mnist", "test")
    assert len(test.y) == 10_000 and not test.is_balanced()
    with pytest.raises(ValueError, match="the theory assumes balanced classes"):
        test.require_balanced()


def test_cifar10_jpeg_copy_from_the_tarball():
    split = data.load("cifar10", "test", n_per_class=3, seed=0)
    assert split.x.shape == (30, 3, 32, 32)
    assert split.class_names[0] == "airplane" and split.class_counts() == [3] * 10
    assert split.provenance["source"] == "CIFAR-10 (JPEG q75 copy)"
    assert split.provenance["files"]["cifar10-jpeg.tar.gz"].startswith("1fab6e73")
    assert abs(split.x.mean().item()) < 0.5  # normalised


def test_image_folder_lists_what_torchvisions_image_folder_lists(tmp_path):
    """The JPEG copy's listing (no torchvision import) in ImageFolder's order and labels, nested folders and
    other files included, and on the real test split."""
    from torchvision.datasets import ImageFolder

    for name, files in {"b": ["z.jpg", "sub/a.JPG", "a.png", "notes.txt"], "a": ["2.jpeg", "10.jpeg"]}.items():
        for file in files:
            (tmp_path / name / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / file).write_bytes(b"")
    folders = [str(tmp_path)]
    data.load("cifar10", "test", n_per_class=1)  # unpacks the shared copy into the cache if needed
    folders += [str(p) for p in data.cache_dir().glob("cifar10-jpeg-*/test")][:1]
    for folder in folders:
        classes, paths, labels = data.image_folder(folder)
        reference = ImageFolder(folder, loader=lambda path: path, allow_empty=True)
        assert list(classes) == reference.classes
        assert list(zip(paths, labels.tolist(), strict=True)) == reference.samples
    assert len(folders) == 2 and len(data.image_folder(folders[1])[1]) == 10_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "svhn"}, "unknown dataset 'svhn'"),
        ({"dataset": "mnist", "split": "val"}, "split must be 'train' or 'test'"),
        ({"dataset": "mnist", "n_per_class": 6000}, "class 5 of the mnist train split has only 5421"),
        ({"dataset": "mnist", "n_per_class": 0}, "positive integer"),
    ],
)
def test_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load(**kwargs)


def test_missing_dataset_without_network_names_the_root(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist", root=tmp_path / "nowhere")
    message = str(err.value)
    assert str((tmp_path / "nowhere").resolve()) in message and "NCPAPER_DATA" in message
    assert "network is unreachable" in message and "\n" not in message
    with pytest.raises(data.DataNotFoundError, match="CIFAR-10 not found"):
        data.load("cifar10", root=tmp_path / "nowhere", download=False)


def _mnist_copy(root, data_root, split="t10k"):
    """A data root with a copy of one MNIST split's two IDX files (the caller damages one)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{split}-{kind}-ubyte"
        (raw / name).write_bytes((data_root / "MNIST" / "raw" / name).read_bytes())
    return raw


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-5]),
         r"t10k-images-idx3-ubyte is damaged \(7,840,011 bytes where its header \[10000, 28, 28\] promises "
         r"7,840,016; truncated\?\)"),
        (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b""),
         r"t10k-labels-idx1-ubyte is damaged \(0 bytes, shorter than its 8-byte header\)"),
        (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(
            (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8 + 17] + bytes([200])
            + (raw / "t10k-labels-idx1-ubyte").read_bytes()[8 + 18:]),
         r"t10k-labels-idx1-ubyte is damaged \(label 200 at position 17; MNIST labels are 0-9\)"),
    ],
    ids=["truncated-images", "empty-labels", "label-out-of-range"],
)
def test_damaged_mnist_files_are_named(tmp_path, data_root, damage, message):
    raw = _mnist_copy(tmp_path, data_root)
    damage(raw)
    with pytest.raises(data.DataCorruptError, match=f"^{raw}/{message}: restore it"):
        data.load("mnist", "test", n_per_class=3, root=tmp_path)


def test_a_truncated_cifar_tarball_is_named_and_leaves_nothing(tmp_path, data_root, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NCPAPER_CACHE", str(cache))
    cache.mkdir()
    dead = __import__("subprocess").Popen(["true"])
    dead.wait()
    stale = cache / f"cifar10-jpeg-0123456789ab.tmp{dead.pid}"  # an unpack killed midway
    (stale / "train").mkdir(parents=True)
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes((data_root / "cifar10-jpeg.tar.gz").read_bytes()[:300_000])
    with pytest.raises(data.DataCorruptError, match=rf"^{tmp_path}/cifar10-jpeg.tar.gz is damaged \(EOFError: "
                                                    r".*\): restore it"):
        data.load("cifar10", "test", n_per_class=3, root=tmp_path)
    assert list(cache.iterdir()) == []  # neither the stale unpack nor this one's


def test_input_pool_averages_pixel_blocks_and_is_recorded():
    full = data.load("cifar10", "test", n_per_class=2, seed=0)
    pooled = data.load("cifar10", "test", n_per_class=2, seed=0, input_pool=2)
    assert pooled.x.shape == (20, 3, 16, 16) and torch.equal(pooled.y, full.y)
    block = full.x[3, 1, 4:6, 10:12].mean()  # output pixel (2, 5) of image 3, channel 1
    assert pooled.x[3, 1, 2, 5].item() == pytest.approx(block.item(), abs=1e-6)
    assert pooled.provenance["input_pool"] == 2 and "input_pool" not in full.provenance
    assert pooled.provenance["pixels_sha256"] == full.provenance["pixels_sha256"]  # the source pixels


@pytest.mark.parametrize(("pool", "message"), [(0, "positive integer"), (1.5, "positive integer"),
                                               (29, "larger than the mnist images")])
def test_bad_input_pool_says_what_to_do(pool, message):
    with pytest.raises(ValueError, match=message):
        data.load("mnist", "test", n_per_class=1, input_pool=pool)
