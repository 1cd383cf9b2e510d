"""`toybb train`, `toybb plot` and `toybb sweep`: train toy models, draw a run's dynamics, run a sweep file.

Bad input gives one line on stderr and exit code 2; a diverged run exits with 3 (see `toybb.errors`).
"""

from __future__ import annotations

import json
from pathlib import Path

from toybb.cliargs import FLOATS, INTS, STRS, add_distributed, add_list, distributed_process
from toybb.config import DEFAULT_LR, PRECISIONS, PRESETS, RunConfig, check_count, load_config_file, paper_learning_rate
from toybb.errors import ConfigError
from toybb.plot import plot_dynamics, plot_runs
from toybb.records import figure_path, finite, out_folder
from toybb.train.loop import train
from toybb.train.memory import check_memory, estimate_group_bytes
from toybb.train.runs import check_run_folder, is_finished
from toybb.train.sweep import load_sweep_file, plan_doc, plan_sweep, run_sweep


def _layer_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    return INTS(text)


def _lr(lr) -> str:
    own = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    return f"the optimizer's own ({own}; Adam 3e-3 for a 1-layer ReLU-attention model)" if lr is None else f"{lr:g}"


def _preset_default(section: str, field: str, show=str) -> str:
    """'(default: 64)', or '(default: 64 with --preset cpu, 256 with paper)' where the presets differ: the
    presets' real values in --help."""
    vals = {name: show(getattr(getattr(make(), section), field)) for name, make in PRESETS.items()}
    if len(set(vals.values())) == 1:
        return f"(default: {next(iter(vals.values()))})"
    first, *others = vals.items()
    return f"(default: {first[1]} with --preset {first[0]}, " + ", ".join(f"{v} with {n}" for n, v in others) + ")"


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train toy models on the Bigram-Backcopy task and record the dynamics",
        description="Train (seeds x learning rates, vmapped) and write config.json, metrics.csv, checkpoint, "
        "active_dormant.csv, interventions.csv, summary.json and dynamics.png to --out. Settings come from "
        "--preset (default: cpu), then --config FILE, then the flags. A folder with a checkpoint is resumed.",
    )
    p.add_argument("--preset", default="cpu", help="cpu (minutes on 2 cores) or paper (SPEC §2)")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON with sections model, task, optim, train")
    p.add_argument("--out", metavar="DIR", default="runs/default", help="run folder")
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="transformer (default) or simple (the reduced SimpleModel of SPEC §4)")
    g.add_argument("--layers", type=int, dest="n_layers", help=f"number of layers {_preset_default('model', 'n_layers')}")
    g.add_argument("--heads", type=int, dest="n_heads", help=f"attention heads per layer {_preset_default('model', 'n_heads')}")
    g.add_argument("--kv-heads", type=int, dest="n_kv_heads",
                   help=f"key/value heads per layer, a divisor of --heads {_preset_default('model', 'n_kv_heads')}")
    g.add_argument("--d-model", type=int, dest="d_model", help=f"residual width {_preset_default('model', 'd_model')}")
    g.add_argument("--mlp-dim", "--d-mlp", type=int, dest="mlp_dim",
                   help=f"MLP hidden width, formerly --d-mlp {_preset_default('model', 'mlp_dim')}")
    g.add_argument("--max-positions", "--max-len", type=int, dest="max_positions",
                   help=f"size of the position table, grown to --seq-len; formerly --max-len {_preset_default('model', 'max_positions')}")
    g.add_argument("--attention", help="softmax (default), relu (the paper's; with --preset paper and no --lr a "
                   "1-layer ReLU model trains at the paper's 3e-3, its 3-layer ReLU run used the default 3e-4), "
                   "sigmoid, sigmoid_norm or softpick (README, mitigations)")
    g.add_argument("--attn-sink", dest="attn_sink", help="none (default), zero (softmax plus a zero logit) or "
                   "learned (a learned sink logit per head)")
    g.add_argument("--attn-gate", dest="attn_gate", help="none (default), head or element: a sigmoid gate on "
                   "each head's output from the layer input")
    add_list(g, "--softmax-clip", FLOATS, None, "clipped softmax GAMMA,ZETA (gamma <= 0, zeta >= 1)",
             dest="softmax_clip", metavar="GAMMA,ZETA")
    g.add_argument("--sigmoid-bias", type=float, dest="sigmoid_bias",
                   help="b of sigmoid attention, sigmoid(s + b) (default 0)")
    g.add_argument("--position", help=f"learned or none {_preset_default('model', 'position')}")
    add_list(g, "--no-attention", _layer_list, None, "layers without attention, e.g. 0 or 0,2; none for no layer",
             dest="no_attention", metavar="LAYERS")
    add_list(g, "--no-mlp", _layer_list, None, "layers without MLP", dest="no_mlp", metavar="LAYERS")
    add_list(g, "--linear-mlp", _layer_list, None, "layers whose MLP has no nonlinearity", dest="linear_mlp",
             metavar="LAYERS")
    g.add_argument("--attn-bias", action="store_true", default=None,
                   help="explicit attention bias: learned k', v' per head seen by every query")
    g.add_argument("--sink-token", action="store_true", default=None,
                   help="prepend a learned sink vector to every sequence (captures gain a position 0)")
    g = p.add_argument_group("task")
    g.add_argument("--seq-len", type=int, dest="seq_len", metavar="N",
                   help=f"tokens per training sequence {_preset_default('task', 'seq_len')}")
    g.add_argument("--triggers", type=int, dest="n_triggers", metavar="K",
                   help=f"number of trigger tokens {_preset_default('task', 'n_triggers')}")
    g.add_argument("--no-bos", action="store_true", help="sequences without a BOS token")
    g.add_argument("--table", help="bigram table: tinyshakespeare or a .npz from toybb.task.build_bigram "
                   f"{_preset_default('task', 'table')}")
    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", dest="optim_name", help=f"adam, sgd or muon {_preset_default('optim', 'name')}")
    add_list(g, "--lr", FLOATS, None, f"learning rate; several are vmapped {_preset_default('optim', 'lr', _lr)}")
    g.add_argument("--weight-decay", type=float, dest="weight_decay", help=f"weight decay {_preset_default('optim', 'weight_decay')}")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, help=f"training steps {_preset_default('train', 'steps')}")
    g.add_argument("--batch", type=int, help=f"sequences per step {_preset_default('train', 'batch')}")
    g.add_argument("--seeds", type=int, metavar="N", help="train seeds 0..N-1 in one vmapped program "
                   f"{_preset_default('train', 'seeds', len)}")
    g.add_argument("--eval-batch", type=int, dest="eval_batch",
                   help=f"sequences of the fixed evaluation batch {_preset_default('train', 'eval_batch')}")
    g.add_argument("--eval-every", type=int, dest="eval_every", help="one evaluation grid step (default: "
                   "every 20 steps to 10k, then every 200)")
    g.add_argument("--ckpt-every", type=int, dest="ckpt_every", help=f"steps between checkpoints {_preset_default('train', 'ckpt_every')}")
    g.add_argument("--run-chunk", type=int, dest="run_chunk", metavar="K",
                   help="vmap K runs at a time inside the compiled step (default: automatic; speed only)")
    g.add_argument("--microbatch", type=int, metavar="M",
                   help="sum the gradients of micro-batches of M sequences (a divisor of --batch; default: "
                        "automatic; speed only)")
    g.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="float32 matmul precision (default: highest = full float32 on every backend, as the "
                        "paper; tf32 / bf16 are faster on GPUs and TPUs). Recorded in config.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="no dynamics.png")
    p.set_defaults(func=cmd_train)


def build_config(args) -> "RunConfig":
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[args.preset]()
    file_cfg: dict = {}
    if args.config:
        file_cfg = load_config_file(args.config)
        RunConfig.from_dict(file_cfg)  # validate the file on its own terms first (names unknown fields)
        cfg = cfg.replace(**{sec: file_cfg.get(sec) or {} for sec in ("model", "task", "optim", "train")})
    upd: dict[str, dict] = {"model": {}, "task": {}, "optim": {}, "train": {}}
    for name in ("arch", "n_layers", "n_heads", "n_kv_heads", "d_model", "mlp_dim", "max_positions", "attention", "position",
                 "no_attention", "no_mlp", "linear_mlp", "attn_bias", "sink_token", "attn_sink", "attn_gate",
                 "softmax_clip", "sigmoid_bias"):
        if getattr(args, name) is not None:
            upd["model"][name] = getattr(args, name)
    for name in ("seq_len", "n_triggers", "table"):
        if getattr(args, name) is not None:
            upd["task"][name] = getattr(args, name)
    if args.no_bos:
        upd["task"]["bos"] = False
    if args.optim_name is not None:
        upd["optim"]["name"] = args.optim_name
        if args.lr is None and "lr" not in (file_cfg.get("optim") or {}):
            upd["optim"]["lr"] = None  # the optimiser's own default learning rate
    if args.weight_decay is not None:
        upd["optim"]["weight_decay"] = args.weight_decay
    if args.lr is not None:
        if len(args.lr) == 1:
            upd["optim"]["lr"] = args.lr[0]
            upd["train"]["lrs"] = ()
        else:
            upd["train"]["lrs"] = args.lr
    for name in ("steps", "batch", "eval_batch", "ckpt_every", "run_chunk", "microbatch"):
        if getattr(args, name) is not None:
            upd["train"][name] = getattr(args, name)
    if args.seeds is not None:
        check_count(args.seeds, "--seeds", "runs")
        upd["train"]["seeds"] = tuple(range(args.seeds))
    if args.eval_every is not None:
        upd["train"]["eval_schedule"] = ((args.eval_every, 0),)
    if args.precision is not None:
        upd["train"]["precision"] = args.precision
    # a longer sequence than the preset's position table: grow the table with it unless set explicitly
    seq = upd["task"].get("seq_len")
    if seq is not None:
        check_count(seq, "--seq-len", "seq_len", low=2)
    if seq is not None and args.max_positions is None and seq > cfg.model.max_positions:
        upd["model"]["max_positions"] = seq
    cfg = cfg.replace(**upd)
    lr_given = args.lr is not None or "lr" in (file_cfg.get("optim") or {}) or bool((file_cfg.get("train") or {}).get("lrs"))
    if args.preset == "paper" and not lr_given and not cfg.train.lrs:
        lr = paper_learning_rate(cfg)  # e.g. 3e-3 for the paper's 1-layer ReLU-attention run
        if lr is not None:
            cfg = cfg.replace(optim={"lr": lr})
    return cfg


def cmd_train(args) -> int:
    cfg = build_config(args)
    out = Path(args.out)
    check_run_folder(out, cfg)
    if is_finished(out, cfg):
        print(f"toybb train: {out} already holds this run, finished at step {cfg.train.steps}; nothing to do "
              f"(give --steps above {cfg.train.steps} to train on, or another --out)")
        return 0
    check_memory(cfg, "the run")
    print(f"toybb train: {len(cfg.runs())} run(s) -> {out}", flush=True)
    result = train(cfg, out, progress=not args.no_progress, write_figure=not args.no_plot)
    summary = json.loads((out / "summary.json").read_text())
    for label, fm in _final_medians(summary):
        keys = [k for k in ("loss", "backcopy_risk", "bigram_risk", "sink_attention_l0", "value_drain_l0",
                            "value_others_l0", "residual_peak_l0") if k in fm]
        print(f"step {summary['step']} ({label}): " + ", ".join(f"{k}={fm[k]:.4g}" for k in keys))
    probe = summary.get("active_dormant_probe", {})
    if probe.get("kind") == "truncated":
        print(f"note: the active/dormant probe is cut to the trained length ({probe['length']} tokens), so it is not "
              "the paper's [BOS] + all non-triggers + [v]; train with --seq-len 64 or more for that")
    for key, toks in summary["active_tokens"].items():
        print(f"active tokens {key}: {''.join(toks)!r}")
    print(f"wrote {out} in {result.wall_seconds:.1f} s")
    return 0


def _final_medians(summary: dict) -> list[tuple[str, dict]]:
    """(label, final medians) once, or per learning rate when several were trained."""
    if "final_median" in summary:
        return [("median over runs", summary["final_median"])]
    return [(f"lr {lr}, median over seeds", fm) for lr, fm in summary["final_median_by_lr"].items()]


def cmd_plot(args) -> int:
    runs = args.run
    ref = args.reference
    if ref is not None and (Path(ref).is_dir() or (Path(ref).parent / "config.json").is_file()):
        other = Path(ref).parent if Path(ref).is_file() else Path(ref)
        raise ConfigError(f"--reference {ref} is a run, not the authors' reference (a built-in name or a reference "
                          f"CSV); to draw runs side by side give them all: toybb plot {' '.join(runs)} {other}")
    metrics = list(args.metrics) if args.metrics else None
    labels = [l.strip() for l in args.labels.split(",")] if args.labels else None
    if len(runs) == 1 and metrics is None and labels is None:
        if args.out is not None or Path(runs[0]).is_dir():
            figure_path(args.out if args.out is not None else Path(runs[0]) / "dynamics.png")
        path = plot_dynamics(runs[0], args.out, attn_layer=args.attn_layer, resid_layer=args.resid_layer,
                             reference=ref)
    else:
        if args.attn_layer is not None or args.resid_layer is not None or ref is not None:
            raise ConfigError("--attn-layer, --resid-layer and --reference apply to one run's dynamics figure; "
                              "with several runs each is read in its own layers beside its matching reference")
        out = args.out or Path(runs[0]).parent / ("_vs_".join(Path(r).name for r in runs) + ".png")
        figure_path(out)
        path = plot_runs(runs, out, labels=labels, metrics=metrics)
    print(f"wrote {path}")
    return 0


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw the dynamics figure of a run folder, or several runs in one figure",
                       description="One run: its dynamics figure (RUN/dynamics.png). Several runs: one figure with "
                       "a median line and a min-max band per run, labelled by the settings in which they differ "
                       "(e.g. toybb plot runs/adam runs/sgd --out adam_vs_sgd.png).")
    p.add_argument("run", metavar="RUN", nargs="+", help="run folder(s) written by `toybb train`")
    p.add_argument("--out", metavar="FILE", help="image path (default: RUN/dynamics.png; several runs: "
                   "NAME1_vs_NAME2.png beside the first run)")
    p.add_argument("--labels", metavar="A,B", help="one label per run (default: the settings in which they differ)")
    p.add_argument("--metrics", metavar="NAMES", type=STRS, help="comma-separated metric names (the README's "
                   "vocabulary table, e.g. sink_attention,residual_peak; default: the dynamics figure's panels)")
    p.add_argument("--attn-layer", type=int, help="one run: layer for Attn<s> and ||Val<s>|| (default: 0, or 1 if deeper)")
    p.add_argument("--resid-layer", type=int, help="one run: layer after which ||Res<s>|| is read (default: 0)")
    p.add_argument("--reference", metavar="NAME", help="one run: draw this reference (a built-in name or a CSV) even "
                   "if the run's configuration differs, labelled as such (default: the matching built-in one, if any)")
    p.set_defaults(func=cmd_plot)


def add_sweep(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a sweep file (grid/list over config keys), grouped into vmapped programs",
        description="Expand a YAML/JSON sweep file (base + grid/list over dotted keys such as optim.lr, "
        "model.n_layers, seeds), train every group of runs that share shapes in one vmapped program "
        "(resumable: finished groups are skipped, others resume from their checkpoint) and write "
        "DIR/results.csv (one row per run x step) and DIR/groups/<group>/.")
    p.add_argument("file", metavar="FILE", help="sweep file (.yaml/.yml/.json)")
    p.add_argument("--out", metavar="DIR", required=True, help="sweep folder")
    add_distributed(p, "split the groups over the processes; process 0 writes the table")
    p.add_argument("--max-memory-gb", type=float, help="memory one group may use (default: detected)")
    p.add_argument("--dry-run", action="store_true", help="print the groups and their memory estimate, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="no dynamics.png per group")
    p.set_defaults(func=cmd_sweep, lock_out=False)  # run_sweep locks --out in process 0 (the others write groups)


def cmd_sweep(args) -> int:
    finite(args.max_memory_gb, "--max-memory-gb", positive=True)
    spec = load_sweep_file(args.file)
    plan = plan_sweep(spec, f"sweep file {args.file!r}")
    process = distributed_process(args)
    limit = None if args.max_memory_gb is None else int(min(args.max_memory_gb, 2.0**40) * 2**30)
    for g in plan.groups:
        check_memory(g.cfg, f"group {g.name}", limit)
    plan_doc(out_folder(args.out), plan)
    if process[0] == 0:
        print(f"toybb sweep: {len(plan.runs)} run(s) in {len(plan.groups)} group(s) -> {args.out}", flush=True)
    if args.dry_run:
        for g in plan.groups:
            print(f"{g.name}: {g.n_runs} runs, ~{estimate_group_bytes(g.cfg) / 2**20:.0f} MiB")
        return 0
    path = run_sweep(plan, args.out, progress=not args.no_progress, write_figure=not args.no_plot, process=process)
    if path is not None:
        print(f"wrote {path}")
    return 0
