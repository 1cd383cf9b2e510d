"""The one figure style of toybb: every figure is drawn through this module.

Widths follow the ICML two-column convention (the NeurIPS/ICLR single column is 5.5 in, between the
two): one column is 3.25 in wide, two columns 6.75 in. Fonts are 7-8 pt at that size, so a figure
drawn for a width is read at 100% in the paper; PNGs are saved at `DPI` dots per inch.

    @styled
    def draw(path, ...):
        fig, axes = subplots(4, width=2)          # 4 panels laid out in a grid readable at 6.75 in
        im = axes[0].imshow(scores)
        colorbar(im, axes[0], "sink score")       # a colourbar always has a label
        integer_ticks(axes[0], "both")            # heads, layers, positions: 0, 1, 2 ...
        legend(axes[1])                           # every labelled line in the legend
        subtitle(fig, "Sink scores", model="SmolLM2-135M", config={"samples": 16})
        save(fig, path)                           # atomic, then closed
"""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

import numpy as np

from toybb.records import save_figure

ONE_COLUMN = 3.25  # inches, ICML \columnwidth
TWO_COLUMN = 6.75  # inches, ICML \textwidth
WIDTHS = {1: ONE_COLUMN, 2: TWO_COLUMN, "one": ONE_COLUMN, "two": TWO_COLUMN}
MAX_COLS = {ONE_COLUMN: 2, TWO_COLUMN: 3}  # panels per row that stay readable (>= 2 in each)
DPI = 200  # saved PNGs: 1350 px across two columns
CLIP_COLOR = "crimson"

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 6.5, "legend.title_fontsize": 7, "figure.titlesize": 8, "legend.framealpha": 0.8,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.linewidth": 0.6, "grid.linewidth": 0.4,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4, "ytick.minor.width": 0.4,
    "patch.linewidth": 0.5, "axes.grid": False, "savefig.dpi": DPI, "figure.dpi": 100,
    "image.interpolation": "nearest", "figure.constrained_layout.use": True,
}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def context():
    """The rc settings of every toybb figure, as a context manager."""
    import matplotlib

    return matplotlib.rc_context(RC)


def styled(fn):
    """Decorator: draw the whole function under `context()` (fonts and lines are read when drawn)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)
    return wrapper


def column_width(width) -> float:
    """Inches of `width`: 1 / "one" (one column), 2 / "two" (two columns) or a number of inches."""
    if width in WIDTHS:
        return WIDTHS[width]
    if isinstance(width, (int, float)) and width > 0:
        return float(width)
    raise ValueError(f"width must be 1, 2, 'one', 'two' or inches > 0, got {width!r}")


def grid_shape(n: int, width=2, ncols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of `n` panels: as many columns as stay readable at `width`, rows balanced."""
    w = column_width(width)
    most = ncols or MAX_COLS.get(w, max(1, int(w // 2.1)))
    rows = math.ceil(n / min(n, most))
    return rows, math.ceil(n / rows)


def figure(width=2, height: float | None = None):
    """An empty figure `width` wide (see `column_width`), `height` inches tall (default 0.62 x width)."""
    w = column_width(width)
    with context():
        return pyplot().figure(figsize=(w, height or 0.62 * w))


def subplots(n: int = 1, width=2, *, ncols: int | None = None, aspect: float = 0.72, height: float | None = None,
             extra_height: float = 0.35, **kw):
    """(figure, axes [n]) with `n` panels in a grid readable at `width`; `aspect` = panel height / panel
    width; `height` overrides the figure height; `extra_height` leaves room for the title and subtitle.
    Panels of a full grid (n == rows x cols) come back flat in row order; unused cells are removed."""
    if n < 1:
        raise ValueError(f"a figure needs at least one panel, got {n}")
    w = column_width(width)
    rows, cols = grid_shape(n, w, ncols)
    h = height or rows * aspect * w / cols + extra_height
    with context():
        fig, axes = pyplot().subplots(rows, cols, figsize=(w, h), squeeze=False, **kw)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def colorbar(mappable, ax, label: str, **kw):
    """A colourbar beside `ax` (one axes or a list of them); `label` says what the colour measures."""
    if not label or not str(label).strip():
        raise ValueError("a colourbar needs a label (what the colour measures, with its unit)")
    first = ax[0] if isinstance(ax, (list, tuple, np.ndarray)) else ax
    cb = first.figure.colorbar(mappable, ax=list(ax) if isinstance(ax, np.ndarray) else ax, **kw)
    cb.set_label(label)
    cb.ax.tick_params(labelsize=RC["ytick.labelsize"])
    return cb


def integer_ticks(ax, axis: str = "both", max_ticks: int = 8) -> None:
    """Whole-number ticks (heads, layers, positions): at most `max_ticks`, labelled 0, 1, 2 ... not 0.0, 2.5."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if axis not in ("x", "y", "both"):
        raise ValueError(f"axis must be 'x', 'y' or 'both', got {axis!r}")
    for a in (("x", "y") if axis == "both" else (axis,)):
        target = ax.xaxis if a == "x" else ax.yaxis
        target.set_major_locator(MaxNLocator(nbins=max_ticks, integer=True, min_n_ticks=1))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v))}"))


def log_axes(ax, axes: str = "y") -> None:
    """Log scale on `axes` ("x", "y" or "xy"), called after drawing: only decades labelled where the data
    spans one or more, else a few plain labels (2, 3, 5 x 10^k) instead of 4 x 10^0 clutter."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for a in axes:
        (ax.set_xscale if a == "x" else ax.set_yscale)("log")
        ax.autoscale_view()
        lo, hi = ax.get_xlim() if a == "x" else ax.get_ylim()
        target = ax.xaxis if a == "x" else ax.yaxis
        if lo > 0 and hi / lo < 10:
            target.set_minor_formatter(FuncFormatter(_sparse_log_label))
        else:
            target.set_minor_formatter(NullFormatter())


def _sparse_log_label(v: float, _pos=None) -> str:
    """A minor log tick's label only at 2, 3 and 5 x 10^k."""
    if v <= 0:
        return ""
    return f"{v:.3g}" if round(v / 10 ** math.floor(math.log10(v)), 6) in (2.0, 3.0, 5.0) else ""


def describe(config) -> str:
    """A configuration as one line: a dict as `key value, ...`, anything else as its text."""
    if isinstance(config, dict):
        return ", ".join(f"{k} {v}" for k, v in config.items() if v is not None and v != "")
    return "" if config is None else str(config)


def subtitle(fig, title: str = "", *, model: str | None = None, config=None):
    """The figure title with the model (name or path) and the configuration on the line(s) under it."""
    w = fig.get_figwidth()
    chars = int(w * 72 / (0.55 * RC["figure.titlesize"]))  # characters per line at the title size
    sub = "; ".join(s for s in (f"model: {model}" if model else "", describe(config)) if s)
    lines = [title] if title else []
    lines += textwrap.wrap(sub, chars) if sub else []
    return fig.suptitle("\n".join(lines), fontsize=RC["figure.titlesize"])


def mark_clipped(ax, x, values, cap: float, *, low: bool = False, what: str = "value"):
    """Mark where `values` (drawn at `x`) were clipped to `cap` (above it, or below it with `low`; NaN and
    inf count as clipped): a triangle at the cap and a legend entry saying so. Returns the artist or None."""
    x, v = np.asarray(x, float), np.asarray(values, float)
    over = ~np.isfinite(v) | ((v < cap) if low else (v > cap))
    if not over.any():
        return None
    sign = "<" if low else ">"
    label = f"{what} {sign} {cap:g} (drawn at the cap)"
    if label in {a.get_label() for a in ax.collections + ax.lines}:  # one legend entry per axes
        label = "_nolegend_"
    return ax.scatter(x[over], np.full(int(over.sum()), cap), marker="v" if low else "^", s=28,
                      color=CLIP_COLOR, zorder=5, clip_on=False, label=label)


def clip(values, cap: float, low: bool = False) -> np.ndarray:
    """`values` with what lies beyond `cap` (and NaN/inf) set to `cap`; draw `mark_clipped` beside it."""
    v = np.asarray(values, float)
    beyond = ~np.isfinite(v) | ((v < cap) if low else (v > cap))
    return np.where(beyond, cap, v)


def legend(ax, *, where: str = "best", ncol: int = 1, **kw):
    """A legend of every labelled artist of `ax` (None if none is labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles, labels, loc=where, ncol=ncol, **kw)


def figure_legend(fig, axes=None, *, ncol: int | None = None, **kw):
    """One legend under the grid with every label of `axes` (default: all of `fig`), each label once;
    panels' own legends are removed so nothing is shown twice."""
    seen: dict[str, object] = {}
    for ax in (fig.axes if axes is None else axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not seen:
        return None
    n = ncol or min(len(seen), 3 if fig.get_figwidth() > ONE_COLUMN + 0.1 else 2)
    return fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=n, **kw)


def unlisted_labels(fig) -> list[str]:
    """Labels of lines, collections and patches that no legend of `fig` lists (should be empty)."""
    listed = {t.get_text() for lg in [*fig.legends, *(a.get_legend() for a in fig.axes)] if lg is not None
              for t in lg.get_texts()}
    labelled = {lab for ax in fig.axes for lab in ax.get_legend_handles_labels()[1]}
    return sorted(labelled - listed)


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` to `path` atomically (the format from the extension) and close it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_figure(fig, p, dpi=dpi)
    finally:
        pyplot().close(fig)
    return p
