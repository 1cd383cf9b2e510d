"""`toybb series CKPT [CKPT ...] --out DIR [--steps S1,S2,...]`: probes of a series of checkpoints against step."""

from __future__ import annotations

from toybb.cliargs import INTS, add_list, add_text
from toybb.series import FIXED_TEXT, run_series
from toybb.texts import read_source


def register(subparsers) -> None:
    p = subparsers.add_parser("series", help="probe an ordered series of checkpoints and plot metrics vs step",
                              description="Run the sink/drain/residual probes on each checkpoint (toy run folders "
                              "or checkpoint.npz, Hugging Face directories, .gguf files) and plot them against the "
                              "training step; writes DIR/series.csv and DIR/series.png.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="checkpoints in training order: toy run folders or "
                   "checkpoint.npz, Hugging Face model directories, .gguf files; or one `toybb pretrain` folder "
                   "(its series)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (series.csv, series.png)")
    add_list(p, "--steps", INTS, None, "steps, one per checkpoint (default: parsed from the paths); of a pretrain "
             "folder, the checkpoints of its series to probe (default: all)", metavar="S,S,...")
    add_text(p, None, help="LLM probe text SOURCE (a file, folder, .jsonl or a built-in corpus such as "
             "pydoc or pride; default: a fixed English paragraph)")
    p.set_defaults(func=cmd_series)


def cmd_series(args) -> int:
    steps = list(args.steps) if args.steps else None
    text = FIXED_TEXT
    if args.text:
        text = read_source(args.text, "--text")
    csv_path, png = run_series(args.ckpts, args.out, steps, text)
    print(f"wrote {csv_path} and {png}")
    return 0
