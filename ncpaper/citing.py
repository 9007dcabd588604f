"""How to cite the book and get its code: the source archive, the licence statement, cite lines and BibTeX.

- **The source archive.** The site offers the source of the commit it was built from, as ``git archive`` makes
  it (tracked files only: no datasets, no ``results/`` cache, no virtual environment; the committed
  ``published/`` measurement tables are source of the full-scale pages and are in it):
  ``ncpaper-<version>-<commit>.tar.gz`` at the site's root, with its sha256 beside it. ``git archive`` of one
  commit gives the same bytes every time (tar times are the commit's, gzip writes no timestamp), so a page
  executed before the site is rendered can already name the archive's sha256.
- **One licence statement**, everywhere (footer, cite lines, figure metadata, BibTeX, CITATION.cff): the code is
  MIT (LICENSE), the text and figures CC-BY-4.0 (LICENSE-content).
- **Cite lines** name the version, the commit, the archive and its sha256; a figure made with other parameters
  than the book page's says that it is not the book's figure.
- **BibTeX** in classic BibTeX's types (``@misc`` for the software), titles in braces so that styles keep their
  capitals.

``CITATION.cff`` is committed, so it cannot hold the sha256 of an archive of the commit it is in: it names the
archive's form and where the built site links it; the site's footer and every cite line give the sha256.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LICENCE", "LICENCE_SHORT", "SourceArchive", "bibtex", "citation", "cite_line", "source_archive"]

REPO = Path(__file__).resolve().parents[1]
LICENCE = "code: MIT (LICENSE); text and figures: CC-BY-4.0 (LICENSE-content)"
LICENCE_SHORT = "code MIT, text and figures CC-BY-4.0"


@dataclass(frozen=True)
class SourceArchive:
    """``git archive`` of one commit as .tar.gz: its file name, commit, sha256, size and bytes."""

    name: str
    commit: str
    sha256: str
    data: bytes
    dirty: bool  # the working tree had uncommitted changes (the archive holds the commit without them)

    @property
    def size(self) -> int:
        return len(self.data)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True)


@functools.lru_cache(maxsize=4)
def source_archive(repo: str | Path = REPO) -> SourceArchive | None:
    """The archive of ``repo``'s HEAD (None when ``repo`` is not a git checkout): ``ncpaper-<version>-<commit
    10>.tar.gz`` holding the tracked files under ``ncpaper-<version>-<commit 10>/``."""
    from . import __version__

    repo = Path(repo)
    head = _git(repo, "rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    commit = head.stdout.decode().strip()
    prefix = f"ncpaper-{__version__}-{commit[:10]}"
    made = _git(repo, "archive", "--format=tar.gz", f"--prefix={prefix}/", commit)
    if made.returncode != 0:
        return None
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip())
    return SourceArchive(f"{prefix}.tar.gz", commit, hashlib.sha256(made.stdout).hexdigest(), made.stdout, dirty)


def citation(path: str | Path | None = None) -> dict:
    """The repository's ``CITATION.cff`` (the one citation source), parsed."""
    import yaml

    path = Path(path) if path else REPO / "CITATION.cff"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the book's citations are generated from CITATION.cff")
    return yaml.safe_load(path.read_text())


def _source_clause(archive: SourceArchive | None) -> str:
    if archive is None:
        return "commit unknown (not a git checkout)"
    if archive.dirty:
        return f"commit `{archive.commit[:10]}` + uncommitted changes (no source archive holds exactly this code)"
    return f"commit `{archive.commit[:10]}`, source `{archive.name}` (sha256 `{archive.sha256}`)"


def cite_line(what: str, rerun: str | None = None, archive: SourceArchive | None = None,
              cff: dict | None = None) -> str:
    """How to cite one figure (or table): authors (year), *title*, version, ``what``, commit, the source archive
    and its sha256, the licence. ``rerun``: the parameters of a run that is not the book page's (then the line says
    so, first). ``archive``: default :func:`source_archive` of this checkout."""
    cff = cff or citation()
    archive = archive if archive is not None else source_archive()
    author = cff["authors"][0].get("name") or cff["authors"][0]["family-names"]
    line = (f"{author} ({str(cff['date-released'])[:4]}). *{cff['title']}*, version {cff['version']}, {what}, "
            f"{_source_clause(archive)}. Licence: {LICENCE_SHORT}.")
    if rerun:
        line = (f"**Not the book's figure:** made by a rerun with {rerun}, which the book's pages do not use. "
                + line)
    return line


def _braced(text: str) -> str:
    """A BibTeX title in double braces, so that every style keeps its capitals."""
    return "{" + text + "}"


def _bib_authors(authors: list[dict]) -> str:
    return " and ".join(f"{a['family-names']}, {a['given-names']}" if "family-names" in a else "{" + a["name"] + "}"
                        for a in authors)


def bibtex(cff: dict, archive: SourceArchive | None = None) -> str:
    """BibTeX for the reproduction (``@misc``: classic BibTeX has no ``@software``) and, from ``references:``,
    the paper it reproduces. Titles in braces; the licence statement and, when given, the archive and its sha256
    in the note."""
    year = str(cff["date-released"])[:4]
    note = [f"Version {cff['version']}"]
    if archive is not None and not archive.dirty:
        note.append(f"commit {archive.commit[:10]}, source archive {archive.name}, sha256 {archive.sha256}")
    note.append(f"Licence: {LICENCE_SHORT}")
    entries = [("misc", "ncpaper" + year, {
        "title": _braced(cff["title"]), "author": _bib_authors(cff["authors"]), "year": year,
        "howpublished": "Executable Jupyter Book", "note": ". ".join(note),
        "url": cff.get("repository-code") or cff.get("url")})]
    for ref in cff.get("references", []):
        key = ref["authors"][0]["family-names"].lower() + str(ref["year"]) + ref["title"].split()[0].lower()
        entries.append(("inproceedings" if ref["type"] == "conference-paper" else "article", key, {
            "title": _braced(ref["title"]), "author": _bib_authors(ref["authors"]),
            "booktitle": (ref.get("conference") or {}).get("name") or ref.get("collection-title"),
            "pages": f"{ref['start']}--{ref['end']}" if "start" in ref else None, "year": str(ref["year"]),
            "doi": ref.get("doi")}))
    out = []
    for kind, key, fields in entries:
        body = ",\n".join(f"  {name:<12} = {{{value}}}" for name, value in fields.items() if value)
        out.append(f"@{kind}{{{key},\n{body}\n}}")
    return "\n".join(out)
