"""The book pages' plumbing: each page makes one or two calls here and displays what they return.

Everything a page shows that depends on its runs (the figure with its download links, anchor, citation
line and provenance; the sentences with numbers; the tables) is built here, so that it is tested, and so
that a notebook run outside the book (Jupyter, a download of the executed notebook) shows the same
figure and prose: the prose is Markdown output, the figure an HTML block holding the image itself.

One module per concern: ``display`` (prose, tables, :func:`show`), ``prose`` (numbers in sentences),
``figures`` (saving and showing a figure), ``verdicts`` (our collapse criterion, after interpolation), and
one per kind of page: ``figure``, ``phase``, ``layers``, ``bounds``, ``reproduce``. Every public name is importable
from ``ncpaper.pages``.
"""

from ..citing import citation
from .bounds import BoundsPage, bounds_page
from .display import _HTML as _HTML  # the displayed objects' plain-text form names ncpaper.pages
from .display import COLUMN_LABELS, glue_numbers, readable_columns, show, table, table_html, takeaway_box
from .display import _Markdown as _Markdown
from .figure import FigurePage, figure_page
from .figures import FigureFiles, code_commit, figures_dir, page_figure
from .layers import LayersPage, layers_page
from .phase import PhasePage, phase_page
from .prose import pooling_text
from .reproduce import bibtex_from_citation, full_scale_verdicts, pilot_table, reproduce_runs
from .verdicts import (
    after_interpolation_markdown,
    after_interpolation_summary,
    after_interpolation_table,
    verdict_sentence,
)

__all__ = ["COLUMN_LABELS", "BoundsPage", "FigureFiles", "FigurePage", "LayersPage", "PhasePage",
           "after_interpolation_markdown", "after_interpolation_summary", "after_interpolation_table",
           "bibtex_from_citation", "bounds_page", "citation", "code_commit", "figure_page", "figures_dir",
           "full_scale_verdicts", "glue_numbers", "layers_page", "page_figure", "phase_page", "pilot_table",
           "pooling_text", "readable_columns", "reproduce_runs", "show", "table", "table_html", "takeaway_box",
           "verdict_sentence"]
