"""The pretraining figure: `toybb pretrain`'s default CPU run (the emergence series), with the BB run's curves
beside it."""

from __future__ import annotations

from pathlib import Path

from toybb.gallery.registry import FigureContext, register_figure
from toybb.plot import plot_emergence
from toybb.pretrain.config import PretrainConfig, build_model_config
from toybb.pretrain.data import prepare_data
from toybb.pretrain.loop import pretrain


@register_figure("pretrain_emergence", "`toybb pretrain`'s default run (4 layers x d 128, BPE 1,024, BOS first, 3,000 "
                 "steps on the built-in prose and pydoc): per layer against step, attention on the first token, "
                 "Sink^0.3, its value and residual ratios, the massive ratio and kurtosis, with the 1-layer BB "
                 "run's Attn<s> and value and residual ratios beside them.")
def fig_pretrain_emergence(ctx: FigureContext) -> list[Path]:
    def produce(d: Path) -> None:
        cfg = PretrainConfig()  # the command's defaults: the same at both scales
        model = build_model_config({}, cfg.vocab_size, cfg.seq_len)
        data, _ = prepare_data(cfg, d)
        pretrain(cfg, model, data, d, progress=ctx.progress, write_figure=False)  # a finished run returns at once
        plot_emergence(d, bb_run=ctx.one_layer())

    return ctx.cached("pretrain", {"emergence.png": "pretrain_emergence_cpu.png"}, produce)
