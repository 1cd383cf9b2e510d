"""`toybb.load(...)`: one entry point for toy runs and pretrained models alike.

    m = toybb.load("smollm2-135m-instruct")     # a name from `toybb models`, an HF folder, a .gguf file
    m = toybb.load("runs/default", seed=1)      # or a `toybb train` run folder (one of its runs)
    m = toybb.load("runs/lm", step=100)         # or a `toybb pretrain` folder at a step of its series
    out = m.run("The cat sat on the mat.", capture="blocks.*.resid_post@norm")
    out.cache["blocks.3.resid_post@norm"]       # [1, tokens]; out.logits [1, tokens, vocab]
    m.loss(text, edits=[Edit("blocks.*.attn.z", "zero", layer=1, head=0)])
    g = m.grad(text, "blocks.*.resid_post")     # d loss / d activation at every site: g.grads, g.cache

The text is tokenized as the model expects (BOS first where it was trained with one); captures and
interventions are those of `toybb.models.capture` / `toybb.models.sites`; one compilation per shape.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from toybb.errors import ArgumentTypeError, CheckpointError, ConfigError
from toybb.llm.load import load as load_llm
from toybb.llm.registry import resolve_existing
from toybb.models.capture import Capture
from toybb.models.forward import Gradients, forward, gradients, loss
from toybb.models.sites import Edit, Edits
from toybb.train.runs import is_run_folder, load_models, model_of


class Output(NamedTuple):
    logits: Any  # [batch, tokens, vocab]
    cache: dict  # {site: array}
    tokens: np.ndarray  # [batch, tokens] the ids the model saw


class Loaded:
    """A model ready to probe: `kind` ("toy" or "llm"), `name`, `config` (the run's `RunConfig` or the
    `ModelConfig`), `tokenizer` (encode/decode), `sites()`, `model(seed=...)`, `encode`, `run`, `loss`."""

    def __init__(self, kind: str, name: str, config, tokenizer, runs: list[tuple], get_model, current: tuple,
                 max_len: int, info: dict):
        self.kind, self.name, self.config, self.tokenizer = kind, name, config, tokenizer
        self._runs, self._get_model, self._current, self.max_len, self.info = runs, get_model, current, max_len, info

    def __repr__(self) -> str:
        what = f"run seed {self._current[0]}, lr {self._current[1]:g}" if self.kind == "toy" else self.info["format"]
        return f"<toybb {self.kind} model {self.name} ({what})>"

    @property
    def runs(self) -> list[tuple]:
        """(seed, lr) of every run of a toy run folder ([(None, None)] for a pretrained model)."""
        return list(self._runs)

    def model(self, seed: int | None = None, lr: float | None = None):
        """The Flax NNX module: run (seed, lr) of a toy run folder (default: the one chosen at load)."""
        if seed is None and lr is None:
            return self._get_model(self._current)
        _check_run(seed, lr, "Loaded.model")
        if self.runs == [(None, None)]:
            raise ConfigError(f"{self.name}: seed and lr choose a run of a toy run folder; this model has one")
        return self._get_model(_pick(self.runs, seed, lr, self.name))

    def sites(self):
        """The site table of the model (`toybb.models.sites.ModelSites`): `.names()`, `.match(pattern)`."""
        return self.model().sites()

    def encode(self, text: str) -> np.ndarray:
        """int32 [tokens]: the ids of `text`, BOS first where the model expects one."""
        if not isinstance(text, str):
            raise ConfigError(f"encode takes a string, got {type(text).__name__}")
        return np.asarray(self.tokenizer.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(np.asarray(ids).reshape(-1).tolist())

    def tokens(self, text_or_ids) -> np.ndarray:
        """int32 [batch, tokens] from a string, a list of strings of equal token length, or ids."""
        if isinstance(text_or_ids, str):
            ids = self.encode(text_or_ids)[None]
        elif isinstance(text_or_ids, (list, tuple)) and text_or_ids and all(isinstance(t, str) for t in text_or_ids):
            rows = [self.encode(t) for t in text_or_ids]
            if len({len(r) for r in rows}) > 1:
                raise ConfigError(f"the texts have {sorted({len(r) for r in rows})} tokens; a batch needs one "
                                  "length (run them one at a time)")
            ids = np.stack(rows)
        else:
            ids = np.asarray(text_or_ids)
            if ids.ndim == 1:
                ids = ids[None]
            if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
                raise ConfigError(f"give a text, a list of texts or integer ids [batch, tokens], got {ids.dtype} "
                                  f"{ids.shape}")
        vocab = self.model().sites().sizes["vocab"]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ConfigError(f"token ids must lie in 0..{vocab - 1}, got {ids.min()}..{ids.max()}")
        if not 1 <= ids.shape[1] <= self.max_len:
            raise ConfigError(f"{ids.shape[1]} tokens; {self.name} takes 1 to {self.max_len}")
        return ids.astype(np.int32)

    def run(self, text_or_ids, *, capture=(), edits=None, seed: int | None = None) -> Output:
        """Forward pass with captures (site patterns, e.g. "blocks.*.attn.pattern@key0") and interventions
        (`Edit`s) -> Output(logits, cache, tokens)."""
        model = self.model(seed)
        capture = Capture.of(_capture_arg(capture))
        capture.check(model.sites())  # before compiling
        tokens = self.tokens(text_or_ids)
        logits, cache = forward(model, tokens, capture=capture, edits=_edits_arg(edits))
        return Output(logits, cache, tokens)

    def loss(self, text_or_ids, *, edits=None, seed: int | None = None) -> float:
        """Mean next-token cross-entropy (nats) of the text, with the interventions `edits` if given."""
        tokens = self.tokens(text_or_ids)
        if tokens.shape[1] < 2:
            raise ConfigError("the loss needs at least two tokens")
        return float(np.mean(np.asarray(loss(self.model(seed), tokens, edits=_edits_arg(edits), reduction="token").nll)))

    def grad(self, text_or_ids, sites, *, metric="loss", edits=None, seed: int | None = None) -> Gradients:
        """The gradient of `metric` ("loss": the mean next-token loss, or a function (logits, tokens) ->
        scalar such as a logit difference) with respect to the activation at every site matching `sites`
        -> Gradients(value, grads {site: array}, cache {site: activation}). With `run`'s captures of a
        second text this gives attribution patching: (clean - corrupt) . grad, summed over the last axis."""
        model = self.model(seed)
        patterns = (_capture_arg(sites),) if isinstance(sites, str) else _capture_arg(sites)
        for p in patterns:
            if "@" in p:
                raise ArgumentTypeError(f"grad takes site patterns without a reduction, got {p!r}")
            model.sites().match(p)  # before compiling
        tokens = self.tokens(text_or_ids)
        if metric == "loss" and tokens.shape[1] < 2:
            raise ConfigError("the loss needs at least two tokens")
        return gradients(model, tokens, patterns, metric=metric, edits=_edits_arg(edits))


def _capture_arg(capture):
    """`capture=`: a site pattern, a list of them, a Capture or None (nothing), else ArgumentTypeError."""
    if capture is None:
        return ()
    if isinstance(capture, (str, Capture)):
        return capture
    if isinstance(capture, (list, tuple)) and all(isinstance(c, str) for c in capture):
        return tuple(capture)
    raise ArgumentTypeError(f"capture takes a site pattern such as 'blocks.*.resid_post' or a list of them, got "
                            f"{type(capture).__name__} {capture!r:.60}")


def _edits_arg(edits):
    """`edits=`: None, an Edit or a list of them (each Edit checks its own fields when it is built)."""
    if edits is None or isinstance(edits, Edits):
        return edits
    listed = [edits] if isinstance(edits, Edit) else edits
    if not isinstance(listed, (list, tuple)) or not all(isinstance(e, Edit) for e in listed):
        raise ArgumentTypeError(f"edits takes an Edit or a list of Edits (toybb.Edit), got {type(edits).__name__} "
                                f"{edits!r:.60}")
    return listed


def _check_run(seed, lr, where: str) -> None:
    """seed / lr choosing a run of a toy run folder: an integer and a number (or None)."""
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise ArgumentTypeError(f"{where}: seed must be an integer (a seed of the run folder), got {seed!r:.60}")
    if lr is not None and (not isinstance(lr, (int, float, np.number)) or isinstance(lr, bool)):
        raise ArgumentTypeError(f"{where}: lr must be a number (a learning rate of the run folder), got {lr!r:.60}")


def load(source: str | os.PathLike, *, seed: int | None = None, lr: float | None = None, dtype: str = "float32",
         tokenizer: str | None = None, step: int | None = None) -> Loaded:
    """A toy run folder (written by `toybb train`), a `toybb pretrain` folder, a Hugging Face model directory,
    a .gguf file or the name of an offline checkpoint (`toybb models`). seed / lr choose the run of a toy run
    folder (default: its first); step the checkpoint of a pretrain folder's series (default: its latest);
    dtype and tokenizer (a tokenizer.json) apply to pretrained models."""
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ArgumentTypeError(f"toybb.load takes a path or a model name, got {source!r:.60}")
    _check_run(seed, lr, "toybb.load")
    if not isinstance(dtype, str):
        raise ArgumentTypeError(f"toybb.load: dtype must be a name such as 'float32' or 'bfloat16', got {dtype!r:.60}")
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        raise ArgumentTypeError(f"toybb.load: tokenizer must be the path of a tokenizer.json, got {tokenizer!r:.60}")
    if step is not None and (not isinstance(step, (int, np.integer)) or isinstance(step, bool)):
        raise ArgumentTypeError(f"toybb.load: step must be an integer (a step of the pretrain folder's series), got "
                                f"{step!r:.60}")

    path = Path(source)
    if is_run_folder(path):
        if step is not None:
            raise ConfigError(f"{source}: step chooses a checkpoint of a `toybb pretrain` folder; this is not one")
        if dtype != "float32" or tokenizer is not None:
            raise ConfigError(f"{source}: dtype and tokenizer apply to pretrained checkpoints; a toybb run folder "
                              "keeps its own")
        return _load_run(path, seed, lr)
    if seed is not None or lr is not None:
        raise ConfigError(f"{source}: seed and lr choose a run of a toy run folder; this is not one")
    return _load_pretrained(str(source), dtype, tokenizer, None if step is None else int(step))


def _pick(runs: list[tuple], seed, lr, name) -> tuple:
    hits = [r for r in runs if (seed is None or r[0] == seed) and (lr is None or np.isclose(r[1], lr))]
    if not hits:
        raise ConfigError(f"{name} has no run with seed {seed} and lr {lr}; its runs (seed, lr): {runs}")
    if len(hits) > 1:
        raise ConfigError(f"{name} has runs {hits} for seed {seed}; choose one with lr=")
    return hits[0]


def _load_run(path: Path, seed, lr) -> Loaded:
    from functools import cache

    cfg, trainer, state, step = load_models(path)
    runs = [(int(s), float(r)) for s, r in trainer.runs]
    current = _pick(runs, seed, lr, str(path)) if (seed is not None or lr is not None) else runs[0]
    get_model = cache(lambda run: model_of(trainer, state, runs.index(run)))  # merged when first asked for
    return Loaded("toy", str(path), cfg, _ToyTokenizer(trainer.task), runs, get_model, current, cfg.model.max_positions,
                  {"step": step, "format": "toybb run"})


class _ToyTokenizer:
    """Characters of the run's bigram table; BOS first when the run was trained with one."""

    def __init__(self, task):
        self.task = task

    def encode(self, text: str) -> list[int]:
        return self.task.encode(text).tolist()

    def decode(self, ids) -> str:
        return self.task.decode(ids)


def _load_pretrained(source: str, dtype: str, tokenizer: str | None, step: int | None) -> Loaded:
    path = resolve_existing(source)
    if os.path.isdir(path) and not (Path(path) / "config.json").is_file():
        raise CheckpointError(f"{source}: a folder that is neither a toybb run (config.json and checkpoint.npz "
                              "from `toybb train`, or config.json and series/ from `toybb pretrain`) nor a Hugging "
                              "Face model (config.json and *.safetensors)")
    pre = load_llm(path, dtype=dtype, tokenizer=tokenizer, step=step)
    if pre.tokenizer is None:
        raise CheckpointError(f"{source}: no tokenizer found; pass tokenizer='path/to/tokenizer.json'")
    tok = pre.tokenizer
    if tok.bos_id is not None and not tok.add_bos:  # the probes' convention: BOS first when the model has one
        tok = dataclasses.replace(tok, add_bos=True)
    info = {"format": pre.fmt, "path": pre.source} | ({} if pre.step is None else {"step": pre.step})
    return Loaded("llm", source, pre.cfg, tok, [(None, None)], lambda run: pre.model, (None, None),
                  pre.cfg.max_positions, info)
