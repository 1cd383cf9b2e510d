"""The final probes of a finished training run: the active/dormant probe (SPEC §3) and its in-text
counterpart, the interventions (attention or MLP removed), and the run summary written next to them."""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.config import RunConfig
from toybb.errors import ConfigError
from toybb.probes import bb as bbprobes
from toybb.records import atomic_write, write_csv_rows
from toybb.train.trainer import RunResult, Trainer, with_precision


def probe_label(task, cfg: RunConfig) -> str:
    """"paper" when the active/dormant probe [BOS] + every non-trigger + [v] fits the trained sequence
    length; otherwise "truncated" (its body cut to the trained positions: not the paper's probe)."""
    full = bbprobes.dormancy_probe_tokens(task).shape[1]
    return "paper" if full <= cfg.task.seq_len else "truncated"


def final_probes(result: RunResult, trainer: Trainer) -> tuple[list[dict], list[dict]]:
    """Active/dormant rows (run, token, layer, head, attention on BOS, dormant, is_trigger) and
    intervention rows (run, intervention, back-copy risk, bigram risk) for every run."""
    cfg, task = result.config, trainer.task
    probe = jnp.asarray(bbprobes.dormancy_probe_tokens(task, cfg.task.seq_len))
    probe_kind = probe_label(task, cfg)
    if probe.shape[1] > cfg.model.max_positions and cfg.model.position == "learned":
        raise ConfigError(
            f"the active/dormant probe needs {probe.shape[1]} positions but model.max_positions is {cfg.model.max_positions}"
        )
    graphdef, tokens = trainer.graphdef, trainer.eval_tokens
    interventions = bbprobes.intervention_names(cfg.model)

    # the in-text counterpart of the probe needs rare characters to occur: a natural sample of at least
    # 2^16 tokens (e.g. ~20 'z' among Tiny Shakespeare's bigrams), drawn from its own fixed seed
    n_nat = max(cfg.train.eval_batch, -(-(1 << 16) // cfg.task.seq_len))
    natural_tokens = task.sample(jax.random.key(cfg.train.eval_seed + 1), n_nat, cfg.task.seq_len)[:, :-1]

    probes = getattr(trainer, "_final_probes", None)  # compiled once per Trainer (sweeps reuse it)
    if probes is None:
        def probes(all_params, natural_tokens):  # one compiled program for all final probes
            def probe_one(params):
                model = nnx.merge(graphdef, params)
                attn = bbprobes.sink_attention_of_last_query(model, probe)
                risks = jnp.stack([jnp.stack(bbprobes.intervention_risks(model, tokens, task, ab)) for _, ab in interventions])
                return attn, risks

            def natural_one(params):  # run by run: the large sample's patterns exist for one run at a time
                return bbprobes.bos_attention_by_token(nnx.merge(graphdef, params), natural_tokens, probe.shape[0])

            # run by run: at the paper's size the interventions' activations of many runs at once exceed
            # the memory of a CPU machine
            attn, risks = jax.lax.map(probe_one, all_params)
            natural, count = jax.lax.map(natural_one, all_params)
            return attn, natural, count, risks

        probes = jax.jit(with_precision(probes, cfg.train.precision))
        trainer._final_probes = probes

    # [runs, layers, tokens, heads] x2, [runs, tokens], [runs, n_iv, 2]
    attn, natural, count, risks = (np.asarray(x) for x in probes(result.state["params"], natural_tokens))
    ad_rows = []
    for r, (seed, lr) in enumerate(result.runs):
        for l in range(cfg.model.n_layers):
            if not cfg.model.has_attention(l):
                continue
            for v in range(attn.shape[2]):
                for h in range(attn.shape[3]):
                    a = float(attn[r, l, v, h])
                    ad_rows.append({"seed": seed, "lr": lr, "layer": l, "head": h, "token": v,
                                    "char": task.chars[v], "is_trigger": bool(task.is_trigger[v]),
                                    "bos_attention": a, "probe": probe_kind, "probe_len": probe.shape[1], "dormant": a >= bbprobes.M.DORMANT_THRESHOLD,
                                    # the same query on a natural sample of >= 2^16 tokens (NaN: absent there)
                                    "natural_bos_attention": float(natural[r, l, v, h]), "natural_count": int(count[r, v])})
    iv_rows = []
    for i, (name, _) in enumerate(interventions):
        for r, (seed, lr) in enumerate(result.runs):
            iv_rows.append({"seed": seed, "lr": lr, "intervention": name,
                            "backcopy_risk": float(risks[r, i, 0]), "bigram_risk": float(risks[r, i, 1])})
    return ad_rows, iv_rows


def summarize(result: RunResult, ad_rows: list[dict], iv_rows: list[dict]) -> dict[str, Any]:
    """Final metrics (median and per run), active tokens per run and layer, intervention medians."""
    summary: dict[str, Any] = {"step": result.steps[-1], "wall_seconds": round(result.wall_seconds, 2),
                               "runs": [{"seed": s, "lr": lr} for s, lr in result.runs],
                               "final_per_run": {n: [float(x) for x in v[-1]] for n, v in result.metrics.items()}}
    summary.update(_medians(result, iv_rows))
    active: dict[str, list[str]] = {}
    in_text: dict[str, list[str]] = {}  # probe-active and also off BOS on the evaluation batch
    for row in ad_rows:
        if not row["dormant"]:
            key = f"seed{row['seed']}_lr{row['lr']:g}_l{row['layer']}h{row['head']}"
            active.setdefault(key, []).append(row["char"])
            if row["natural_bos_attention"] < bbprobes.M.DORMANT_THRESHOLD:  # False for NaN (absent token)
                in_text.setdefault(key, []).append(row["char"])
    summary["active_tokens"] = active
    summary["active_tokens_in_text"] = in_text
    if ad_rows:  # "truncated": the probe was cut to the trained length and is not the paper's
        summary["active_dormant_probe"] = {"kind": ad_rows[0]["probe"], "length": ad_rows[0]["probe_len"]}
    return summary


def _medians(result: RunResult, iv_rows: list[dict]) -> dict[str, Any]:
    """initial_median, final_median and interventions_median over the runs (seeds); with several learning
    rates one of each per learning rate instead ("..._by_lr", keyed by the lr), never pooled over them."""
    lrs = list(dict.fromkeys(lr for _, lr in result.runs))
    out: dict[str, Any] = {}
    for lr in lrs:
        cols = [r for r, (_, x) in enumerate(result.runs) if x == lr]
        ivs: dict[str, dict[str, list]] = {}
        for row in (x for x in iv_rows if x["lr"] == lr):
            for m in ("backcopy_risk", "bigram_risk"):
                ivs.setdefault(row["intervention"], {"backcopy_risk": [], "bigram_risk": []})[m].append(row[m])
        part = {"initial_median": {n: float(np.median(np.asarray(v[0])[cols])) for n, v in result.metrics.items()},
                "final_median": {n: float(np.median(np.asarray(v[-1])[cols])) for n, v in result.metrics.items()},
                "interventions_median": {k: {m: float(np.median(v)) for m, v in d.items()} for k, d in ivs.items()}}
        if len(lrs) == 1:
            return part
        for k, v in part.items():
            out.setdefault(f"{k}_by_lr", {})[f"{lr:g}"] = v
    return out


def write_final_probes(result: RunResult, trainer: Trainer) -> dict[str, Any]:
    """active_dormant.csv, interventions.csv and summary.json of a finished run folder; returns the summary."""
    ad_rows, iv_rows = final_probes(result, trainer)
    out = result.out_dir
    write_csv_rows(out / "active_dormant.csv", ad_rows)
    write_csv_rows(out / "interventions.csv", iv_rows)
    summary = summarize(result, ad_rows, iv_rows)
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2)), mode="w")
    return summary
