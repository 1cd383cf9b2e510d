"""The configuration of a pretraining run: `PretrainConfig` (text, tokenizer, sequences, optimiser, the
schedule of evaluations and checkpoints) and the `ModelConfig` it trains (a Llama-style default, any
field changed by `--model-set FIELD=VALUE`), both validated when built, before anything compiles."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import optax

from toybb.config import OPTIMIZERS, PRECISIONS, OptimConfig, section_from_dict
from toybb.errors import ConfigError
from toybb.llm.pretrain_folder import DEFAULT_BOS, check_first_token, parse_bos
from toybb.models.config import LIMITS, ModelConfig, check_count

# the model a pretraining run trains unless told otherwise: Llama-style (RoPE, RMSNorm, gated SiLU MLP)
# the CPU configuration (benchmarks/bench_pretrain.py): 4 layers x d_model 128, 1.3 M parameters
DEFAULT_MODEL = dict(arch="llama", n_layers=4, d_model=128, n_heads=4, mlp_dim=512)
# learning-rate schedules after the linear warmup: the constant --lr, or a cosine decay to COSINE_FINAL x --lr at --steps
SCHEDULES = ("constant", "cosine")
COSINE_FINAL = 0.1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining run. seq_len: positions the model sees (the first one the BOS, unless bos is "none");
    heldout: the fraction of the token stream (its tail) kept out of training; series: checkpoints at
    `log_steps(steps, series_per_decade)` (or at `series_steps` when given), loadable with
    `toybb.load(DIR, step=N)`."""

    text: tuple[str, ...] = ("pride", "emma", "mobydick", "shakespeare", "pydoc")
    max_chars: int | None = None
    vocab_size: int = 1024
    tokenizer: str | None = None  # a tokenizer.json or a checkpoint whose tokenizer is used instead of training one
    bos: str = DEFAULT_BOS
    seq_len: int = 64
    batch: int = 16
    steps: int = 3000
    optimizer: str = "adam"
    lr: float = 1e-3
    warmup: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 100
    eval_batch: int = 16
    heldout: float = 0.05
    ckpt_every: int = 100
    series_per_decade: int = 4
    series_steps: tuple[int, ...] = ()
    precision: str = "highest"

    def __post_init__(self):
        _check(len(self.text) > 0, "give at least one --text SOURCE")
        object.__setattr__(self, "bos", parse_bos(self.bos))
        for name, limit in (("vocab_size", "vocab_size"), ("seq_len", "seq_len"), ("batch", "batch"),
                            ("steps", "steps"), ("eval_every", "steps"), ("eval_batch", "batch"),
                            ("ckpt_every", "steps"), ("series_per_decade", "evaluations")):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", limit)
        check_count(self.seed, "--seed", "seed", low=0)
        n = self.steps // self.eval_every + self.series_per_decade * (len(str(self.steps)) + 1) + 2
        _check(n <= LIMITS["evaluations"], f"--eval-every {self.eval_every} gives about {n:,} evaluations of "
               f"{self.steps:,} steps; at most {LIMITS['evaluations']:,}: evaluate less often")
        _check(self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}")
        _check(self.max_chars is None or self.max_chars > 0, f"--max-chars must be positive, got {self.max_chars}")
        _check(self.tokenizer is not None or self.vocab_size >= 258, f"--vocab-size must be at least 258 (256 "
               f"bytes and 2 special tokens), got {self.vocab_size}")
        _check(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr!r}")
        check_count(self.warmup, "--warmup", "steps", low=0)
        _check(self.warmup < self.steps, f"--warmup {self.warmup} must be below --steps {self.steps}")
        _check(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        _check(0 < self.heldout < 0.5, f"--heldout must lie in (0, 0.5), got {self.heldout!r}")
        _check(all(isinstance(s, int) and 0 < s <= self.steps for s in self.series_steps),
               f"--series-steps must lie in 1..{self.steps} (--steps), got {list(self.series_steps)}")
        _check(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        check_first_token(self.bos, self.vocab_size)

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig(name=self.optimizer, lr=self.lr, weight_decay=self.weight_decay)

    def learning_rate(self):
        """The learning rate: --lr itself (constant, no warmup), or an optax schedule of the step: linear from 0
        to --lr over --warmup steps, then constant or a cosine decay to COSINE_FINAL x --lr at --steps."""
        if self.warmup == 0 and self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return optax.warmup_cosine_decay_schedule(0.0, self.lr, self.warmup, self.steps, COSINE_FINAL * self.lr)
        return optax.join_schedules([optax.linear_schedule(0.0, self.lr, self.warmup), optax.constant_schedule(self.lr)],
                                    [self.warmup])

    def series(self) -> tuple[int, ...]:
        """The steps of the checkpoint series (the last step always among them)."""
        steps = self.series_steps or log_steps(self.steps, self.series_per_decade)
        return tuple(sorted(set(steps) | {self.steps}))

    def eval_steps(self) -> tuple[int, ...]:
        """Steps at which the metrics are measured: 0, every eval_every, the series and the last."""
        return tuple(sorted({0, self.steps, *range(self.eval_every, self.steps, self.eval_every), *self.series()}))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text"], d["series_steps"] = list(self.text), list(self.series_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        return cls(**{**d, "text": tuple(d["text"]), "series_steps": tuple(d["series_steps"])})


def log_steps(steps: int, per_decade: int) -> tuple[int, ...]:
    """Log-spaced steps 1..steps, `per_decade` per factor of 10 (rounded, distinct): 4 per decade gives
    1, 2, 3, 6, 10, 18, 32, 56, 100, ..."""
    n = int(math.floor(math.log10(steps) * per_decade + 1e-9))
    return tuple(sorted({int(round(10 ** (k / per_decade))) for k in range(n + 1)} | {steps}))


def parse_model_set(items: tuple[str, ...]) -> dict[str, Any]:
    """--model-set FIELD=VALUE items -> {field: value}; a value is read as JSON (numbers, true/false, null,
    lists) and otherwise taken as a string (attention=relu)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}  # the tokenizer's
    out: dict[str, Any] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        name = name.strip()
        _check(bool(eq) and bool(name), f"--model-set takes FIELD=VALUE, got {item!r}")
        _check(name in fields, f"--model-set: {name!r} is not a model field; fields: {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def build_model_config(fields: dict[str, Any], vocab_size: int, seq_len: int) -> ModelConfig:
    """The ModelConfig of a run: DEFAULT_MODEL, then `fields` (the flags and --model-set), its vocabulary the
    tokenizer's; max_positions defaults to seq_len and must reach it."""
    merged = {**DEFAULT_MODEL, "max_positions": seq_len, **fields, "vocab_size": vocab_size}
    cfg = section_from_dict(ModelConfig, merged, "model")
    _check(cfg.arch not in ("simple",), "toybb pretrain trains a transformer; model arch 'simple' has no language model")
    _check(seq_len <= cfg.max_positions, f"--seq-len {seq_len} is beyond the model's positions (max_positions "
           f"{cfg.max_positions}); lower --seq-len or raise it with --model-set max_positions={seq_len}")
    return cfg
