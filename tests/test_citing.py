"""Citing and getting the code: the source archive (git archive, the same bytes every time, tracked files only), one
licence statement, cite lines naming the archive and its sha256, classic-BibTeX entries, CITATION.cff."""

import hashlib
import io
import subprocess
import tarfile

import pytest

from ncpaper import __version__
from ncpaper.citing import LICENCE, LICENCE_SHORT, bibtex, citation, cite_line, source_archive


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "ncpaper").mkdir(parents=True)
    (repo / "ncpaper" / "__init__.py").write_text("__version__ = 'x'\n")
    (repo / ".gitignore").write_text("results/\ndata/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    for ignored in ("results/run/metrics.csv", "data/MNIST/raw/x", "notes.txt"):  # results, data, untracked
        (repo / ignored).parent.mkdir(parents=True, exist_ok=True)
        (repo / ignored).write_text("not source")
    return repo


def test_the_archive_holds_the_commit_and_only_its_tracked_files(checkout):
    archive = source_archive(checkout)
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert archive.commit == commit and archive.name == f"ncpaper-{__version__}-{commit[:10]}.tar.gz"
    assert archive.sha256 == hashlib.sha256(archive.data).hexdigest() and not archive.dirty
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    prefix = archive.name[:-len(".tar.gz")]
    assert names == [f"{prefix}/.gitignore", f"{prefix}/ncpaper/__init__.py"]  # no results, data or untracked file
    source_archive.cache_clear()
    assert source_archive(checkout).data == archive.data  # the same bytes again: a page can name the sha256
    (checkout / "ncpaper" / "__init__.py").write_text("changed\n")
    source_archive.cache_clear()
    assert source_archive(checkout).dirty and source_archive(checkout).sha256 == archive.sha256
    assert source_archive(checkout.parent) is None  # not a git checkout


def test_cite_lines_name_the_archive_its_sha256_and_the_licence(checkout):
    cff = citation()
    source_archive.cache_clear()
    archive = source_archive(checkout)
    line = cite_line("Figure 1 (CIFAR-10, profile 'default')", archive=archive, cff=cff)
    assert line.startswith(f"ncpaper contributors ({str(cff['date-released'])[:4]}). *{cff['title']}*, version "
                           f"{cff['version']}, Figure 1 (CIFAR-10, profile 'default'), commit `{archive.commit[:10]}`")
    assert f"`{archive.name}` (sha256 `{archive.sha256}`)" in line and line.endswith(f"Licence: {LICENCE_SHORT}.")
    rerun = cite_line("Figure 2", rerun="weight_decays=[0, 0.05]", archive=archive, cff=cff)
    assert rerun.startswith("**Not the book's figure:** made by a rerun with weight_decays=[0, 0.05]")
    (checkout / "ncpaper" / "__init__.py").write_text("changed\n")
    source_archive.cache_clear()
    dirty = cite_line("Figure 2", archive=source_archive(checkout), cff=cff)
    assert "+ uncommitted changes (no source archive holds exactly this code)" in dirty and "sha256" not in dirty


def test_bibtex_is_classic_bibtex_with_braced_titles_and_the_licence(checkout):
    from pybtex.database import parse_string

    cff = citation()
    source_archive.cache_clear()
    archive = source_archive(checkout)
    text = bibtex(cff, archive)
    assert text.startswith("@misc{ncpaper") and "@software" not in text
    entries = parse_string(text, "bibtex").entries
    software, paper = entries[f"ncpaper{str(cff['date-released'])[:4]}"], entries["rangamani2022neural"]
    assert software.type == "misc" and paper.type == "inproceedings"
    assert software.fields["title"] == "{" + cff["title"] + "}"  # the inner braces keep its capitals
    assert paper.fields["title"] == "{Neural Collapse in Deep Homogeneous Classifiers and the Role of Weight Decay}"
    note = software.fields["note"]
    assert f"Version {cff['version']}" in note and archive.sha256 in note and LICENCE_SHORT in note


def test_citation_cff_states_the_version_and_both_licences():
    cff = citation()
    assert cff["version"] == __version__
    assert cff["license"] == ["MIT", "CC-BY-4.0"]
    assert "MIT" in cff["message"] and "CC-BY-4.0" in cff["message"] and "source archive" in cff["message"]
    assert LICENCE == "code: MIT (LICENSE); text and figures: CC-BY-4.0 (LICENSE-content)"
