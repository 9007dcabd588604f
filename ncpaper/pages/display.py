"""What the pages display: Markdown prose and HTML blocks (tables, figures), shown in order by :func:`show`.

A table is HTML with readable column names and a caption; a number in a cell shows 4 significant digits
unless the page says otherwise. ``_HTML`` and ``_Markdown`` are the displayed objects (the PDF edition,
``book/_ext/ncpaper_pdf.py``, recognises ``_HTML`` by its plain-text form ``<ncpaper.pages._HTML ...>``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import numbers
import re

import numpy as np
import pandas as pd

COLUMN_LABELS = {
    "weight_decay": "λ", "seed": "seed", "epoch": "epoch", "train_error": "training error",
    "test_error": "test error", "train_loss": "training loss", "eps": "ε", "nc1": "NC1",
    "nc2_equinorm_means": "NC2 equinorm, means", "nc2_equiangular_means": "NC2 equiangular, means",
    "nc2_maxangle_means": "NC2 max-angle, means", "nc2_equinorm_weights": "NC2 equinorm, W",
    "nc2_equiangular_weights": "NC2 equiangular, W", "nc2_maxangle_weights": "NC2 max-angle, W",
    "nc2_equinorm_weights_centred": "NC2 equinorm, W centred",
    "nc2_equiangular_weights_centred": "NC2 equiangular, W centred", "nc3": "NC3",
    "nc3_centred": "NC3 (W centred)", "nc4": "NC4", "fit_term": "fit term", "w_mean_cosine": "mean cos(W rows)",
}


def readable_columns(columns) -> list[str]:
    """Column names as a reader reads them (``nc2_equinorm_means`` -> "NC2 equinorm, means")."""
    return [COLUMN_LABELS.get(c, c) for c in columns]


# Below this, a float is rounding noise (a difference of float64 numbers near 1 is about 1e-16): it prints as 0
NOISE = 1e-13
SCIENTIFIC_BELOW, SCIENTIFIC_ABOVE = 1e-3, 1e5
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def number_text(value: float, digits: int = 3, noise: float = NOISE) -> str:
    """A float as a journal sets it: ``digits`` significant digits (whole when it has more digits before the
    point), ``m×10ᵉ`` below 1e-3 or from 1e5 on, rounding noise (``|value| < noise``) as 0, infinities as ∞."""
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if abs(value) < noise:
        return "0"
    if abs(value) < SCIENTIFIC_BELOW or abs(value) >= SCIENTIFIC_ABOVE:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa}×10{str(int(exponent)).translate(_SUPERSCRIPT)}".replace("-", "−")
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}".replace("-", "−")
    return f"{value:.{digits}g}".replace("-", "−")


def count_text(value: int) -> str:
    """A count (an integer): with thousands separators from 10,000 on (1234 stays 1234, as a journal sets it)."""
    return f"{value:,}" if abs(value) >= 10_000 else str(value)


def _significant(digits: int):
    """A cell formatter: floats by :func:`number_text`, integers by :func:`count_text`, booleans as yes/no,
    anything else as it is."""
    def shown(value):
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, numbers.Integral):
            return count_text(int(value))
        if isinstance(value, numbers.Real):  # NumPy floats too
            return number_text(value, digits)
        return value
    return shown


# A table with more columns than this is split into parts of at most this many (about what a desktop page shows
# without scrolling), each part repeating the columns that say what a row is
MAX_COLUMNS = 8
LONG_CELL = 16  # a column with a longer cell holds text or ranges, which wrap inside their cells
IDENTIFYING = {"weight_decay", "λ", "seed", "epoch", "data", "dataset", "schedule", "quantity", "runs", "run",
               "profile", "figure", "layer"}


def identifying_columns(frame: pd.DataFrame, most: int = 3) -> list:
    """The leading columns that say what a row is: text columns, or λ, seed, epoch and the like (at most ``most``)."""
    found = []
    for column in list(frame.columns)[:most]:
        if column in IDENTIFYING or not pd.api.types.is_float_dtype(frame[column]):
            found.append(column)
        else:
            break
    return found


def column_parts(frame: pd.DataFrame, index: bool = False, max_columns: int = MAX_COLUMNS) -> list[list]:
    """``frame``'s columns in parts of at most ``max_columns`` shown columns (the index counts as one), each part
    led by :func:`identifying_columns`; one part when the table fits."""
    shown = len(frame.columns) + (1 if index else 0)
    if shown <= max_columns:
        return [list(frame.columns)]
    lead = [] if index else identifying_columns(frame)
    rest = [c for c in frame.columns if c not in lead]
    room = max(max_columns - len(lead) - (1 if index else 0), 3)
    count = -(-len(rest) // room)
    size = -(-len(rest) // count)  # parts of even size
    return [lead + rest[k:k + size] for k in range(0, len(rest), size)]


def table_html(frame: pd.DataFrame, caption: str, formats: dict | None = None, precision: int = 3,
               index: bool = False, max_columns: int = MAX_COLUMNS, first: list | tuple = (),
               marked: tuple | None = None) -> str:
    """A table as HTML: readable headers, a caption, padded cells, scrolling inside its box when wide.

    The caption is a paragraph above the scrolling box (``nc-table-caption``, which labels the table through
    ``aria-labelledby``), so that a wide table never cuts it off. A table of more than ``max_columns`` columns is
    split into parts (:func:`column_parts`), each with the caption and "part k of n". Floats show ``precision``
    significant digits (:func:`number_text`) and integers as counts unless ``formats`` (column -> format string or
    function) says otherwise; missing values show as a dash; numeric columns are right-aligned (``nc-num``).
    ``index``: show the frame's index too, as its first column. ``first``: columns (an answer) moved to just after
    the row's label (the first column), so that a phone shows them beside it. ``marked``: (a boolean row mask, its
    legend): those rows carry "†" after their first cell and the class ``nc-marked``, the legend follows the
    table."""
    if index:  # the index becomes the first column: headed like the others, left-aligned, repeated in every part
        name = frame.index.name if frame.index.name is not None else ""
        if pd.api.types.is_float_dtype(frame.index):
            formats = {name: "{:g}", **(formats or {})}
        frame, index = frame.reset_index(names=name), False
    if first:
        missing = [c for c in first if c not in frame.columns]
        if missing:
            raise KeyError(f"first: no column {missing} in the table")
        lead = [c for c in frame.columns[:1] if c not in first]
        frame = frame[lead + list(first) + [c for c in frame.columns if c not in lead and c not in first]]
    if marked is not None:
        mask, legend = marked
        mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool)
        if not mask.any():
            marked = None
    parts = column_parts(frame, max_columns=max_columns)
    if len(parts) > 1:
        return "".join(table_html(frame[columns], f"{caption} (part {k} of {len(parts)})", formats, precision,
                                  max_columns=len(columns), marked=marked)
                       for k, columns in enumerate(parts, start=1))
    shown = frame.rename(columns=dict(zip(frame.columns, readable_columns(frame.columns), strict=True)))
    formats = {COLUMN_LABELS.get(k, k): v for k, v in (formats or {}).items()}
    default = _significant(precision)
    label = "nc-caption-" + hashlib.sha256(caption.encode()).hexdigest()[:10]  # unique on a page: one caption each
    numeric = [k for k, c in enumerate(shown.columns) if pd.api.types.is_numeric_dtype(shown[c])
               and not pd.api.types.is_bool_dtype(shown[c])]
    cells = {column: _escaped(formats.get(column, default)) for column in shown.columns}
    if marked is not None:  # the first cell of each marked row says so, the legend below says why
        head, shown = shown.columns[0], shown.copy()
        text = [cells[head](v) if not _missing(v) else "–" for v in shown[head]]
        shown[head] = [t + " †" if m else t for t, m in zip(text, mask.tolist(), strict=True)]
        cells[head] = str  # (escaped above)
    styler = shown.style.format(cells, na_rep="–")
    styler = styler.format_index(escape="html", axis=1)  # column names may come from data too
    styler = styler.set_table_attributes(f'class="nc-table" aria-labelledby="{label}"')
    classes = pd.DataFrame("", index=shown.index, columns=shown.columns)
    for k in numeric:
        classes.iloc[:, k] = "nc-num"
    if marked is not None:
        classes.loc[mask.to_numpy()] = classes.loc[mask.to_numpy()] + " nc-marked"
    styler = styler.set_td_classes(classes)
    prose = [c for c in shown.columns if not pd.api.types.is_numeric_dtype(shown[c])  # cells that are text
             and shown[c].astype(str).str.len().max() > LONG_CELL  # (a float's repr is long, but it is one number)
             and not shown[c].astype(str).str.match(RANGE).all()]  # (a range goes on its own line)
    if prose:  # these wrap; numbers and short labels stay on one line (the stylesheet's default)
        styler = styler.set_properties(subset=prose, **{"white-space": "normal", "min-width": "8em"})
    styler = styler.hide(axis="index")
    body = styler.to_html()
    for k in numeric:  # their headers are right-aligned too
        body = body.replace(f'class="col_heading level0 col{k}"', f'class="col_heading level0 col{k} nc-num"', 1)
    after = (f'<p class="nc-table-legend">† {html.escape(legend)}</p>' if marked is not None else "")
    return (f'<div class="nc-table-block"><p class="nc-table-caption" id="{label}">{html.escape(caption)}</p>'
            f'<div class="nc-table-wrap">{body}</div>{after}</div>')


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# A cell "mean (min–max)" (``ncpaper.analysis.spread`` and the like): the mean, its range on a second, smaller line
RANGE = re.compile(r"^([^\s()]+) (\([^\s()]+[–-][^\s()]+(?:, [^()]*)?\))$")


def _escaped(formatter):
    """``formatter`` (a format string or a function) whose output is HTML-escaped: a cell is always text, never
    markup (a run's ``device`` could be ``<img onerror=...>``). A "mean (min–max)" cell shows its range on a
    second line (``nc-range``), from the escaped text."""
    shown = formatter.format if isinstance(formatter, str) else formatter

    def cell(value):
        text = html.escape(str(shown(value)))
        found = RANGE.match(text)
        return f'{found.group(1)}<span class="nc-range"> {found.group(2)}</span>' if found else text
    return cell


def table(frame: pd.DataFrame, caption: str, **options) -> _HTML:
    """:func:`table_html` as a displayable object."""
    return _HTML(table_html(frame, caption, **options))


class _HTML:
    """Rich output: HTML for browsers and Jupyter; an image (when given) for other renderers."""

    def __init__(self, text: str, png: bytes | None = None):
        self.text, self.png = text, png

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/html": self.text}
        if self.png is not None:
            bundle["image/png"] = base64.b64encode(self.png).decode()
        return bundle


class _Markdown:
    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self):
        return self.text


# Their plain-text form (what a renderer without HTML or Markdown prints) names the package, as before it was
# split into modules: <ncpaper.pages._HTML at 0x...>
_HTML.__module__ = _Markdown.__module__ = "ncpaper.pages"


def show(*items) -> None:
    """Display Markdown strings (prose) and HTML blocks (figures, tables) in order. The prose goes through
    :func:`inert_markdown` (its data should already be :func:`markdown_text`: this is the second lock)."""
    from IPython.display import display

    for item in items:
        if item:
            display(_Markdown(inert_markdown(item)) if isinstance(item, str) else item)


# ASCII characters that start Markdown or MyST markup (HTML, entities, roles, directives, links, maths, emphasis)
_MARKUP = re.compile(r"([\\`*_{}\[\]<>&$|~!#])")


def markdown_text(value) -> str:
    """``value`` (a string from a run's meta.json, a profile, a config, a data source) as literal text in the
    pages' Markdown: on one line (any line break, U+2028 included, is a space), every markup character escaped."""
    return _MARKUP.sub(r"\\\1", " ".join(str(value).split()))


def markdown_code(value) -> str:
    """``value`` as a Markdown code span, on one line: fenced by more backticks than any run of them inside."""
    text = " ".join(str(value).split())
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# What makes Markdown active besides the takeaway's admonition: a backslash escape (kept as it is), the start of raw
# HTML or an autolink, a MyST role ({name}`text`), a fence that opens any other directive
_ACTIVE = re.compile(r"\\[\s\S]|<(?=[A-Za-z/!?])|\{(?=[^{}`\s]*\}`)"
                     r"|^[ \t]*(?:`{3,}|~{3,}|:{3,})[ \t]*\{(?!admonition\})", re.M)
_CODE_SPAN = re.compile(r"\\[\s\S]|(?<!`)(`+)(?!`)(?:[^`\n]|[^`\n][^\n]*?[^`\n])\1(?!`)")


def inert_markdown(text: str) -> str:
    """The pages' Markdown with no way to raw HTML, a role or a directive other than the takeaway's admonition:
    raw HTML starts become ``&lt;`` (code spans on one line show text and are left alone), roles and other
    directives lose their brace. The pages' own prose has none of them."""
    out, at = [], 0
    for span in _CODE_SPAN.finditer(text):
        if span.group(1):  # (the span's backtick shows the text before it whether it ends in a role)
            out.append(_ACTIVE.sub(_neutral, text[at:span.start()] + "`")[:-1] + span.group(0))
            at = span.end()
    out.append(_ACTIVE.sub(_neutral, text[at:]))
    return "".join(out)


def _neutral(match: re.Match) -> str:
    token = match.group(0)
    if token.startswith("\\"):
        return token
    return "&lt;" if token == "<" else token[:-1] + "\\{"


def takeaway_box(text: str) -> str:
    """The page's takeaway as the MyST admonition every page opens with (class ``nc-takeaway``; at most three
    lines on a desktop, which the book's tests check): Markdown for :func:`show`."""
    return f"```{{admonition}} Takeaway\n:class: tip nc-takeaway\n{text}\n```"


def glue_numbers(numbers: dict) -> None:
    """Glue a page's numbers (name -> value) for its prose and the tests, without displaying anything."""
    from myst_nb import glue

    for name, value in numbers.items():
        glue(name, value, display=False)


# The characters inline_html reads as markup, and a backslash: escaped by inline_text, shown as themselves
_INLINE_MARKUP = re.compile(r"([\\`*$])")


def inline_text(value) -> str:
    """``value`` (a string from data) as literal text for :func:`inline_html`: on one line, its backslashes,
    backticks, asterisks and dollars escaped."""
    return _INLINE_MARKUP.sub(r"\\\1", " ".join(str(value).split()))


def inline_html(text: str) -> str:
    """Escape text for HTML, keeping `code` spans, **bold** and *italics*, and $maths$ as MathJax inline maths;
    a backslash before a backslash, backtick, asterisk or dollar shows that character (:func:`inline_text`)."""
    held: list[str] = []

    def hold(match: re.Match) -> str:
        held.append(html.escape(match.group(1)))
        return f"\0{len(held) - 1}\0"

    out = html.escape(re.sub(r"\\([\\`*$])", hold, text.replace("\0", "")), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", out)
    out = re.sub(r"\$([^$]+)\$", r'<span class="math notranslate nohighlight">\\(\1\\)</span>', out)
    return re.sub("\0([0-9]+)\0", lambda match: held[int(match.group(1))], out)
