"""Figures of the reduced-model theory and its laws fitted to trained runs (theory/)."""

from __future__ import annotations

from pathlib import Path

from toybb.gallery.registry import FigureContext, register_figure
from toybb.theory import experiment as E
from toybb.theory import statements as S
from toybb.theory.plots import write_figures


@register_figure("theory", "Reduced-model theory (theory/): sink logit ~ 1/2 log t, drain ~ t^-1/2, loss ~ 1/t; "
                 "residual norm under Adam vs SGD; shared value and ReLU attention keep the sink logit finite.")
def fig_theory(ctx: FigureContext) -> list[Path]:
    results = []
    for check in S.ALL_CHECKS:
        kw = {"steps": 100_000} if (check is S.check_rates and ctx.scale == "cpu") else {}
        results.append(check(**kw))
    ctx.out.mkdir(parents=True, exist_ok=True)
    return write_figures(results, ctx.out)


@register_figure("theory_trained_1layer", "Sink logit gap, ||Val<s>||, excess loss and ||Res<s>|| of the 1-layer "
                 "run with the reduced-model rates fitted over the last decade of steps (theory/07_trained_fits.md).")
def fig_theory_trained(ctx: FigureContext) -> list[Path]:
    return [E.plot_overlay([E.load_trajectory(ctx.one_layer())], ctx.out / "theory_trained_1layer.png")]


THEORY_TRAINED_LABELS = {"tf3_adam": "3-layer, Adam", "tf3_sgd": "3-layer, SGD", "tf1_long": "1-layer, Adam, long",
                         "simple_equal_sgd": "SimpleModel, SGD, equal support",
                         "simple_equal_sgd_wd0": "SimpleModel, SGD, equal support, no weight decay"}


@register_figure("theory_trained", "The reduced-model laws fitted to trained runs (theory/07): 3-layer Adam vs SGD "
                 "(||Res<s>|| after layer 0: linear vs sqrt(log t)), a long 1-layer Adam run (sink logit, drain, "
                 "loss) and the SimpleModel on an equal-support table; dashed: predicted law anchored at the start "
                 "of the fitted last decade; seeds as min-max bands. Also writes the fits as theory_trained_fits.csv.")
def fig_theory_trained_all(ctx: FigureContext) -> list[Path]:
    runs = {name: ctx.theory_run(name) for name in THEORY_TRAINED_LABELS}
    trajs = [E.load_trajectory(d) for d in runs.values()]
    for t, name in zip(trajs, runs):
        t.name = name
    rows = E.fit_table(trajs)
    ctx.log(E.format_table(rows))
    csv_path = E.write_fit_csv(rows, ctx.out / "theory_trained_fits.csv")
    png = E.plot_overlay(trajs, ctx.out / "theory_trained.png", labels=list(THEORY_TRAINED_LABELS.values()))
    return [png, csv_path]

