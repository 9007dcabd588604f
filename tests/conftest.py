import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def data_root():
    """The local dataset copies (CI has them beside the checkout); NCPAPER_DATA wins if set."""
    root = Path(os.environ.get("NCPAPER_DATA") or SHARED_DATA).resolve()
    if not (root / "MNIST" / "raw").exists():
        pytest.fail(f"no MNIST under {root}: set NCPAPER_DATA to a folder holding MNIST/raw and cifar10-jpeg.tar.gz")
    os.environ["NCPAPER_DATA"] = str(root)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Unpacked datasets go to one session-wide cache; results never leak into the repository."""
    monkeypatch.setenv("NCPAPER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("NCPAPER_RESULTS", str(tmp_path_factory.mktemp("results")))
