"""One look per weight decay, the same on every figure: colour, marker and line style keyed to lambda itself.

- **Colour** is a function of log10(lambda) alone: matplotlib's inferno (ordered dark to light, perceptually
  uniform, and ordered for the common colour-vision deficiencies too) over the fixed range ``LOG10_RANGE``, so
  that a lambda has one colour on every page whatever other lambdas share its figure. lambda = 0 is apart: black.
  (Inferno rather than viridis: its hue turns faster, so the book's lambdas, a factor 2 apart, look about
  twice as different, for normal and deficient colour vision alike.)
- **Marker and dash pattern** are keyed to lambda too (its position on a grid of twelve steps per decade), so
  that curves whose colours are close (lambdas less than a decade apart) still differ in greyscale and for a
  colour-blind reader. Within one figure no two lambdas share a marker (up to ``len(MARKERS)`` of them): a
  collision moves the larger lambda to the next free marker.
- lambda = 0 is the only solid line and the only circle.

``deficient_view`` simulates protanopia, deuteranopia and tritanopia (Machado, Oliveira & Fernandes 2009,
severity 1) and ``delta_e`` measures how far apart two colours look (CIE76 in CIELAB): the tests use them to
check that the palette stays ordered and that no two curves of a figure look alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DASHES", "LOG10_RANGE", "MARKERS", "ZERO", "LambdaStyle", "deficient_view", "delta_e", "lab",
           "lambda_colour", "lambda_label", "lambda_style", "lambda_styles", "relative_luminance"]

# log10(lambda) mapped onto the colour ramp: the figures' lambdas (5e-4 .. 0.05) well inside it, so that lambdas a
# factor 1.5-2 apart still differ in colour; smaller or larger ones (the ends of the phase diagrams, whose x-axis
# says their lambda anyway) take the ramp's end colours
LOG10_RANGE = (-3.5, -1.0)
# the part of inferno used: its darkest purples are too close to lambda = 0's black, its last yellows too pale on white
RAMP = (0.15, 0.85)
COLOURMAP = "inferno"
MARKERS = ("s", "^", "D", "v", "P", "X", "*")
# dash patterns (on, off, ...) in line widths; lambda = 0 alone is solid
DASHES = ((5, 1.5), (1.2, 1.2), (5, 1.5, 1.2, 1.5), (9, 2.5), (5, 1.5, 1.2, 1.5, 1.2, 1.5))
STEPS_PER_DECADE = 12


@dataclass(frozen=True)
class LambdaStyle:
    """How one weight decay is drawn: ``colour`` (hex), matplotlib ``marker`` and ``dashes`` (() is solid)."""

    weight_decay: float
    colour: str
    marker: str
    dashes: tuple

    @property
    def label(self) -> str:
        return lambda_label(self.weight_decay)

    @property
    def linestyle(self):
        """The dash pattern as a matplotlib linestyle: "-" or (0, dashes)."""
        return "-" if not self.dashes else (0, self.dashes)

    def plotly_dash(self, linewidth: float = 2.0) -> str:
        """The dash pattern as a Plotly dash string (lengths in px for a line ``linewidth`` px wide)."""
        return "solid" if not self.dashes else ",".join(f"{d * linewidth:g}px" for d in self.dashes)


ZERO = LambdaStyle(0.0, "#000000", "o", ())


def lambda_label(value: float) -> str:
    """The legend's name of a weight decay: "no weight decay" or "λ = 0.01"."""
    return "no weight decay" if value == 0 else f"λ = {value:g}"


def lambda_colour(value: float) -> str:
    """The colour of weight decay ``value`` (hex): black for 0, else the ramp at log10(value) within LOG10_RANGE."""
    if value == 0:
        return ZERO.colour
    if not value > 0:
        raise ValueError(f"a weight decay is >= 0, got {value}")
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    lo, hi = LOG10_RANGE
    where = min(max((math.log10(value) - lo) / (hi - lo), 0.0), 1.0)
    return to_hex(colormaps[COLOURMAP](RAMP[0] + where * (RAMP[1] - RAMP[0])))


def _step(value: float) -> int:
    return round(STEPS_PER_DECADE * math.log10(value))


def lambda_style(value: float) -> LambdaStyle:
    """The style of one weight decay on its own (a figure's set may move its marker: :func:`lambda_styles`)."""
    value = float(value)
    if value == 0:
        return ZERO
    step = _step(value)
    return LambdaStyle(value, lambda_colour(value), MARKERS[step % len(MARKERS)], DASHES[step % len(DASHES)])


def lambda_styles(values) -> dict[float, LambdaStyle]:
    """The styles of a figure's weight decays (sorted): each keyed to its lambda, no marker used twice while
    there are markers left (a collision moves the larger lambda on to the next free marker)."""
    out, used = {}, set()
    for value in sorted({float(v) for v in values}):
        style = lambda_style(value)
        if value != 0 and style.marker in used and len(used) < len(MARKERS):
            start = MARKERS.index(style.marker)
            free = next(MARKERS[(start + k) % len(MARKERS)] for k in range(1, len(MARKERS) + 1)
                        if MARKERS[(start + k) % len(MARKERS)] not in used)
            style = LambdaStyle(value, style.colour, free, style.dashes)
        if value != 0:
            used.add(style.marker)
        out[value] = style
    return out


# ---- how colours look: simulated colour-vision deficiencies, CIELAB and contrast ----

# Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear RGB
_DEFICIENCIES = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def _linear(rgb) -> np.ndarray:
    c = np.asarray(rgb, dtype=float)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _encoded(linear) -> np.ndarray:
    c = np.clip(np.asarray(linear, dtype=float), 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _rgb(colour) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(colour))


def deficient_view(colour, kind: str = "deuteranopia") -> np.ndarray:
    """``colour`` (any matplotlib colour) as seen with ``kind`` of colour blindness: sRGB in 0..1."""
    return _encoded(np.asarray(_DEFICIENCIES[kind]) @ _linear(_rgb(colour)))


def lab(colour) -> np.ndarray:
    """CIELAB (D65) of a matplotlib colour or an sRGB triple in 0..1."""
    rgb = np.asarray(colour, dtype=float) if not isinstance(colour, str) else _rgb(colour)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ _linear(rgb)
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(one, other) -> float:
    """How different two colours look (CIE76 distance in CIELAB; about 2.3 is just noticeable)."""
    return float(np.linalg.norm(lab(one) - lab(other)))


def relative_luminance(colour) -> float:
    """WCAG relative luminance (0 black, 1 white) of a matplotlib colour or sRGB triple."""
    rgb = np.asarray(colour, dtype=float) if not isinstance(colour, str) else _rgb(colour)
    return float(np.array([0.2126, 0.7152, 0.0722]) @ _linear(rgb))
