"""`toybb mitigations`: the baseline and every mitigation trained on the BB task side by side, one table
and one figure (`toybb.train.mitigations`)."""

from __future__ import annotations

from toybb.cliargs import INTS, add_list
from toybb.config import check_count
from toybb.records import out_folder
from toybb.train import mitigations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mitigations", help="train the baseline and every mitigation on the BB task; one table and figure",
        description="Train every row (softmax, relu, sigmoid, sigmoid_norm, softpick, zero_sink, learned_sink, "
        "head_gate, element_gate, clipped, attn_bias, sink_token, sgd, muon) at the 1- and 3-layer scales, "
        "vmapped over seeds and resumable, and write DIR/mitigations.csv, mitigations.md and mitigations.png "
        "(median and min-max over seeds at the last step).")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (one sweep per scale inside)")
    add_list(p, "--rows", lambda t: tuple(x.strip() for x in t.split(",") if x.strip()), None,
             f"mitigations to train (default: all: {', '.join(mitigations.ROWS)})", metavar="NAME,...")
    add_list(p, "--layers", INTS, None, "scales: 1 and/or 3 layers (default: 1,3)", metavar="N,...")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (default: 3)")
    p.add_argument("--steps", type=int, help="training steps (default: 800, the scales' measured size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_mitigations)


def cmd_mitigations(args) -> int:
    check_count(args.seeds, "--seeds", "runs")
    if args.steps is not None:
        check_count(args.steps, "--steps", "steps")
    rows = list(args.rows or mitigations.ROWS)
    layers = list(args.layers or sorted(mitigations.SCALES))
    out = out_folder(args.out)
    table = mitigations.run(out, rows, layers, args.seeds, args.steps, progress=not args.no_progress)
    print(mitigations.markdown(table))
    print(f"wrote {out / 'mitigations.csv'}, {out / 'mitigations.md'}, {out / 'mitigations.png'}")
    return 0
