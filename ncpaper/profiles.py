"""Named experiment profiles (smoke | default | paper | horizon) read from ``profiles.yaml``.

A profile lists, in its sections (``figures``, ``phase``, ``horizon``), entries of shared run settings plus
the weight decays and seeds to sweep; :func:`section_configs` expands them into
:class:`~ncpaper.train.RunConfig` objects.
"""

from __future__ import annotations

from importlib import resources

import yaml

from .train import RunConfig

__all__ = ["SECTIONS", "all_configs", "figure_configs", "horizon_configs", "load_profile", "phase_configs",
           "profile_names", "section_configs"]

SECTIONS = ("figures", "phase", "horizon", "alternatives")


def _profiles() -> dict:
    return yaml.safe_load(resources.files("ncpaper").joinpath("profiles.yaml").read_text())


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
    return [RunConfig.from_dict({**settings, "weight_decay": float(wd), "seed": int(s)})
            for wd in weight_decays for s in seeds]


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
