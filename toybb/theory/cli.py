"""`toybb theory [--plot DIR] [--quick]`: each result of theory/ with its predicted and simulated numbers.
`toybb theory --trained RUN_DIR [--trained RUN_DIR2 ...] [--plot DIR]`: the same rates fitted to trained
runs of `toybb train` (theory/07_trained_fits.md), predicted vs trained per seed.

Registered by toybb/cli.py through `register(subparsers)`; also runnable as `python -m toybb.theory.cli`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from toybb.cliargs import STRS, Parser, add_list
from toybb.config import check_count
from toybb.errors import ConfigError, ToybbError
from toybb.theory import experiment as E
from toybb.theory import statements as S
from toybb.theory.plots import write_figures


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "theory", help="check the reduced-model theory (sink, drain, residual peak) by simulation",
        description="Simulate each statement of theory/ and print predicted vs simulated rates; "
        "--plot DIR also writes figures of predicted vs simulated curves.")
    p.add_argument("--plot", metavar="DIR", help="write figures (PNG) of predicted vs simulated curves to DIR")
    p.add_argument("--quick", action="store_true", help="10x fewer steps for the rate statement (less accurate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random instances (default 0)")
    add_list(p, "--trained", STRS, None, "fit the predicted rates to run folders of `toybb train` instead of "
             "simulating; prints predicted vs trained (median [min, max] over seeds)", metavar="RUN_DIR")
    p.add_argument("--decades", type=float, default=1.0,
                   help="with --trained: fit over the last DECADES decade(s) of steps (default 1)")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def run_trained(args, plot_dir: Path | None) -> int:
    if not args.decades > 0:
        raise ConfigError(f"--decades must be positive, got {args.decades}")
    trajs = [E.load_trajectory(d) for d in args.trained]
    rows = E.fit_table(trajs, decades=args.decades)
    print(E.format_table(rows))
    if plot_dir is not None:
        path = E.plot_overlay(trajs, plot_dir / "theory_trained.png", decades=args.decades)
        print(f"wrote {path}")
    return 0


def run(args) -> int:
    check_count(args.seed, "--seed", "seed", low=0)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        if plot_dir.exists() and not plot_dir.is_dir():
            raise ConfigError(f"--plot {plot_dir} exists and is not a folder")
        plot_dir.mkdir(parents=True, exist_ok=True)
    if getattr(args, "trained", None):
        return run_trained(args, plot_dir)
    results = []
    for check in S.ALL_CHECKS:
        kw = {"seed": args.seed} if "seed" in check.__code__.co_varnames else {}
        if check is S.check_rates and args.quick:
            kw["steps"] = 100_000
        t0 = time.perf_counter()
        r = check(**kw)
        dt = time.perf_counter() - t0
        results.append(r)
        print(f"[{'ok' if r['ok'] else 'FAIL'}] {r['statement']}  ({r['doc']}, {dt:.1f} s)")
        for q, pred, sim in r["rows"]:
            print(f"      {q}: predicted {_fmt(pred)}, simulated {_fmt(sim)}")
    if plot_dir is not None:
        for path in write_figures(results, plot_dir):
            print(f"wrote {path}")
    n_fail = sum(not r["ok"] for r in results)
    if n_fail:
        print(f"{n_fail} statement(s) not confirmed by simulation", file=sys.stderr)
    return 1 if n_fail else 0


def main(argv=None) -> int:
    parser = Parser(prog="toybb")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["theory", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ToybbError as e:
        print(f"toybb theory: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
