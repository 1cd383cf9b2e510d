"""Frozen, validated configs for toy-model runs (the model section is `toybb.models.config.ModelConfig`).

Defaults are the reference (paper) settings of SPEC §1-2; `cpu_preset()` shrinks them to a run
that finishes in minutes on two CPU cores. Every config validates itself when built and raises
`ConfigError` naming the field and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from toybb.errors import ConfigError
from toybb.models.config import (  # noqa: F401 (re-exported: the model config is one section of a run)
    ARCHS, ATTENTION_KINDS, PAIRINGS, POSITION_KINDS, RELATIVE_POSITIONS, RENAMED_MODEL_FIELDS, ModelConfig,
    LIMITS, PositionConfig, RopeScaling, _check, check_count, renamed_model_fields)
from toybb.records import read_text

OPTIMIZERS = ("adam", "sgd", "muon")
DEFAULT_LR = {"adam": 3e-4, "sgd": 0.03, "muon": 0.02}
# the paper's 1-layer ReLU-attention run used AdamW at 3e-3; its 3-layer ReLU-attention run 3e-4 (SPEC §2)
PAPER_RELU_1LAYER_LR = 3e-3
# float32 matmul precision of training and evaluation -> jax.default_matmul_precision. "highest" is full
# float32 on every backend (the authors trained in fp32); on NVIDIA GPUs JAX's default would be TF32.
PRECISIONS = {"highest": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}


@dataclass(frozen=True)
class TaskConfig:
    """Bigram-Backcopy task (SPEC §1)."""

    seq_len: int = 256  # input tokens per sequence (sequences hold seq_len + 1 tokens)
    n_triggers: int = 3
    bos: bool = True
    table: str = "tinyshakespeare"  # packaged bigram table, or a path to a .npz built by toybb.task.build_bigram

    def __post_init__(self):
        check_count(self.seq_len, "task.seq_len", "seq_len", low=2)
        _check(
            isinstance(self.n_triggers, int) and self.n_triggers >= 1,
            f"task.n_triggers must be a positive integer, got {self.n_triggers!r}",
        )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW or SGD with momentum, reference defaults (SPEC §2), or Muon (`toybb.train.optim`)."""

    name: str = "adam"  # adam | sgd | muon
    lr: float | None = None  # None: 3e-4 for adam, 0.03 for sgd, 0.02 for muon
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 1e-4
    momentum: float = 0.9

    def __post_init__(self):
        _check(
            self.name in OPTIMIZERS,
            f"optim.name must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}",
        )
        if self.lr is not None:
            _check(
                isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
                f"optim.lr must be a positive number, got {self.lr!r}",
            )
        _check(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "optim.b1 and optim.b2 must lie in [0, 1)")
        _check(self.eps > 0, f"optim.eps must be positive, got {self.eps!r}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(0 <= self.momentum < 1, f"optim.momentum must lie in [0, 1), got {self.momentum!r}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.name] if self.lr is None else float(self.lr)


@dataclass(frozen=True)
class TrainConfig:
    """Training loop, evaluation grid and checkpointing."""

    steps: int = 10_000
    batch: int = 512
    seeds: tuple[int, ...] = (0,)
    lrs: tuple[float, ...] = ()  # several learning rates vmapped with the seeds; () uses optim.lr
    eval_batch: int = 512
    eval_seed: int = 1234  # the fixed evaluation batch is drawn from this seed
    # evaluation grid: (every, until) pairs; the reference logs every 20 steps to 10k, then every 200
    eval_schedule: tuple[tuple[int, int], ...] = ((20, 10_000), (200, 0))
    ckpt_every: int = 1000  # steps between checkpoints (rounded up to the next evaluation step)
    # runs vmapped together inside the one compiled step; the chunks run one after another in the
    # same program (jax.lax.map). None: all runs on accelerators or several devices; on one CPU
    # device, as many runs as keep a chunk's MLP activations within ~1 MiB (cache-sized: wide
    # vmapped batches are memory-bound there; see benchmarks/bench_train.py). Speed only: the
    # numbers agree to float32 round-off whatever the chunk.
    run_chunk: int | None = None
    # sequences per gradient micro-batch: each step sums the gradients of batch / microbatch slices
    # (lax.scan), the same mean gradient to float32 round-off. None: the whole batch on accelerators;
    # on a CPU, slices whose MLP activations stay within ~8 MiB (cache-sized: the paper configuration
    # takes 4.6 s per step in slices of 8 sequences against 6.3 s whole). Speed only.
    microbatch: int | None = None
    precision: str = "highest"  # matmul precision: highest (full float32) | tf32 | bf16 (speed, on GPUs/TPUs)

    def __post_init__(self):
        check_count(self.steps, "train.steps", "steps")
        check_count(self.batch, "train.batch", "batch")
        check_count(self.eval_batch, "train.eval_batch", "batch")
        check_count(self.eval_seed, "train.eval_seed", "seed", low=0)
        _check(len(self.seeds) > 0, "train.seeds must name at least one seed")
        for s in self.seeds:
            check_count(s, "train.seeds: every seed", "seed", low=0)
        _check(len(set(self.seeds)) == len(self.seeds), f"train.seeds has duplicates: {self.seeds}")
        _check(len(self.seeds) * max(1, len(self.lrs)) <= LIMITS["runs"],
               f"train.seeds x train.lrs gives {len(self.seeds) * max(1, len(self.lrs)):,} runs; at most "
               f"{LIMITS['runs']:,} train together")
        for lr in self.lrs:
            _check(
                isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
                f"train.lrs: every learning rate must be a positive number, got {lr!r}",
            )
        _check(self.precision in PRECISIONS,
               f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        _check(len(self.eval_schedule) > 0, "train.eval_schedule needs at least one (every, until) pair")
        for every, until in self.eval_schedule:
            _check(
                isinstance(every, int) and every > 0 and isinstance(until, int) and until >= 0,
                f"train.eval_schedule entries are (every > 0, until >= 0; 0 = forever), got {(every, until)!r}",
            )
        n = sum(map(len, self._eval_grid())) + 2
        _check(n <= LIMITS["evaluations"],
               f"the evaluation schedule gives {n:,} evaluations for {self.steps:,} steps; at most "
               f"{LIMITS['evaluations']:,}: evaluate less often (--eval-every) or train fewer steps")
        _check(
            isinstance(self.ckpt_every, int) and self.ckpt_every > 0,
            f"train.ckpt_every must be a positive integer, got {self.ckpt_every!r}",
        )
        _check(
            self.run_chunk is None or (isinstance(self.run_chunk, int) and self.run_chunk > 0),
            f"train.run_chunk must be a positive integer or null (automatic), got {self.run_chunk!r}",
        )
        _check(
            self.microbatch is None or (isinstance(self.microbatch, int) and self.microbatch > 0
                                        and self.batch % self.microbatch == 0),
            f"train.microbatch must be null (automatic) or a positive divisor of train.batch ({self.batch}), "
            f"got {self.microbatch!r}",
        )

    def _eval_grid(self) -> list[range]:
        """The schedule's grid as ranges (lazy: its size is checked before any list is built)."""
        grid, s = [], 0
        for every, until in self.eval_schedule:
            end = self.steps if until == 0 else min(until, self.steps)
            r = range(s + every, end + 1, every)
            grid.append(r)
            s = r[-1] if r else s
            if end >= self.steps:
                break
        return grid

    def eval_steps(self) -> list[int]:
        """Steps at which metrics are recorded: 0, the schedule's grid, and the last step."""
        steps = [0] + [s for r in self._eval_grid() for s in r]
        if steps[-1] != self.steps:
            steps.append(self.steps)
        return steps


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _check(
            self.task.seq_len <= self.model.max_positions or self.model.position != "learned",
            f"task.seq_len ({self.task.seq_len}) is longer than the position table "
            f"(model.max_positions = {self.model.max_positions}); raise --max-positions or shorten --seq-len",
        )
        _check(
            self.model.vocab_size >= 67,
            f"model.vocab_size ({self.model.vocab_size}) must hold the BB vocabulary (67 tokens)",
        )
        _check(
            self.task.n_triggers < 65,
            f"task.n_triggers ({self.task.n_triggers}) must be below the 65 characters of the vocabulary",
        )

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.train.lrs) or (self.optim.learning_rate,)

    def runs(self) -> list[tuple[int, float]]:
        """(seed, lr) of every run in the vmapped batch, seed-major."""
        return [(s, lr) for s in self.train.seeds for lr in self.learning_rates]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a mapping with sections model/task/optim/train, got {type(d).__name__}")
        unknown = set(d) - {"model", "task", "optim", "train"}
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {sorted(unknown)}; allowed: model, task, optim, train"
            )
        parts = {}
        for name, sub in (("model", ModelConfig), ("task", TaskConfig), ("optim", OptimConfig), ("train", TrainConfig)):
            parts[name] = section_from_dict(sub, d.get(name, {}) or {}, name)
        return cls(**parts)

    def replace(self, **sections: dict[str, Any]) -> "RunConfig":
        """Copy with some fields of some sections replaced, e.g. replace(model={'n_layers': 3})."""
        new = {}
        for name in ("model", "task", "optim", "train"):
            cur = getattr(self, name)
            upd = sections.pop(name, None) or {}
            merged = cur.merged_fields(upd) if name == "model" else {**dataclasses.asdict(cur), **upd}
            new[name] = section_from_dict(type(cur), merged, name)
        if sections:
            raise ConfigError(f"unknown config section(s) {sorted(sections)}")
        return RunConfig(**new)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce JSON/YAML values (lists, ints for floats) to the dataclass field type."""
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else section_from_dict(tp, value, where)
    s = str(tp)
    if value is None:
        if "None" in s:
            return None
        raise ConfigError(f"{where} may not be null")
    if s.startswith("tuple[tuple"):
        try:
            return tuple(tuple(int(x) for x in pair) for pair in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of [every, until] integer pairs, got {value!r}") from None
    if s.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = float if "float" in s else str if "str" in s else int
        try:
            out = []
            for x in value:
                if inner is int and (isinstance(x, bool) or (isinstance(x, float) and not x.is_integer())):
                    raise ValueError
                out.append(inner(x))
            return tuple(out)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of {inner.__name__}s, got {value!r}") from None
    if "bool" in s:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if "float" in s:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        return float(value)
    if "int" in s:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if "str" in s:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def section_from_dict(cls: type, d: dict[str, Any], section: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
    if cls is ModelConfig:
        d = renamed_model_fields(d)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"unknown field(s) {sorted(unknown)} in config section {section!r}; allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def _unique_keys(pairs: list[tuple]) -> dict:
    """A mapping of a config file, refusing a key given twice (the parsers keep the last one silently)."""
    keys = [k for k, _ in pairs]
    twice = sorted({str(k) for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key(s) {twice} given twice in one mapping; keep one")
    return dict(pairs)


def _yaml_unique_keys(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)  # merge keys (<<) first
            _unique_keys([(self.construct_object(k, deep=True), None) for k, _ in node.value])
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=Loader)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON run config into a dict (validated later by RunConfig.from_dict)."""
    p = Path(path)
    text = read_text(p, "config file")
    try:
        if p.suffix == ".json":
            d = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            d = _yaml_unique_keys(text)
    except Exception as e:  # the parsers' own messages name the line
        why = str(e).splitlines()[0]
        why = "an integer of more than 4,300 digits" if "int_max_str_digits" in why else why
        raise ConfigError(f"config file {str(p)!r} is malformed: {why}") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping with sections model/task/optim/train")
    return d


def cpu_preset() -> RunConfig:
    """The embedded default: a 1-layer softmax model, Adam, 4 vmapped seeds, minutes on 2 CPU cores."""
    return RunConfig(
        model=ModelConfig(d_model=64, max_positions=64),
        task=TaskConfig(seq_len=64),
        optim=OptimConfig(name="adam", lr=4e-3),
        train=TrainConfig(steps=5000, batch=64, seeds=(0, 1, 2, 3), eval_batch=128, ckpt_every=1000),
    )


def paper_preset() -> RunConfig:
    """Reference settings of SPEC §2 (1 layer, d 256, batch 512, sequence 256, 10k steps)."""
    return RunConfig()


def paper_learning_rate(cfg: RunConfig) -> float | None:
    """The learning rate the paper used for this model where it differs from the optimiser's default:
    3e-3 for the 1-layer ReLU-attention model under Adam (its 3-layer one used the default 3e-4)."""
    m = cfg.model
    if m.attention == "relu" and m.n_layers == 1 and cfg.optim.name == "adam":
        return PAPER_RELU_1LAYER_LR
    return None


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


def config_diffs(saved: dict, cfg: RunConfig) -> list[str]:
    """Fields that differ between a saved config and `cfg`, ignoring those a resumed run may change."""
    now = json.loads(json.dumps(cfg.to_dict()))
    try:  # fields added since the folder was written take their defaults; former names are renamed
        saved = RunConfig.from_dict(saved).to_dict()
    except ConfigError:
        pass
    saved = json.loads(json.dumps(saved))
    diffs = []
    for sec in now:
        for k, v in now[sec].items():
            if sec == "train" and k in ("steps", "ckpt_every", "run_chunk", "microbatch"):
                continue
            old = saved.get(sec, {}).get(k)
            if sec == "train" and k == "precision" and old is None:
                old = "highest"  # folders written before the field existed trained at full float32 on CPU
            if v != old:
                diffs.append(f"{sec}.{k}: {old!r} -> {v!r}")
    return diffs
