"""Sweeps: many toy runs from one file, grouped into vmapped programs, resumable, one tidy table.

A sweep file (YAML/JSON) holds a `base` config (`preset` name and/or sections model/task/optim/train),
then `grid:` (cartesian product) and/or `list:` (explicit settings) over dotted keys (`optim.lr`,
`model.n_layers`, ...) and `seeds` (top level: an int N = seeds 0..N-1, or a list; inside a grid or
list setting: an int is one seed, a list several). Every (setting, seed) is one run. Runs whose configs differ only in seed and learning rate form a group: one `Trainer` (one
compiled program, runs vmapped and sharded over the local devices), one run folder
`DIR/groups/<name>/` with the Trainer's config.json, metrics.csv and checkpoint, and a `done` marker
once finished. A rerun skips done groups and resumes the others from their checkpoints.
`DIR/results.csv` has one row per run x evaluation step.

Multi-host (`--distributed`): `jax.distributed.initialize()` (arguments from SLURM / TPU
environment), then process p trains groups p, p + P, ... on its local devices; process 0 waits for
every group's `done` marker on the shared file system and alone writes the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toybb.config import LIMITS, PRESETS, RunConfig, check_count, load_config_file
from toybb.errors import ConfigError
from toybb.records import (atomic_write, folder_lock, load_metrics, package_versions, read_json, remove_temporaries,
                           write_csv_rows)
from toybb.train.loop import train
from toybb.train.trainer import Trainer, trainer_key

SECTIONS = ("model", "task", "optim", "train")
DONE = "done"
LABEL = "label"  # a setting's name in the results (no config key)


@dataclass
class Run:
    run_id: str
    setting: dict[str, Any]  # swept key -> value
    seed: int
    cfg: RunConfig  # the config of this run alone (train.seeds = (seed,))


@dataclass
class Group:
    name: str
    cfg: RunConfig  # seeds x lrs vmapped in one Trainer
    runs: dict[tuple[int, float], Run] = field(default_factory=dict)  # (seed, lr) -> run

    @property
    def n_runs(self) -> int:
        return len(self.runs)


@dataclass
class SweepPlan:
    keys: list[str]  # swept keys, in file order
    runs: list[Run]
    groups: list[Group]
    spec: dict[str, Any]


# ---- parsing -------------------------------------------------------------------------------------
def _set_dotted(upd: dict[str, dict], key: str, value: Any) -> None:
    sec, _, name = key.partition(".")
    if sec not in SECTIONS or not name or "." in name:
        raise ConfigError(f"unknown sweep key {key!r}: use section.field with a section of {', '.join(SECTIONS)} "
                          "(e.g. optim.lr, model.n_layers) or `seeds`")
    upd.setdefault(sec, {})[name] = value


def _seed_list(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number of seeds or a list of seeds, got {value!r}")
    if isinstance(value, int):
        return list(range(check_count(value, f"{where} (a number of seeds)", "runs")))
    if isinstance(value, (list, tuple)) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                          for s in value):
        for s in value:
            check_count(s, f"{where}: every seed", "seed", low=0)
        return list(value)
    raise ConfigError(f"{where} must be a positive int N (seeds 0..N-1) or a non-empty list of seeds >= 0, got {value!r}")


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    try:
        spec = load_config_file(path)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config file", "sweep file").replace(
            "with sections model/task/optim/train", "with base, grid and/or list")) from None
    return spec


def plan_sweep(spec: dict[str, Any], where: str = "sweep file") -> SweepPlan:
    """Expand a sweep spec into runs and groups; validates everything (no training, no compilation)."""
    unknown = set(spec) - {"base", "grid", "list", "seeds"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: base, grid, list, seeds")
    if "grid" not in spec and "list" not in spec:
        raise ConfigError(f"{where} needs a `grid:` (cartesian product) or a `list:` of settings")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: `base` must be a mapping (preset and/or sections), got {type(base).__name__}")
    base = dict(base)
    preset = base.pop("preset", "cpu")
    if preset not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    bad = set(base) - set(SECTIONS)
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {sorted(bad)} in base; allowed: preset, {', '.join(SECTIONS)}")
    base_cfg = PRESETS[preset]().replace(**{s: base.get(s) or {} for s in SECTIONS})
    default_seeds = _seed_list(spec["seeds"], f"{where}: seeds") if "seeds" in spec else list(base_cfg.train.seeds)

    grid = spec.get("grid")
    settings: list[dict[str, Any]] = [{}]
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{where}: `grid` must be a non-empty mapping of key -> list of values")
        for k, vals in grid.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{where}: grid key {k!r} needs a non-empty list of values, got {vals!r}")
    n_grid = math.prod(len(v) for v in grid.values()) if grid is not None else 1
    if "list" in spec:
        lst = spec["list"]
        if not isinstance(lst, list) or not lst or not all(isinstance(x, dict) for x in lst):
            raise ConfigError(f"{where}: `list` must be a non-empty list of mappings key -> value")
    n = n_grid * (len(spec["list"]) if "list" in spec else 1) * len(default_seeds)
    if n > LIMITS["sweep_runs"]:  # counted before any setting is built
        raise ConfigError(f"{where}: {n:,} runs (settings x seeds); at most {LIMITS['sweep_runs']:,} in one sweep: "
                          "split it into several sweep files")
    if grid is not None:
        settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if "list" in spec:
        settings = [{**item, **s} for item in lst for s in settings]

    keys: list[str] = []
    for s in settings:
        for k in s:
            if k not in keys:
                keys.append(k)
    runs: list[Run] = []
    seen: dict[str, str] = {}
    for s in settings:
        upd: dict[str, dict] = {}
        seeds = default_seeds
        for k, v in s.items():
            if k in ("seeds", "seed", "train.seeds"):  # in a setting, an int is one seed
                seeds = _seed_list([v] if isinstance(v, int) and not isinstance(v, bool) else v, f"{where}: {k}")
                continue
            if k == "train.lrs":
                raise ConfigError(f"{where}: sweep optim.lr instead of train.lrs (each learning rate is a run)")
            if k == LABEL:
                continue
            _set_dotted(upd, k, v)
        try:
            cfg = base_cfg.replace(**upd)
        except ConfigError as e:
            raise ConfigError(f"{where}: setting {s}: {e}") from None
        for seed in seeds:
            rc = cfg.replace(train={"seeds": (seed,), "lrs": ()})
            ident = json.dumps(rc.to_dict(), sort_keys=True)
            if ident in seen:
                raise ConfigError(f"{where}: settings {s} and {seen[ident]} give the same run (seed {seed}); remove one")
            seen[ident] = str(s)
            runs.append(Run(f"r{len(runs):04d}", s, seed, rc))
    return SweepPlan(keys, runs, group_runs(runs), spec)


def _group_key(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d["train"]["seeds"], d["train"]["lrs"], d["optim"]["lr"] = [], [], None
    return json.dumps(d, sort_keys=True)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs that differ only in seed and learning rate share a group (seeds x lrs vmapped); a group
    whose (seed, lr) pairs are not a full product is split per learning rate."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(_group_key(r.cfg), []).append(r)
    groups: list[Group] = []
    for members in by.values():
        pairs = {(r.seed, r.cfg.learning_rates[0]): r for r in members}
        seeds = sorted({s for s, _ in pairs})
        lrs = sorted({lr for _, lr in pairs})
        parts = [lrs] if len(pairs) == len(seeds) * len(lrs) else [[lr] for lr in lrs]
        for part in parts:
            sub = {k: r for k, r in pairs.items() if k[1] in part}
            sd = sorted({s for s, _ in sub})
            cfg = members[0].cfg
            cfg = (cfg.replace(train={"seeds": tuple(sd), "lrs": tuple(part)}) if len(part) > 1
                   else cfg.replace(optim={"lr": part[0]}, train={"seeds": tuple(sd), "lrs": ()}))
            # the (seed, lr) order of the Trainer's run axis
            ordered = {(s, lr): sub[(s, lr)] for s, lr in cfg.runs()}
            h = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
            groups.append(Group(f"g{len(groups):03d}_{h}", cfg, ordered))
    return groups


# ---- running ---------------------------------------------------------------------------------------
def plan_doc(out: Path, plan: SweepPlan) -> dict:
    """The sweep.json document of `plan`; checks that `out` holds no other sweep (before any training)."""
    path = out / "sweep.json"
    doc = {"spec": plan.spec, "keys": plan.keys,
           "groups": {g.name: [r.run_id for r in g.runs.values()] for g in plan.groups},
           "runs": [{"run_id": r.run_id, "setting": r.setting, "seed": r.seed} for r in plan.runs]}
    if path.exists():
        old = read_json(path, "sweep record", "delete it (the groups' run folders are kept) or use another --out")
        if not isinstance(old, dict) or {k: old.get(k) for k in ("groups", "runs")} != {k: json.loads(json.dumps(doc[k])) for k in ("groups", "runs")}:
            raise ConfigError(f"{out} holds another sweep (its sweep.json differs); use another --out or delete it")
    return doc


def _write_plan(out: Path, plan: SweepPlan) -> None:
    path = out / "sweep.json"
    doc = plan_doc(out, plan)
    doc["versions"] = package_versions()
    doc["command"] = " ".join(sys.argv)
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2)), mode="w")


def run_sweep(
    plan: SweepPlan,
    out_dir: str | Path,
    *,
    progress: bool = True,
    write_figure: bool = True,
    trainers: dict | None = None,
    after_group: Callable[[Group], None] | None = None,
    process: tuple[int, int] = (0, 1),
    wait_timeout: float = 7 * 24 * 3600.0,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path | None:
    """Train every group not yet done (resuming from checkpoints) and write `out_dir/results.csv`.

    trainers: a dict reused between calls to share compiled programs (key: config without steps).
    after_group: called after each finished group (tests use it to simulate an interruption).
    process: (index, count) of this process in a multi-host sweep; it trains groups index::count and
      only process 0 writes the table (after every group's `done` marker exists). Returns its path.
    """
    out = Path(out_dir)
    pid, pcount = process
    with contextlib.ExitStack() as held:
        if pid == 0:  # one writer of the sweep folder; the other processes write only their groups (locked by train)
            held.enter_context(folder_lock(out))
            remove_temporaries(out)
            _write_plan(out, plan)
        out.mkdir(parents=True, exist_ok=True)
        return _run_groups(plan, out, progress, write_figure, trainers, after_group, process, wait_timeout, log)


def _run_groups(plan: SweepPlan, out: Path, progress: bool, write_figure: bool, trainers: dict | None,
                after_group: Callable[[Group], None] | None, process: tuple[int, int], wait_timeout: float,
                log: Callable[[str], None]) -> Path | None:
    pid, pcount = process
    trainers = {} if trainers is None else trainers
    total = len(plan.groups)
    for gi, g in enumerate(plan.groups):
        gdir = out / "groups" / g.name
        if gi % pcount != pid:
            continue
        label = ", ".join(f"{k}={v}" for k, v in next(iter(g.runs.values())).setting.items()
                          if k not in ("optim.lr", "seeds", "seed"))
        if (gdir / DONE).exists():
            log(f"[group {gi + 1}/{total}] {g.name}: done already ({g.n_runs} runs)")
            continue
        log(f"[group {gi + 1}/{total}] {g.name}: {g.n_runs} runs vmapped{' (' + label + ')' if label else ''}")
        key = trainer_key(g.cfg)
        if key not in trainers:
            trainers[key] = Trainer(g.cfg)
        res = train(g.cfg, gdir, progress=progress, trainer=trainers[key], write_figure=write_figure)
        doc = {"wall_seconds": round(res.wall_seconds, 3), "runs": [r.run_id for r in g.runs.values()],
               "steps": res.steps[-1]}
        atomic_write(gdir / DONE, lambda f: f.write(json.dumps(doc)), mode="w")
        log(f"[group {gi + 1}/{total}] {g.name}: done in {res.wall_seconds:.1f} s")
        if after_group is not None:
            after_group(g)
    if pid != 0:
        return None
    t0 = time.time()
    while not all((out / "groups" / g.name / DONE).exists() for g in plan.groups):
        if time.time() - t0 > wait_timeout:
            raise ConfigError(f"timed out waiting for the other processes' groups in {out}/groups")
        time.sleep(5.0)
    path = out / "results.csv"
    rows, cols = collect_results(plan, out)
    write_csv_rows(path, rows, cols)
    return path


def collect_results(plan: SweepPlan, out: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows (run x step) of every group's metrics.csv, labelled with run id, group and swept keys."""
    rows: list[dict[str, str]] = []
    metric_cols: list[str] = []
    for g in plan.groups:
        _, mrows = load_metrics(out / "groups" / g.name)
        by_run = {(int(s), float(lr)): r for (s, lr), r in g.runs.items()}
        for m in mrows:
            run = by_run[(int(m["seed"]), float(m["lr"]))]
            for c in m:
                if c not in ("step", "seed", "lr") and c not in metric_cols:
                    metric_cols.append(c)
            row = {"run_id": run.run_id, "group": g.name}
            row.update({k: _fmt(run.setting.get(k, "")) for k in plan.keys if k not in ("seeds", "seed")})
            row.update({"seed": m["seed"], "lr": m["lr"], "step": m["step"]})
            row.update({c: v for c, v in m.items() if c not in ("step", "seed", "lr")})
            rows.append(row)
    rows.sort(key=lambda r: (r["run_id"], int(r["step"])))
    keys = [k for k in plan.keys if k not in ("seeds", "seed")]
    return rows, ["run_id", "group", *keys, "seed", "lr", "step", *metric_cols]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
