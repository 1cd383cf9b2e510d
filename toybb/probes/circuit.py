"""Which early sub-layer writes the BOS residual peak: the circuit experiment of SPEC §5.

The paper (Llama-3.1-8B, one sentence): the BOS residual norm after layer 24 is 496 against <= 37 for
the other tokens; zeroing the output of the layer-0 MLP drops it to 34, of the layer-1 MLP to 27, while
zeroing the layer-0 attention output leaves it at 500. Here the same measurement for any model that
declares its sites (the toy and pretrained configurations of the one `Transformer`):

1. The unmodified model is run on a batch; the residual norm after every block
   (`blocks.{l}.resid_post@norm`, [layers, batch, seq]) locates the peak.
2. Each component (a sub-layer name such as "blocks.0.mlp" or "blocks.1.attn") is zeroed in turn, i.e.
   its output is replaced by zero so the residual stream passes it unchanged, and the same norms and the
   next-token loss are measured again.

Rule for the peak layer (`peak_layer`): the first layer whose BOS norm (position `bos_pos`, mean over
the batch) exceeds `PEAK_RATIO` (5) times the largest norm at any other position of the batch at that
layer (the "next largest"), i.e. where the BOS stands alone as in the paper's 496 vs 37. A rule against
the median of the other positions fires too early on SmolLM2-135M: its layer-1 BOS norm is 5.4x the
median but only 1.4x the next largest (8 Austen samples of 128 tokens), while the massive peak (64x)
appears at layer 11.
The table also reports the layer where the unmodified BOS norm is largest (`max_layer`) and the last
layer, each with its next-largest norm and the median over the other positions. With a
causal model the BOS residual does not depend on the text after it, so the BOS norm is the same for
every sequence; the next-largest norm and the loss do depend on the batch.

Zeroing is one edit (`zero_edit`: the sub-layer's output site set to zero).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ConfigError
from toybb.models.capture import Capture
from toybb.models.forward import loss, perplexity
from toybb.models.sites import NO_EDITS, Edit, resolve
from toybb.probes.corpus import Domain, domain_batches

PEAK_RATIO = 5.0
NORMS = Capture(("blocks.*.resid_post@norm",))


def early_components(n_layers: int, k: int | None = None) -> list[str]:
    """Attention and MLP outputs of layers 0..k-1 (every layer when k is None), in forward order."""
    k = n_layers if k is None else min(k, n_layers)
    return [f"blocks.{l}.{part}" for l in range(k) for part in ("attn", "mlp")]


def zero_edit(model, shape, zero: str | None):
    """The output of sub-layer `zero` (e.g. "blocks.0.mlp") set to zero, as an edit of its site
    `blocks.{l}.mlp.out` (`toybb.models.sites`); the layer is an array, so every layer of one kind of
    sub-layer shares one compilation. None: the unmodified model."""
    if zero is None:
        return NO_EDITS
    return resolve(model.sites(), [Edit(f"{zero}.out", "zero")], tuple(shape))


def measure(model, tokens, zero: str | None = None, targets=None) -> tuple[np.ndarray, np.ndarray]:
    """(residual norms [layers, batch, seq], next-token NLL [batch, positions]) with `zero` zeroed.
    Without `targets` the NLL is of tokens[:, 1:] given tokens[:, :-1] (a text batch); with them
    ([batch, seq]) of targets given tokens (a toy task batch, whose targets are the inputs shifted)."""
    tok = jnp.asarray(tokens, jnp.int32)
    res = loss(model, tok, targets, edits=zero_edit(model, tok.shape, zero), capture=NORMS, reduction="token")
    n_layers = sum(1 for k in res.cache if k.endswith(".resid_post@norm"))
    norms = np.stack([np.asarray(res.cache[f"blocks.{l}.resid_post@norm"], np.float32) for l in range(n_layers)])
    return norms.astype(np.float64), np.asarray(res.nll, np.float64)


def peak_layer(norms: np.ndarray, ratio: float = PEAK_RATIO, bos_pos: int = 0) -> int | None:
    """The first layer whose mean BOS norm exceeds `ratio` x the largest norm at any other position.
    norms: [layers, batch, seq] (or [layers, seq] for one sequence). None when no layer does."""
    n = np.asarray(norms, np.float64)
    if n.ndim == 2:
        n = n[:, None, :]
    bos = n[:, :, bos_pos].mean(1)
    others = np.delete(n, bos_pos, axis=2).reshape(n.shape[0], -1).max(axis=1)
    hit = np.flatnonzero(bos > ratio * others)
    return int(hit[0]) if hit.size else None


@dataclass
class Row:
    """One forward: the component zeroed ("none" for the unmodified model) and, per layer, the BOS norm
    (mean over the batch), the largest and the median norm over the other positions of the batch."""

    zeroed: str
    bos: np.ndarray  # [layers]
    next_largest: np.ndarray  # [layers]
    others_median: np.ndarray  # [layers]
    nll: float  # mean next-token NLL (nats)
    seconds: float = 0.0

    @property
    def ppl(self) -> float:
        return perplexity(self.nll)


def summarize(zeroed: str, norms: np.ndarray, nll: np.ndarray, bos_pos: int = 0, seconds: float = 0.0) -> Row:
    others = np.delete(norms, bos_pos, axis=2).reshape(norms.shape[0], -1)
    return Row(zeroed, norms[:, :, bos_pos].mean(1), others.max(1), np.median(others, 1), float(nll.mean()), seconds)


@dataclass
class CircuitResult:
    model: str
    rows: list[Row]
    peak_layer: int | None  # `peak_layer` of the unmodified model
    max_layer: int  # where the unmodified BOS norm is largest
    ratio: float = PEAK_RATIO
    meta: dict = field(default_factory=dict)  # extra CSV columns (e.g. the seed)
    extra_layers: dict = field(default_factory=dict)  # {role: layer} reported as well (e.g. {"layer0": 0})

    @property
    def focus_layer(self) -> int:
        """The layer the figure shows: the peak layer, else the first extra layer, else `max_layer`."""
        if self.peak_layer is not None:
            return self.peak_layer
        return next(iter(self.extra_layers.values()), self.max_layer)

    @property
    def n_layers(self) -> int:
        return len(self.rows[0].bos)

    @property
    def layers(self) -> dict[str, int]:
        """{role: layer} of the layers reported: the peak layer (where it exists), the layer of the
        largest BOS norm and the last layer; roles of the same layer are joined ("peak=max")."""
        roles: dict[int, list[str]] = {}
        for role, l in (*self.extra_layers.items(), ("peak", self.peak_layer), ("max", self.max_layer),
                        ("last", self.n_layers - 1)):
            if l is not None:
                roles.setdefault(l, []).append(role)
        return {"=".join(r): l for l, r in sorted(roles.items())}

    def to_dict(self) -> dict:
        return {"model": self.model, "peak_layer": self.peak_layer, "max_layer": self.max_layer,
                "ratio": self.ratio, "meta": self.meta, "extra_layers": self.extra_layers,
                "rows": [{"zeroed": r.zeroed, "bos": r.bos.tolist(), "next_largest": r.next_largest.tolist(),
                          "others_median": r.others_median.tolist(), "nll": r.nll, "seconds": r.seconds}
                         for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "CircuitResult":
        rows = [Row(r["zeroed"], np.asarray(r["bos"]), np.asarray(r["next_largest"]), np.asarray(r["others_median"]),
                    r["nll"], r["seconds"]) for r in d["rows"]]
        return cls(d["model"], rows, d["peak_layer"], d["max_layer"], d["ratio"], d["meta"], d["extra_layers"])

    def row(self, zeroed: str) -> Row:
        return next(r for r in self.rows if r.zeroed == zeroed)

    def csv_rows(self) -> list[dict]:
        """Long format: one row per (zeroed component, reported layer)."""
        base = self.row("none")
        out = []
        for r in self.rows:
            for role, l in self.layers.items():
                out.append({"model": self.model, **{k: v for k, v in self.meta.items()}, "zeroed": r.zeroed,
                            "layer_role": role, "layer": l, "residual_peak": f"{r.bos[l]:.6g}",
                            "residual_others_max": f"{r.next_largest[l]:.6g}",
                            "residual_others_median": f"{r.others_median[l]:.6g}",
                            "residual_peak_vs_unmodified": f"{r.bos[l] / base.bos[l]:.4g}",
                            "nll": f"{r.nll:.6g}", "ppl": f"{r.ppl:.6g}", "seconds": f"{r.seconds:.2f}"})
        return out

    def markdown(self) -> str:
        """A table: per zeroed component, BOS / next-largest norm at each reported layer, loss, perplexity."""
        lay = self.layers
        head = ["zeroed"] + [f"{role} (layer {l}): BOS / next largest" for role, l in lay.items()] + ["NLL", "ppl"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.zeroed] + [f"{r.bos[l]:.4g} / {r.next_largest[l]:.4g}" for l in lay.values()]
            lines.append("| " + " | ".join(cells + [f"{r.nll:.4f}", f"{r.ppl:.4g}"]) + " |")
        return "\n".join(lines)


def circuit_experiment(model, tokens, components: list[str], *, targets=None, ratio: float = PEAK_RATIO,
                       bos_pos: int = 0, name: str = "model", extra_layers: dict | None = None,
                       meta: dict | None = None, log=None) -> CircuitResult:
    """Run the unmodified model and the model with each of `components` zeroed on `tokens` [batch, seq]
    (see the module doc). `targets`: see `measure`. `extra_layers` ({role: layer}) are reported beside
    the peak, max and last layers; `meta` goes into every CSV row. `log`: one line per forward."""
    import time

    rows = []
    for zero in [None, *components]:
        t0 = time.perf_counter()
        norms, nll = measure(model, tokens, zero, targets)
        dt = time.perf_counter() - t0
        rows.append(summarize("none" if zero is None else zero, norms, nll, bos_pos, dt))
        if zero is None:
            peak = peak_layer(norms, ratio, bos_pos)
        if log is not None:
            r = rows[-1]
            log(f"{name}: zero {r.zeroed}: BOS norm max {r.bos.max():.4g} (layer {int(r.bos.argmax())}), "
                f"nll {r.nll:.4f} ({dt:.1f} s)")
    base = rows[0]
    return CircuitResult(name, rows, peak, int(np.argmax(base.bos)), ratio, dict(meta or {}),
                         dict(extra_layers or {}))


def write_csv(results: list[CircuitResult], path: Path) -> Path:
    rows = [r for res in results for r in res.csv_rows()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    return path


# ---- the two runs of the gallery entry ------------------------------------------------------------------
def prose_tokens(tokenizer, source: str, n: int, seq_len: int, max_per_doc: int = 2) -> np.ndarray:
    """n samples [n, seq_len] of [BOS] + text tokens from a corpus (`toybb.probes.corpus` sources), as
    `toybb probe` builds them; `max_per_doc` windows per document spread the samples over documents."""
    enc = lambda text: tokenizer.encode(text, add_bos=False)  # noqa: E731
    tokens, valid = next(iter(domain_batches(Domain("prose", source), enc, n=n, seq_len=seq_len, batch=n,
                                             bos_id=tokenizer.bos_id, max_per_doc=max_per_doc)))
    if not valid.all():
        raise ConfigError(f"{source}: only {int(valid.sum())} samples of {seq_len} tokens, {n} wanted")
    return tokens


def toy_results(cfg, task, models: list, step: int, *, batch: int = 64, k: int | None = None, key: int = 0,
                ratio: float = PEAK_RATIO, log=None) -> list[CircuitResult]:
    """The experiment on every seed of a trained toy run: `models` [(seed, lr, model)] of a run folder
    (read by the caller), on `batch` fresh task sequences of `task` (inputs with BOS at position 0;
    targets the next tokens). Reports layer 0 as well (the toy's peak layer, SPEC §3)."""
    seq = np.asarray(task.sample(jax.random.key(key), batch, cfg.task.seq_len))
    comps = early_components(cfg.model.n_layers, k)
    out = []
    for seed, lr, model in models:
        out.append(circuit_experiment(model, seq[:, :-1], comps, targets=seq[:, 1:], ratio=ratio,
                                      name=f"toy {cfg.model.n_layers}-layer seed {seed}", extra_layers={"layer0": 0},
                                      meta={"seed": seed, "lr": lr, "step": step}, log=log))
    return out
