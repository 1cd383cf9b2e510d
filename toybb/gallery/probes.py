"""The SmolLM2-135M probe figures (`toybb probe`'s drawings, from the probe library)."""

from __future__ import annotations

from pathlib import Path

from toybb.gallery.registry import FigureContext, register_figure
from toybb.llm.load import load
from toybb.llm.registry import resolve_existing
from toybb.probes.corpus import parse_domain
from toybb.probes.report import ProbeSettings, run_probe

PROBE_FIGURES = ("sink_heatmap", "norms_by_position", "massive_profile", "interventions", "attention_maps")


@register_figure("probe_smollm2", "SmolLM2-135M on Austen prose vs standard-library code: per-head sink scores, "
                 "residual/value norms by position, massive activations per layer, interventions, attention maps.")
def fig_probe_smollm2(ctx: FigureContext) -> list[Path]:
    n, heads = (16, 4) if ctx.scale == "cpu" else (64, 12)
    settings = ProbeSettings(samples=n, seq_len=256, intervene_heads=heads)
    domains = [parse_domain("prose=pride"), parse_domain("code=stdlib")]

    def produce(d: Path) -> None:
        pre = load(resolve_existing("smollm2-135m-instruct"))
        settings.check(pre.cfg.max_positions)
        run_probe(pre, domains, settings, d, progress=ctx.progress, command=["toybb", "figures", "--only", "probe_smollm2"])

    return ctx.cached("probe_smollm2", {f"{k}.png": f"probe_smollm2_{k}.png" for k in PROBE_FIGURES}, produce)
