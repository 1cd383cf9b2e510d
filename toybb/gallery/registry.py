"""The figure registry, the cache of trained runs a figure reads (`FigureContext`) and `make_figures`.

A figure module adds a figure with

    @register_figure("name", "one sentence of what it shows")
    def _(ctx: FigureContext) -> list[Path]: ...
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toybb.config import RunConfig
from toybb.errors import ConfigError
from toybb.gallery.configs import (SCALES, base_config, equal_support_table, peaks_sweep, theory_trained_configs,
                                   variant_configs)
from toybb.train.loop import train
from toybb.train.runs import is_finished
from toybb.train.sweep import plan_sweep, run_sweep


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    make: Callable[["FigureContext"], list[Path]]


FIGURES: dict[str, Figure] = {}


def register_figure(name: str, caption: str):
    def deco(fn):
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = Figure(name, caption, fn)
        return fn
    return deco


@dataclass
class FigureContext:
    out: Path
    scale: str = "cpu"
    runs: Path = Path("runs/figures")
    progress: bool = True
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)

    def _trained(self, cfg: RunConfig, d: Path) -> Path:
        """Run folder `d` of `cfg`, trained (or resumed) unless finished in the cache."""
        if not is_finished(d, cfg):
            self.log(f"training {d} ({len(cfg.runs())} runs, {cfg.train.steps} steps)")
            t0 = time.perf_counter()
            train(cfg, d, progress=self.progress)
            self.log(f"trained {d} in {time.perf_counter() - t0:.0f} s")
        return d

    def one_layer(self) -> Path:
        """The 1-layer softmax Adam run (trained unless finished in the cache)."""
        return self._trained(base_config(self.scale), self.runs / f"{self.scale}_1layer")

    def variant(self, name: str) -> Path:
        """One run of `variant_configs` (trained unless finished in the cache)."""
        cfgs = variant_configs(self.scale)
        if name not in cfgs:
            raise ConfigError(f"unknown variant run {name!r}; known: {', '.join(cfgs)}")
        return self._trained(cfgs[name], self.runs / f"{self.scale}_variant_{name}")

    def theory_run(self, name: str) -> Path:
        """One run of `theory_trained_configs` (trained, or resumed, unless finished in the cache)."""
        tables = self.runs / "tables"
        if name.startswith("simple_equal_sgd"):
            equal_support_table(tables)
        cfgs = theory_trained_configs(self.scale, tables)
        if name not in cfgs:
            raise ConfigError(f"unknown theory run {name!r}; known: {', '.join(cfgs)}")
        return self._trained(cfgs[name], self.runs / f"{self.scale}_theory_{name}")

    def peaks(self) -> tuple[Path, dict[str, Path]]:
        """The 3-layer sweep: (its folder, {label: group folder})."""
        spec = peaks_sweep(self.scale)
        labels = [s.pop("label") for s in spec["list"]]
        plan = plan_sweep(spec, "peaks sweep")
        d = self.runs / f"{self.scale}_3layer_peaks"
        if not getattr(self, "_peaks_checked", False):  # finished groups are skipped: cheap when cached
            run_sweep(plan, d, progress=self.progress, log=lambda s: None if "done already" in s else self.log(s))
            self._peaks_checked = True
        folders = {}
        for label, g in zip(labels, plan.groups):
            folders[label] = d / "groups" / g.name
        return d, folders

    def cached(self, run_name: str, files: dict[str, str], produce: Callable[[Path], None]) -> list[Path]:
        """Copy `files` ({file in the run folder: gallery file name}) of the cached run folder `run_name`,
        made by `produce(folder)` unless that folder already holds every one of them."""
        d = self.runs / f"{self.scale}_{run_name}"
        if not all((d / f).is_file() for f in files):
            self.log(f"running {run_name} into {d}")
            produce(d)
        self.out.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copyfile(d / src, self.out / dst)) for src, dst in files.items()]


def make_figures(out: str | Path, scale: str = "cpu", only: list[str] | None = None, runs: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Path]:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    names = only or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    ctx = FigureContext(Path(out), scale, Path(runs) if runs else Path("runs/figures"), progress, log)
    paths = []
    for n in names:
        t0 = time.perf_counter()
        got = FIGURES[n].make(ctx)
        for p in got:
            log(f"{n}: wrote {p} ({time.perf_counter() - t0:.1f} s)")
        paths += got
    return paths
