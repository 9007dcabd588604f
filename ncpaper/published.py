"""Published results: small, committed copies of finished runs that the book shows without retraining.

Runs too long to redo at every book build (the ``paper`` profile: full datasets, hours on a CPU)
are published into the repository as ``published/<profile>/<key>/metrics.csv`` and ``meta.json``:
the measurements and the run metadata (config, data provenance and pixel checksum, device,
versions, git commit, timings), never weights, checkpoints or data. They are found again by their
configuration alone, so reading them needs neither the datasets nor the result cache.

    ncpaper sweep --profile paper      # trains, checkpoints, resumes (results/, not committed)
    ncpaper publish --profile paper    # copies the finished runs' tables and metadata here

Every published file, ``meta.json`` included, is listed with its sha256 in
``published/<profile>/SHA256SUMS`` (``sha256sum -c SHA256SUMS`` checks it too), and every run's
``metrics.csv`` is covered by its ``meta.json`` (as in the result cache). In a git checkout whose
last commit holds files of the profile, every file must also be the committed one: an edit that
rewrites the checksums too is caught there. A file that fails is an error that names it, with the
``git checkout`` that restores it; a damaged published run never reads as a missing one.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path

from .data import read_regular, sha256_of
from .results import InvalidRunError, Run, check_run, load_run, read_meta, results_dir, sealed, verified_meta
from .train import RunConfig

__all__ = ["MANIFEST", "MissingResultError", "TamperedResultError", "check_published", "find_finished",
           "load_published", "publish", "published_dir", "read_manifest", "split_published", "verify_published",
           "write_manifest"]

PUBLISHED_FILES = ("metrics.csv",)
MANIFEST = "SHA256SUMS"
MAX_MANIFEST_BYTES = 16 << 20  # about 100,000 runs' lines; a larger SHA256SUMS is not read
# A line of SHA256SUMS in a form `sha256sum -c` accepts: "<sha256> <flag><name>" (flag " " or "*", or none; a tab
# for the space), or the tagged "SHA256 (<name>) = <sha256>"; either after blanks, and after a backslash when the
# name holds escapes (a backslash and n for a line break, two backslashes for one)
_SUM_LINE = re.compile(r"[ \t]*(\\?)(?:([0-9A-Fa-f]{64})[ \t][ *]?(.+)|SHA256 \((.+)\) = ([0-9A-Fa-f]{64}))")
REPOSITORY = Path(__file__).resolve().parents[1]


class MissingResultError(LookupError):
    """No finished (or published) run has the configuration asked for."""


class TamperedResultError(ValueError):
    """A published file differs from the sha256 recorded for it when it was published."""


def published_dir(root: str | os.PathLike | None = None) -> Path:
    """``published/`` at the repository root (or ``root``, or $NCPAPER_PUBLISHED)."""
    default = Path(__file__).resolve().parents[1] / "published"
    return Path(root or os.environ.get("NCPAPER_PUBLISHED") or default).expanduser()


def _config_id(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as ``git checkout`` takes it)."""
    try:
        return str(path.resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def write_manifest(folder: Path) -> Path:
    """``folder/SHA256SUMS``: the sha256 of every file of every published run, ``sha256sum`` format."""
    files = sorted(f for f in folder.glob("*/*") if f.is_file() and not f.parent.name.startswith("."))
    text = "".join(f"{sha256_of(f)}  {f.relative_to(folder).as_posix()}\n" for f in files)
    tmp = folder / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, check=True,
                          timeout=60).stdout.decode(errors="surrogateescape")


def committed_changes(folder: Path) -> list[tuple[str, str]] | None:
    """The files under ``folder`` that are not as the checkout's last commit has them: (path relative to
    ``folder``, git's two-letter status), tables first, the manifest last. None where git cannot tell: no git or not a
    checkout, nothing under ``folder`` committed (a profile not committed yet), or $NCPAPER_COMMIT set (a
    copy of the tree whose ``.git`` may be stale)."""
    if os.environ.get("NCPAPER_COMMIT"):
        return None
    try:
        if not _git(folder, "ls-tree", "-r", "--name-only", "-z", "HEAD", "--", ".").strip("\0"):
            return None
        prefix = _git(folder, "rev-parse", "--show-prefix").strip()
        status = _git(folder, "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    changes = [(entry[3:].removeprefix(prefix), entry[:2]) for entry in status.split("\0") if entry]
    return sorted(changes, key=lambda change: (change[0] == MANIFEST, change[0].endswith("meta.json"), change[0]))


def _verify_committed(folder: Path) -> None:
    """Raise naming the first file under ``folder`` that differs from the checkout's last commit (if git can tell)."""
    for name, code in committed_changes(folder) or []:
        shown = _shown(folder / name)
        if "?" in code or "A" in code:
            raise TamperedResultError(f"published file {shown} is not in the repository's last commit: remove it, "
                                      "or commit it if you published it")
        what = "is missing" if "D" in code else "differs from the repository's last commit"
        raise TamperedResultError(f"published file {shown} {what} (edited or damaged): restore it with "
                                  f"`git checkout HEAD -- {shown}`, or commit it if you republished it")


def _committed_folder(folder: Path) -> bool:
    """Whether the checkout's last commit holds files under ``folder`` (False where git cannot tell, as in
    :func:`committed_changes`)."""
    if os.environ.get("NCPAPER_COMMIT"):
        return False
    base = next((place for place in folder.parents if place.is_dir()), None)
    if base is None:
        return False
    try:
        listed = _git(base, "ls-tree", "-r", "--name-only", "-z", "HEAD", "--", os.path.relpath(folder, base))
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return bool(listed.strip("\0"))


def check_published(folder: Path, profile: str) -> None:
    """:func:`verify_published` where ``folder`` is a folder; where it is missing, or a file, while the checkout's
    last commit holds it, an error naming the ``git checkout`` that restores it (never "not yet published")."""
    if folder.is_dir():
        verify_published(folder, profile)
    elif _committed_folder(folder):
        shown = _shown(folder)
        what = "is a file" if os.path.lexists(folder) else "is missing"
        raise TamperedResultError(f"published folder {shown} {what}, but the repository's last commit holds the "
                                  f"runs of profile '{profile}' there: restore it with `git checkout HEAD -- {shown}`")


def read_manifest(manifest: Path) -> dict[str, str]:
    """name -> sha256 of every file a ``SHA256SUMS`` lists, in any form `sha256sum -c` accepts (blank and ``#``
    lines skipped, CRLF line ends too); an OSError if it is not a regular file of at most
    :data:`MAX_MANIFEST_BYTES`, a ValueError naming a line that is not a checksum line or lists a file again."""
    listed: dict[str, str] = {}
    for number, line in enumerate(read_regular(manifest, MAX_MANIFEST_BYTES).decode().split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if (match := _SUM_LINE.fullmatch(line)) is None:
            raise ValueError(f"line {number} is not a checksum line")
        escaped, digest, name = match[1], (match[2] or match[5]).lower(), match[3] or match[4]
        if escaped:
            name = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], name)
        name = posixpath.normpath(name)
        if name in listed:
            raise ValueError(f"line {number} lists {name} a second time (`sha256sum -c` checks both)")
        listed[name] = digest
    return listed


def verify_published(folder: Path, profile: str) -> None:
    """Check every file of ``folder``'s runs against the checkout's last commit (where git can tell) and
    ``SHA256SUMS``; raise naming the first that fails."""
    _verify_committed(folder)
    manifest = folder / MANIFEST
    republish = f"or republish with `ncpaper publish --profile {profile}`"
    try:
        listed = read_manifest(manifest)
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else "not text"
        raise TamperedResultError(f"{_shown(manifest)} is missing or unreadable ({why}): restore it with `git "
                                  f"checkout -- {_shown(manifest)}`, {republish}") from None
    except ValueError as err:
        raise TamperedResultError(f"{_shown(manifest)} is damaged ({err}): restore it with `git checkout -- "
                                  f"{_shown(manifest)}`, {republish}") from None
    present = {f.relative_to(folder).as_posix() for f in folder.glob("*/*")
               if f.is_file() and not f.parent.name.startswith(".")}
    if unlisted := sorted(present - set(listed)):
        raise TamperedResultError(f"{_shown(folder / unlisted[0])} is not listed in {_shown(manifest)}: remove it, "
                                  f"{republish}")
    for name, digest in sorted(listed.items()):
        path = folder / name
        if name not in present or sha256_of(path) != digest:
            what = "is missing" if name not in present else f"does not match its sha256 in {_shown(manifest)}"
            raise TamperedResultError(f"published file {_shown(path)} {what} (edited or damaged): restore it with "
                                      f"`git checkout -- {_shown(path)}`, {republish}")


def _runs_by_config(folder: Path, wanted: set[str], profile: str | None) -> dict[str, list[Run]]:
    """Verified runs under ``folder`` whose config is in ``wanted``. ``profile`` (a published folder): every
    run there must be valid, a damaged one is :class:`TamperedResultError`; None (the result cache): a
    damaged or partial run is skipped, and only the wanted ones are checksummed."""
    found: dict[str, list[Run]] = {}
    for meta_file in sorted(folder.glob("*/meta.json")):
        run_folder = meta_file.parent
        try:
            meta = verified_meta(run_folder, older_metrics=True) if profile else read_meta(run_folder)
            if (config_id := _config_id(meta["config"])) in wanted:
                run = check_run(run_folder, older_metrics=True)  # before setdefault: a damaged run adds no empty list
                found.setdefault(config_id, []).append(run)
        except InvalidRunError as err:
            if profile is not None:
                raise _damaged(run_folder, err, profile) from None
    return found


def _damaged(run_folder: Path, err: InvalidRunError, profile: str) -> TamperedResultError:
    shown, folder = _shown(run_folder / err.file), _shown(run_folder)
    return TamperedResultError(f"published file {shown} {err.why} (edited or damaged): restore it with `git checkout "
                               f"HEAD -- {folder}`, or republish with `ncpaper publish --profile {profile}`")


def _newest(configs: list[RunConfig], folder: Path, profile: str | None) -> list[Run | None]:
    """Each config's run under ``folder`` (None where there is none); one config on two data sources
    (official, JPEG): the newest."""
    ids = [_config_id(config.validated().to_dict()) for config in configs]
    found = _runs_by_config(folder, set(ids), profile) if folder.is_dir() else {}
    return [max(found[i], key=lambda r: r.meta["created"]) if i in found else None for i in ids]


def _match(configs: list[RunConfig], folder: Path, what: str, remedy: str, profile: str | None = None) -> list[Run]:
    runs = _newest(configs, folder, profile)
    if missing := [config.describe() for config, run in zip(configs, runs, strict=True) if run is None]:
        raise MissingResultError(f"no {what} run in {folder} for: {'; '.join(missing)}. {remedy}")
    return runs


def find_finished(configs: list[RunConfig], results: str | os.PathLike | None = None) -> list[Run]:
    """The finished runs of ``configs`` in the result cache, found by configuration (no data needed)."""
    return _match(configs, results_dir(results), "finished",
                  "Train them first with `ncpaper sweep` (it resumes from checkpoints).")


def publish(runs: list[Run], profile: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Copy each run's ``metrics.csv`` and metadata into ``published/<profile>/<key>/``; return the folders."""
    folders = []
    folder = published_dir(root) / profile
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp*"):  # staging folders of killed publishes
        shutil.rmtree(stale, ignore_errors=True)
    for run in runs:
        target = folder / run.meta["key"]
        staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in PUBLISHED_FILES:
            shutil.copy2(run.path / name, staging / name)
        meta = sealed({**run.meta, "files": {name: run.meta["files"][name] for name in PUBLISHED_FILES}})
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        if load_run(staging, run.meta["key"], older_metrics=True) is None:
            shutil.rmtree(staging)
            raise RuntimeError(f"the copy of {run.path} does not read back; nothing was published for it")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        folders.append(target)
    write_manifest(folder)
    return folders


def load_published(configs: list[RunConfig], profile: str, root: str | os.PathLike | None = None) -> list[Run]:
    """The published runs of ``configs`` (every file checked against SHA256SUMS), in the order given."""
    folder = published_dir(root) / profile
    check_published(folder, profile)
    return _match(configs, published_dir(root) / profile, "published",
                  f"Run `ncpaper sweep --profile {profile}` and then `ncpaper publish --profile {profile}`.", profile)


def split_published(configs: list[RunConfig], profile: str, root: str | os.PathLike | None = None
                    ) -> tuple[list[Run], list[RunConfig]]:
    """(the published runs among ``configs``, the configs not published): what a sweep need not retrain."""
    folder = published_dir(root) / profile
    check_published(folder, profile)
    runs = _newest(configs, folder, profile)
    return [r for r in runs if r is not None], [c for c, r in zip(configs, runs, strict=True) if r is None]
