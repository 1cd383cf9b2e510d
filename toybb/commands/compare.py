"""`toybb compare RUN [--reference NAME]`: a run's seeds side by side with the authors' trajectory."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from toybb.cliargs import INTS, add_list
from toybb.errors import ConfigError
from toybb.records import out_folder
from toybb.reference import REFERENCES
from toybb.reference.compare import __doc__ as COMPARE_DOC
from toybb.reference.compare import compare_run, comparison_rows, format_table, plot_comparison, write_csv


def cmd_compare(args) -> int:
    run = Path(args.run[0])
    out = out_folder(args.out) if args.out else run
    steps = None
    if args.steps:
        steps = np.array(sorted(set(args.steps)))
    warnings: list[str] = []
    comparisons = compare_run(args.run, args.reference, warnings)
    rows = [r for c in comparisons for r in comparison_rows(c)]
    if not rows:
        raise ConfigError(f"run {run} and the reference share no step where both have a value")
    for w in warnings:  # after every check, so an error stays one line
        print(w, file=sys.stderr)
    for c in comparisons:
        sys.stdout.write(format_table(c, [r for r in rows if r["lr"] == c.lr], steps))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "compare.csv")
    plot_comparison(comparisons, out / "compare.png", title=f"toybb seeds (median, band min-max) vs "
                    f"{comparisons[0].label} (dashed)", model=", ".join(args.run))
    print(f"wrote {out / 'compare.csv'} and {out / 'compare.png'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare a run's seeds with the authors' trajectory (built-in references)",
                       description=COMPARE_DOC.split("\n\n")[1])
    p.add_argument("run", metavar="RUN", nargs="+", help="run folder written by `toybb train`; several folders of "
                   "one configuration (seeds trained as separate jobs) pool their seeds")
    p.add_argument("--reference", metavar="NAME", help=f"{', '.join(REFERENCES)}, or a CSV with a step column "
                   "and toybb metric columns (default: the reference of the run's configuration)")
    add_list(p, "--steps", INTS, None, "steps of the printed table (default: about 8 round ones; compare.csv holds "
             "every common step)", metavar="S,S,...")
    p.add_argument("--out", metavar="DIR", help="folder for compare.csv and compare.png (default: RUN)")
    p.set_defaults(func=cmd_compare)
