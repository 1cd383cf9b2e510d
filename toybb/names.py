"""The one vocabulary: every metric and table column toybb writes, with the paper's symbol, and the old
names it still reads.

A metric's name is the column base everywhere it appears: `metrics.csv` and `series.csv` add `_l{layer}`
(and `_l{layer}h{head}` per head), the probe tables `_{domain}`. `markdown_table()` is the README's table
(a test keeps them equal). The table also generates the reference tables' columns (`reference/build.py`),
the labels of `toybb compare` and the panels of the dynamics figure (`plot.py`). Old run folders still read: `canonical()` renames an old column (or JSON key)
to its new name and the readers say so in one line; new files are written with the new names only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    symbol: str  # the paper's symbol ("" where the paper has none)
    what: str
    tables: str  # where it is written
    authors: str = ""  # the authors' column(s) (their trajectory CSVs; toybb/reference), comma-separated
    per_layer: str = ""  # "in": measured in layer l, "after": after block l (columns `_l{l}`); "": one per model
    label: str = ""  # the label of plots and `toybb compare` (default: the symbol in ASCII, else the name)
    unit: str = ""  # the y label of its panel
    others: str = ""  # the same metric over the other tokens, drawn dashed beside it
    panel: str = ""  # "linear" or "log" (y axis): a panel of the dynamics figure (`toybb plot`), in this order

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.symbol.replace("‖", "||") or self.name)

    @property
    def authors_columns(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.authors.split(",")) if self.authors else ()

    def column(self, layer: int | None = None, head: int | None = None) -> str:
        """Its column: the name, plus `_l{layer}` for a per-layer metric and `h{head}` for one head."""
        if not self.per_layer or layer is None:
            return self.name
        return f"{self.name}_l{layer}" + ("" if head is None else f"h{head}")

    def title(self, layer: int | None = None) -> str:
        """Its panel title: the label, and which layer for a per-layer metric."""
        if not self.per_layer or layer is None:
            return self.label
        return f"{self.label} ({'after layer' if self.per_layer == 'after' else 'layer'} {layer})"


ATTN, NORM, NATS = "attention weight on BOS", "L2 norm", "nats"  # units
METRICS: tuple[Metric, ...] = (
    Metric("sink_attention", "Attn<s>", "attention on key 0 (BOS), mean over non-trigger queries, query 0 included",
           "metrics.csv", "attn_bos", "in", unit=ATTN, panel="linear"),
    Metric("sink_attention_excl0", "Attn<s>", "the same without query 0 (an LLM: mean over every query but 0)",
           "metrics.csv, series.csv, heads.csv", "attn_bos_excl_q0", "in", "Attn<s> excl. q0", ATTN),
    Metric("sink_logit_gap_types", "Δlogit(·,<s>)", "as in the paper's figures: the logit on BOS minus the mean "
           "logit on keys 1..i−1 (queries i ≥ 2), averaged per non-trigger character type first, then over the "
           "types unweighted", "metrics.csv", "dlogit_bos_mean60", "in", "Δlogit (per type)", "logit"),
    Metric("sink_logit_gap", "Δlogit(·,<s>)", "the same gap pooled over the queries (frequency-weighted; differs by "
           "up to ~3 nats early in training)", "metrics.csv, heads.csv", "dlogit_bos_pooled", "in", "Δlogit (pooled)",
           "logit"),
    Metric("sink_logit_types", "", "the logit on BOS, per-type mean as above", "metrics.csv",
           "logit_bos_mean60, logit_bos_l0_mean60", "in", "logit on <s> (per type)", "logit"),
    Metric("value_drain", "‖Val<s>‖", "‖W_O v‖ at BOS (site `attn.v_out`, mean over heads)",
           "metrics.csv, series.csv, heads.csv", "val_bos_WOv", "in", unit=NORM, others="value_others",
           panel="linear"),
    Metric("value_others", "", "mean ‖W_O v‖ over the other positions (toy: of the evaluation batch, so weighted "
           "by token frequency)", "metrics.csv, series.csv, heads.csv", per_layer="in", unit=NORM),
    Metric("value_drain_v", "‖v<s>‖", "‖v‖ at BOS before W_O (mean over kv heads)", "metrics.csv", "val_bos_v",
           "in", unit=NORM, others="value_others_v"),
    Metric("value_others_v", "", "‖v‖ over the other positions", "metrics.csv", per_layer="in", unit=NORM),
    Metric("residual_peak", "‖Res<s>‖", "norm of the residual stream at BOS after block l",
           "metrics.csv, series.csv, layers.csv, circuit.csv", "res_bos_l0", "after", unit=NORM,
           others="residual_others", panel="linear"),
    Metric("residual_others", "", "mean residual norm over the other positions", "metrics.csv, series.csv, "
           "layers.csv", per_layer="after", unit=NORM),
    Metric("residual_excess", "", "`residual_peak` − `residual_others`: the BOS residual's excess (a norm, not a "
           "massive activation)", "metrics.csv, series.csv", per_layer="after", unit=NORM),
    Metric("sink_rate", "Sink^ε", "Gu et al. 2025: the fraction of heads whose α₁, the mean attention on key 0 "
           "over the queries, exceeds ε = 0.3; in a toy run over every (layer, head), in a pretraining run per layer",
           "metrics.csv", per_layer="in", unit="fraction of heads"),
    Metric("massive_top1", "", "largest |activation| of the residual stream after block l (Sun et al. 2024; "
           "`_top2`, `_top3`: the next ones; massive when > 100 and > 1000× `massive_median`)",
           "metrics.csv, layers.csv", per_layer="after"),
    Metric("massive_median", "", "median |activation| of the residual stream after block l",
           "metrics.csv, layers.csv", per_layer="after"),
    Metric("massive_ratio", "", "largest |activation| of the residual stream over its median |activation| (per "
           "sequence, then the mean; Sun et al. 2024)", "metrics.csv (pretrain)", per_layer="after", unit="ratio"),
    Metric("kurtosis", "", "excess kurtosis of the residual stream after block l over the features of each "
           "position, averaged over positions (outlier studies: 0 for a Gaussian)", "metrics.csv", per_layer="after"),
    Metric("value_ratio", "", "‖W_O v‖ at the first token over the median over the other positions (mean over heads)",
           "metrics.csv (pretrain)", per_layer="in", unit="ratio"),
    Metric("residual_ratio", "", "residual norm at the first token over the median over the other positions",
           "metrics.csv (pretrain)", per_layer="after", unit="ratio"),
    Metric("train_loss", "", "next-token cross-entropy of the last training batch", "metrics.csv (pretrain)",
           unit=NATS),
    Metric("heldout_loss", "", "next-token cross-entropy on the fixed held-out batch", "metrics.csv (pretrain)",
           unit=NATS),
    Metric("sink_token_attention", "", "attention on the most attended data-found sink token (not BOS)",
           "heads.csv"),
    Metric("slot_attention", "", "attention of non-trigger queries on the learned sink token (`--sink-token`)",
           "metrics.csv", per_layer="in"),
    Metric("bias_attention", "", "attention of non-trigger queries on the explicit bias k′ (`--attn-bias`)",
           "metrics.csv", per_layer="in"),
    Metric("backcopy_risk", "", "mean cross-entropy at trigger positions (the oracle is certain there: total = "
           "excess)", "metrics.csv, series.csv", "icl_risk", label="back-copy excess risk", unit=NATS, panel="log"),
    Metric("bigram_risk", "", "realised excess cross-entropy over the oracle at non-trigger positions (toybb's own)",
           "metrics.csv, series.csv", label="bigram excess risk", unit=NATS, panel="log"),
    Metric("bigram_ce_expected", "", "the authors' bigram risk: expected cross-entropy Σ_v P[x,v](−log p(v)) over "
           "non-trigger positions, the unigram row at BOS; a total (floor ≈ 2.22)", "metrics.csv", "markov_risk",
           label="bigram CE (expected)", unit=NATS),
    Metric("bigram_kl_expected", "", "`bigram_ce_expected` minus the rows' entropy (the oracle's): an excess",
           "metrics.csv", "markov_excess_vs_oracle", label="bigram excess (expected)", unit=NATS),
    Metric("loss", "", "mean next-token cross-entropy", "metrics.csv", unit=NATS),
    Metric("backcopy_loss", "", "the same at trigger positions", "metrics.csv", unit=NATS),
    Metric("bigram_loss", "", "the same at non-trigger positions", "metrics.csv", unit=NATS),
    Metric("nll", "", "mean next-token cross-entropy of an LLM or a toy run on a text domain (`ppl` = exp(nll), "
           "`delta_nll`: the change an intervention makes)", "interventions.csv, circuit.csv", unit=NATS),
)
NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
METRIC: dict[str, Metric] = {m.name: m for m in METRICS}


def column(name: str, layer: int | None = None, head: int | None = None) -> str:
    """The column of metric `name` (a KeyError if it is not in the vocabulary) for a layer and head."""
    return METRIC[name].column(layer, head)

# old name -> new name: column bases (any suffix kept: _l0, _prose, ...), JSON keys and site names.
RENAMED: dict[str, str] = {
    "massive_norm": "residual_excess",
    "sink_score": "sink_attention_excl0",
    "logit_gap": "sink_logit_gap",
    "value_sink": "value_drain",
    "value_pos0": "value_drain",
    "attn_sink_token": "sink_token_attention",
    "resid_pos0": "residual_peak",
    "resid_sink": "residual_peak",
    "resid_others": "residual_others",
    "resid_norm_pos0": "residual_peak",
    "resid_norm_others": "residual_others",
    "resid_ratio_pos0": "residual_ratio",
    "bos_norm": "residual_peak",
    "bos_vs_unmodified": "residual_peak_vs_unmodified",
    "next_largest": "residual_others_max",
    "others_median": "residual_others_median",
    "top1_": "massive_top1_",  # a trailing "_": only as the base of a per-domain column (top1_prose)
    "top2_": "massive_top2_",
    "top3_": "massive_top3_",
    "median_": "massive_median_",
    "attn.head_out": "attn.v_out",
}
# TransformerLens hook names -> toybb site names (for error messages: toybb does not accept them)
TRANSFORMERLENS: dict[str, str] = {
    "hook_embed": "embed", "hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post", "attn.hook_q": "attn.q", "attn.hook_k": "attn.k", "attn.hook_v": "attn.v",
    "attn.hook_z": "attn.z", "attn.hook_attn_scores": "attn.logits", "attn.hook_pattern": "attn.pattern",
    "attn.hook_result": "attn.z (weighted values; times W_O per head)", "hook_attn_out": "attn.out",
    "mlp.hook_post": "mlp.hidden", "hook_mlp_out": "mlp.out", "ln_final.hook_normalized": "final_norm",
}


def canonical(name: str) -> str:
    """The current name of a column, JSON key or site that may carry an old name (unchanged if current)."""
    for old, new in RENAMED.items():
        if old.endswith("_"):
            if name.startswith(old):
                return new + name[len(old):]
            continue
        if name == old or name.startswith(old + "_") or name.startswith(old + "@"):
            return new + name[len(old):]
        for sep in (".", "_"):  # blocks.3.attn.head_out@norm, or inside a capture column
            i = name.find(sep + old)
            if "." in old and i >= 0 and name[i + len(sep) + len(old):][:1] in ("", "@", ":", "_"):
                return name[: i + len(sep)] + new + name[i + len(sep) + len(old):]
    return name


_noted: set[str] = set()


def read_columns(columns, where: str) -> list[str]:
    """`columns` with old names replaced by the current ones; a one-line note on stderr (once per file)
    when any was old."""
    new = [canonical(c) for c in columns]
    changed = [(o, n) for o, n in zip(columns, new) if o != n]
    if changed and where not in _noted:
        _noted.add(where)
        shown = ", ".join(f"{o} -> {n}" for o, n in changed[:3]) + (", ..." if len(changed) > 3 else "")
        print(f"note: {where} uses old column names ({shown}); read with the current names", file=sys.stderr)
    return new


def renamed_site(pattern: str) -> str | None:
    """The message for a site pattern that uses an old or a TransformerLens name, else None."""
    for old, new in RENAMED.items():
        if "." in old and old in pattern:
            return f"{old} was renamed {new}"
    for tl, ours in TRANSFORMERLENS.items():
        if pattern.endswith(tl) or tl + "@" in pattern:
            return f"TransformerLens' {tl} is toybb's {ours}"
    return None


def markdown_table() -> str:
    """The README's metric table (one row per metric)."""
    rows = ["| name | paper | what it is | written to | the authors' column |", "|---|---|---|---|---|"]
    for m in METRICS:
        auth = ", ".join(f"`{a}`" for a in m.authors_columns)
        rows.append(f"| `{m.name}` | {m.symbol} | {m.what} | {m.tables} | {auth} |")
    return "\n".join(rows)
