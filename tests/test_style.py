"""The one figure style (toybb/style.py): nothing else creates figures or colourbars, probe heatmaps have
labelled colourbars and integer head ticks, clipping is marked, and the dynamics figure has a subtitle and a
legend entry for every line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from toybb import style

ROOT = Path(__file__).resolve().parents[1] / "toybb"
DIRECT = re.compile(r"plt\.subplots\(|plt\.figure\(|(?<!style)\.colorbar\(|pyplot\.subplots\(|pyplot\.figure\(")


def test_only_style_creates_figures_and_colourbars():
    bad = [f"{p.relative_to(ROOT.parent)}:{i}: {line.strip()}" for p in sorted(ROOT.rglob("*.py"))
           if p.name != "style.py" or p.parent != ROOT
           for i, line in enumerate(p.read_text().splitlines(), 1) if DIRECT.search(line)]
    assert not bad, "draw through toybb.style instead:\n" + "\n".join(bad)


class _Stats:
    def __init__(self, arrays):
        self.arrays = arrays

    def mean(self, name):
        return self.arrays[name]


def _visible_ticks(ax, axis):
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t for t in ticks if lo <= t <= hi]


def test_probe_heatmap_has_labelled_colourbar_and_integer_head_ticks(tmp_path, monkeypatch):
    from toybb.probes import plots

    seen = {}
    monkeypatch.setattr(style, "save", lambda fig, path, dpi=style.DPI: seen.setdefault("fig", fig) and Path(path))
    stats = {n: _Stats({"sink_attention_excl0": np.random.default_rng(0).random((6, 9))}) for n in ("prose", "code")}
    sel = stats["prose"].mean("sink_attention_excl0") - stats["code"].mean("sink_attention_excl0")
    plots.sink_heatmap(tmp_path / "h.png", stats, ["prose", "code"], sel, {"model": "tiny-llm", "config": {"samples": 4}})
    fig = seen["fig"]
    fig.canvas.draw()
    heat = [ax for ax in fig.axes if ax.get_xlabel() == "head"]
    assert len(heat) == 3
    bars = [ax for ax in fig.axes if ax not in heat]
    assert len(bars) == 3 and all(ax.get_ylabel().strip() for ax in bars)
    for ax in heat:
        for axis in ("x", "y"):
            ticks = _visible_ticks(ax, axis)
            assert ticks and all(float(t).is_integer() for t in ticks)
        assert all(re.fullmatch(r"-?\d+", t.get_text()) for t in ax.get_xticklabels() if t.get_text())
    assert "tiny-llm" in fig._suptitle.get_text() and "samples 4" in fig._suptitle.get_text()
    style.pyplot().close(fig)


def test_colorbar_needs_a_label():
    fig, axes = style.subplots(1, 1)
    im = axes[0].imshow(np.eye(3))
    with pytest.raises(ValueError, match="label"):
        style.colorbar(im, axes[0], "")
    style.pyplot().close(fig)


def test_mark_clipped_draws_a_visible_labelled_artist():
    fig, axes = style.subplots(1, 1)
    ax = axes[0]
    ppl = np.array([12.0, 3e7, np.inf])
    ax.bar(range(3), style.clip(ppl, 1e6))
    art = style.mark_clipped(ax, range(3), ppl, 1e6, what="perplexity")
    assert art is not None and art.get_visible() and len(art.get_offsets()) == 2
    assert np.allclose(np.asarray(art.get_offsets())[:, 1], 1e6)
    lg = style.legend(ax)
    assert any("perplexity > 1e+06" in t.get_text() for t in lg.get_texts())
    assert style.mark_clipped(ax, [0], [5.0], 1e6) is None
    style.pyplot().close(fig)


def test_grid_is_readable_at_column_widths():
    assert style.grid_shape(5, 2) == (2, 3) and style.grid_shape(4, 1) == (2, 2) and style.grid_shape(1, 1) == (1, 1)
    fig, axes = style.subplots(5, 2)
    assert len(axes) == 5 and len(fig.axes) == 5 and fig.get_figwidth() == style.TWO_COLUMN
    style.pyplot().close(fig)


def _fake_run(d: Path) -> Path:
    """A run folder as `toybb train` writes it (config.json, metrics.csv), 2 seeds x 3 steps."""
    from toybb.config import cpu_preset
    from toybb.records import package_versions

    cfg = cpu_preset().replace(model={"d_model": 16}, train={"seeds": (0, 1), "steps": 20})
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "versions": package_versions()}))
    cols = ["step", "seed", "lr", "sink_attention_l0", "value_drain_l0", "value_others_l0", "residual_peak_l0",
            "residual_others_l0", "backcopy_risk", "bigram_risk"]
    rows = [[s, seed, "0.004", 0.3 + s / 100, 1.0, 1.2, 5 + s / 5, 4.0, 3.0 - s / 10, 1.5 - s / 20]
            for s in (0, 10, 20) for seed in (0, 1)]
    (d / "metrics.csv").write_text("\n".join(",".join(map(str, r)) for r in [cols, *rows]) + "\n")
    return d


def test_dynamics_figure_has_subtitle_and_every_line_in_a_legend(tmp_path, monkeypatch):
    from toybb import plot

    seen = {}
    monkeypatch.setattr(style, "save", lambda fig, path, dpi=style.DPI: seen.setdefault("fig", fig) and Path(path))
    plot.plot_dynamics(_fake_run(tmp_path / "run"), tmp_path / "d.png")
    fig = seen["fig"]
    text = fig._suptitle.get_text()
    assert "toy 1-layer" in text and "d_model 16" in text and "seeds 2" in text
    assert len(fig.axes) == 5 and fig.get_figwidth() == style.TWO_COLUMN
    lines = [ln for ax in fig.axes for ln in ax.get_lines()]
    assert lines and all(not ln.get_label().startswith("_") for ln in lines)
    assert style.unlisted_labels(fig) == []
    listed = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"BOS (median of seeds)", "other tokens", "median of seeds"} <= listed
    style.pyplot().close(fig)
