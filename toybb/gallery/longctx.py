"""The long-context figure of the toy character LMs (`toybb longctx toy`'s drawing, from its library)."""

from __future__ import annotations

from pathlib import Path

from toybb.gallery.registry import FigureContext, register_figure
from toybb.longctx.toy_cli import run_toy


@register_figure("longctx_toy", "Character LMs trained at context 64 with NoPE, RoPE, ALiBi and window attention, "
                 "evaluated at 2x and 4x directly and with SelfExtend, PI, positional-vector replacement and "
                 "window extension.")
def fig_longctx_toy(ctx: FigureContext) -> list[Path]:
    steps = 3000 if ctx.scale == "cpu" else 10000
    return ctx.cached("longctx_toy", {"toy_ppl_length.png": "longctx_toy_ppl_length.png"},
                      lambda d: run_toy(d, steps=steps))
