"""Named experiment profiles (smoke | default | paper | horizon) read from ``profiles.yaml``.

A profile lists, in its sections (``figures``, ``phase``, ``horizon``), entries of shared run settings plus
the weight decays and seeds to sweep; :func:`section_configs` expands them into
:class:`~ncpaper.train.RunConfig` objects.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .data import read_regular
from .train import RunConfig

__all__ = ["SECTIONS", "all_configs", "figure_configs", "horizon_configs", "load_profile", "phase_configs",
           "profile_names", "section_configs"]

SECTIONS = ("figures", "phase", "horizon", "alternatives")
PROFILES = Path(__file__).with_name("profiles.yaml")
MAX_PROFILES_BYTES = 1 << 20
# Values (keys, items) the profiles may hold once their aliases are expanded: thousands; an alias bomb ("billion
# laughs"), which YAML builds in no time from shared lists, billions that anything walking them would never finish
MAX_PROFILE_VALUES = 100_000
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a profile's or an entry's name: it is shown in pages and paths


def _profiles() -> dict:
    """profiles.yaml, read as a regular file of at most 1 MiB and checked (:func:`_check_profiles`); a ValueError
    naming the file and what is wrong."""
    try:
        profiles = yaml.safe_load(read_regular(PROFILES, MAX_PROFILES_BYTES))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise ValueError(f"{PROFILES} cannot be read: {' '.join(str(err).split())}") from None
    _check_profiles(profiles)
    return profiles


def _count_values(value) -> None:
    """Raise if ``value``, expanded (aliases are shared, not copied), holds more than MAX_PROFILE_VALUES values."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_PROFILE_VALUES:
            raise ValueError(f"{PROFILES} expands to more than {MAX_PROFILE_VALUES:,} values (an alias bomb?)")
        stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item if isinstance(item, list)
                     else [])


def _check_profiles(profiles) -> None:
    """profiles.yaml's shape: named profiles, whose sections hold named entries with a list of weight decays and
    (optionally) of seeds; else a ValueError naming the place."""
    _count_values(profiles)
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError(f"{PROFILES} must map profile names to their settings, got {type(profiles).__name__}")
    for name, profile in profiles.items():
        where = f"{PROFILES}: profile {name!r}"
        if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(profile, dict):
            raise ValueError(f"{where} must be a name (letters, digits, _ . and -) mapped to its settings")
        for section in SECTIONS:
            entries = profile.get(section, {})
            if not isinstance(entries, dict):
                raise ValueError(f"{where}: {section} must map entry names to their settings")
            for entry, spec in entries.items():
                _check_entry(f"{where}, {section} entry {entry!r}", entry, spec)


def _check_entry(where: str, entry, spec) -> None:
    def numbers(values, kind) -> bool:
        return isinstance(values, list) and bool(values) and all(
            isinstance(v, kind) and not isinstance(v, bool) and (kind is float or v >= 0) for v in values)

    if not isinstance(entry, str) or not NAME.fullmatch(entry) or not isinstance(spec, dict):
        raise ValueError(f"{where} must be a name (letters, digits, _ . and -) mapped to its settings")
    if not numbers(spec.get("weight_decays"), (int, float)):
        raise ValueError(f"{where}: weight_decays must be a list of numbers, got {spec.get('weight_decays')!r}")
    if not numbers(spec.get("seeds", [0]), int):
        raise ValueError(f"{where}: seeds must be a list of integers from 0, got {spec.get('seeds')!r}")


def profile_names() -> list[str]:
    return list(_profiles())


def load_profile(name: str) -> dict:
    profiles = _profiles()
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(profiles)}")
    return profiles[name]


def section_configs(profile: str, section: str, name: str, device: str | None = None) -> list[RunConfig]:
    """The runs of one entry of a profile section (one of :data:`SECTIONS`): every weight decay x seed."""
    spec = load_profile(profile).get(section, {})
    if name not in spec:
        raise ValueError(f"profile {profile!r} has no {section} entry {name!r}; it has {list(spec)}")
    settings = dict(spec[name])
    weight_decays, seeds = settings.pop("weight_decays"), settings.pop("seeds", [0])
    if device is not None:
        settings["device"] = device
    try:  # + 0.0: lambda = -0 is lambda = 0, one run
        return [RunConfig.from_dict({**settings, "weight_decay": float(wd) + 0.0, "seed": int(s)})
                for wd in weight_decays for s in seeds]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{PROFILES}: profile {profile!r}, {section} entry {name!r}: {err}") from None


def figure_configs(profile: str, figure: str, device: str | None = None) -> list[RunConfig]:
    """The runs of one of Figures 1-2: every weight decay x seed of the profile."""
    return section_configs(profile, "figures", figure, device)


def phase_configs(profile: str, dataset: str, device: str | None = None) -> list[RunConfig]:
    """The runs of the weight-decay phase diagram on one dataset."""
    return section_configs(profile, "phase", dataset, device)


def horizon_configs(profile: str, entry: str, device: str | None = None) -> list[RunConfig]:
    """The runs of one long-horizon entry (e.g. ``mnist_constant``): every weight decay x seed."""
    return section_configs(profile, "horizon", entry, device)


def all_configs(profile: str, device: str | None = None) -> list[RunConfig]:
    """Every run of this profile: its figures, phase diagrams and long horizons."""
    spec = load_profile(profile)
    return [c for section in SECTIONS for name in spec.get(section, {})
            for c in section_configs(profile, section, name, device)]
