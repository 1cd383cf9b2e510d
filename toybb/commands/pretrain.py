"""`toybb pretrain`: train a language model of the one model from scratch on real text, and record the
emergence of the extreme-token phenomena as it trains (`toybb.pretrain`).

Everything is checked before anything compiles: the flags, the model config (`--model-set FIELD=VALUE` for
any `ModelConfig` field), the run folder, the text (empty or binary), the tokenizer's vocabulary and the
sequence length. Bad input gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
from jax.experimental import multihost_utils

from toybb.cliargs import INTS, STRS, add_distributed, add_list, distributed_process
from toybb.config import OPTIMIZERS, PRECISIONS
from toybb.errors import ConfigError
from toybb.pretrain.config import (COSINE_FINAL, DEFAULT_MODEL, SCHEDULES, PretrainConfig, build_model_config,
                                   parse_model_set)
from toybb.llm.pretrain_folder import parse_bos
from toybb.pretrain.data import given_tokenizer, prepare_data
from toybb.pretrain.loop import pretrain
from toybb.pretrain.runs import check_pretrain_folder
from toybb.records import folder_lock
from toybb.texts import BUILTINS
from toybb.train.runs import is_run_folder

D = PretrainConfig()


def add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain a language model from scratch on text and record the emergence of sinks",
        description="Train a byte-level BPE tokenizer and a Llama-style model (any ModelConfig field via "
        "--model-set) on --text, data parallel over every device, and write to --out: config.json (the full "
        "config, precision, versions), tokenizer.json, metrics.csv (held-out loss and per-layer sink attention, "
        "Sink^eps, value and residual norms of the first token against the others, massive-activation ratio, "
        "kurtosis at each evaluation step), series/step_N.npz at log-spaced steps (toybb.load(DIR, step=N)), "
        "checkpoint.npz, summary.json and emergence.png. Rerunning the command resumes.")
    p.add_argument("--out", metavar="DIR", required=True, help="run folder")
    g = p.add_argument_group("data")
    add_list(g, "--text", STRS, D.text, f"text SOURCEs: files, folders, .jsonl files (field 'text') or built-in "
             f"corpora ({', '.join(BUILTINS)})", metavar="SOURCE")
    g.add_argument("--max-chars", type=int, default=D.max_chars, help="read at most this many characters")
    g.add_argument("--vocab-size", type=int, default=None,
                   help=f"tokens of the byte-level BPE tokenizer trained on --text (default: {D.vocab_size})")
    g.add_argument("--tokenizer", metavar="TOKENIZER", default=None,
                   help="use this tokenizer instead of training one: a tokenizer.json, or a checkpoint (a Hugging Face "
                   "folder, a .gguf file, an offline model's name, a pretrain folder); the vocabulary is its size, "
                   "--bos token its BOS")
    g.add_argument("--bos", default=D.bos,
                   help="first token of every sequence: token (<|bos|>), none, or fixed:ID")
    g.add_argument("--heldout", type=float, default=D.heldout, help="fraction of the token stream held out")
    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, default=DEFAULT_MODEL["n_layers"], help="number of layers")
    g.add_argument("--d-model", type=int, default=DEFAULT_MODEL["d_model"], help="residual width")
    g.add_argument("--heads", type=int, default=DEFAULT_MODEL["n_heads"], help="attention heads per layer")
    g.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any ModelConfig field (repeatable), e.g. attention=relu, n_kv_heads=2, mlp_dim=256, "
                   "arch=gpt2; the value is read as JSON, else as a string")
    g = p.add_argument_group("training")
    g.add_argument("--seq-len", type=int, default=D.seq_len, metavar="N", help="positions per sequence, BOS included")
    g.add_argument("--batch", type=int, default=D.batch, help="sequences per step (a multiple of the devices)")
    g.add_argument("--steps", type=int, default=D.steps, help="training steps")
    g.add_argument("--optimizer", default=D.optimizer, help=f"{', '.join(OPTIMIZERS)} (toybb.train.optim)")
    g.add_argument("--lr", type=float, default=D.lr, help="learning rate (the peak, with a warmup or a schedule)")
    g.add_argument("--warmup", type=int, default=D.warmup, help="steps of linear warmup from 0 to --lr")
    g.add_argument("--schedule", default=D.schedule, choices=SCHEDULES,
                   help=f"learning rate after the warmup: {' or '.join(SCHEDULES)} (a cosine decay to {COSINE_FINAL:g} "
                   "x --lr at --steps)")
    g.add_argument("--weight-decay", type=float, default=D.weight_decay, help="weight decay")
    g.add_argument("--seed", type=int, default=D.seed, help="seed of the initialisation and the batches")
    g.add_argument("--precision", choices=tuple(PRECISIONS), default=D.precision, help="float32 matmul precision")
    g = p.add_argument_group("evaluations and checkpoints")
    g.add_argument("--eval-every", type=int, default=D.eval_every, help="steps between evaluations")
    g.add_argument("--eval-batch", type=int, default=D.eval_batch, help="sequences of the fixed held-out batch")
    g.add_argument("--ckpt-every", type=int, default=D.ckpt_every, help="steps between resume checkpoints")
    g.add_argument("--series-per-decade", type=int, default=D.series_per_decade,
                   help="checkpoints of the series per factor of 10 in steps (log-spaced)")
    add_list(g, "--series-steps", INTS, None, "the steps of the series instead (default: log-spaced)", metavar="STEPS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="no emergence.png")
    p.add_argument("--bb-run", metavar="RUN", help="a `toybb train` run folder whose sink attention, value drain and "
                   "residual peak emergence.png draws beside the pretraining curves")
    add_distributed(p, "train one model data parallel over every process's devices (the same flags, text and "
                    "--out, on a shared filesystem, in every process); process 0 writes the folder")
    p.set_defaults(func=cmd_pretrain, lock_out=False)  # process 0 locks --out (the others only read it)


def cmd_pretrain(args) -> int:
    vocab_size, bos, given = (D.vocab_size if args.vocab_size is None else args.vocab_size), args.bos, None
    if args.tokenizer is not None:  # its size, and its BOS first in every sequence
        if args.vocab_size is not None:
            raise ConfigError("--vocab-size and --tokenizer: a given tokenizer has its own size; give one of them")
        given, bos_id = given_tokenizer(args.tokenizer)
        vocab_size = given.get_vocab_size(with_added_tokens=True)
        if parse_bos(bos) == "token":
            if bos_id is None:
                raise ConfigError(f"--tokenizer {args.tokenizer} has no BOS token; give --bos fixed:ID or --bos none")
            bos = f"fixed:{bos_id}"
    cfg = PretrainConfig(
        text=tuple(args.text), max_chars=args.max_chars, vocab_size=vocab_size, tokenizer=args.tokenizer, bos=bos,
        seq_len=args.seq_len,
        batch=args.batch, steps=args.steps, optimizer=args.optimizer, lr=args.lr, warmup=args.warmup,
        schedule=args.schedule, weight_decay=args.weight_decay,
        seed=args.seed, eval_every=args.eval_every, eval_batch=args.eval_batch, heldout=args.heldout,
        ckpt_every=args.ckpt_every, series_per_decade=args.series_per_decade,
        series_steps=tuple(args.series_steps or ()), precision=args.precision)
    fields = {"n_layers": args.layers, "d_model": args.d_model, "n_heads": args.heads,
              "mlp_dim": 4 * args.d_model, **parse_model_set(tuple(args.model_set))}
    model = build_model_config(fields, cfg.vocab_size, cfg.seq_len)
    check_pretrain_folder(args.out, cfg, model)
    if args.bb_run is not None and not (is_run_folder(args.bb_run) and (Path(args.bb_run) / "metrics.csv").is_file()):
        raise ConfigError(f"--bb-run {args.bb_run}: not a `toybb train` run folder (config.json and metrics.csv)")
    pid, count = distributed_process(args)
    with contextlib.ExitStack() as held:
        if pid == 0:  # one writer of the folder
            held.enter_context(folder_lock(args.out))
        data, tok = prepare_data(cfg, Path(args.out), write=pid == 0, given=given)
        if count > 1:  # every process must train on the same tokens
            digest = hashlib.sha256(tok.backend.to_str().encode() + data.train.tobytes()).digest()
            multihost_utils.assert_equal(np.frombuffer(digest, np.uint8), "the processes' tokenizers or token "
                                         "streams differ: give every process the same --text, --max-chars and --out")
        if pid == 0:
            print(f"toybb pretrain: {model.n_layers} layers x d_model {model.d_model}, vocabulary {cfg.vocab_size}, "
                  f"{data.train.size:,} training tokens ({data.distinct:,} distinct), {cfg.steps} steps of "
                  f"{cfg.batch} x {cfg.seq_len}" + (f" on {count} processes" if count > 1 else "") + f" -> {args.out}",
                  flush=True)
        s = pretrain(cfg, model, data, args.out, progress=not args.no_progress and pid == 0,
                     write_figure=not args.no_plot, bb_run=args.bb_run, write=pid == 0)
    if pid == 0:
        print(f"step {s['step']}: held-out loss {s['heldout_loss']:.4f}, {s['tokens_per_second'] or 0:,.0f} "
              f"tokens/s ({s['seconds_training']:.0f} s training)")
    return 0
