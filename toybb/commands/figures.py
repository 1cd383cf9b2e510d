"""`toybb figures --out DIR [--scale cpu|paper] [--only NAME,...] [--runs DIR] [--list]`: the figure gallery."""

from __future__ import annotations

import time

from toybb.cliargs import STRS, add_list
from toybb.gallery import FIGURES, make_figures


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="regenerate the figure gallery (trains the runs it needs, cached)",
                              description="Draw every registered figure (or --only some) into --out, training "
                              "the runs they need into --runs (reused when finished).")
    p.add_argument("--out", metavar="DIR", default="figures", help="where the PNGs go (default: figures)")
    p.add_argument("--scale", default="cpu", help="cpu (minutes on 2 cores) or paper (SPEC §2, for a GPU)")
    add_list(p, "--only", STRS, None, "only these figures (see --list)", metavar="NAME")
    p.add_argument("--runs", metavar="DIR", help="run cache (default: runs/figures)")
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    if args.list:
        for f in FIGURES.values():
            print(f"{f.name}: {f.caption}")
        return 0
    t0 = time.perf_counter()
    paths = make_figures(args.out, args.scale, args.only, args.runs, progress=not args.no_progress)
    print(f"wrote {len(paths)} figure(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
