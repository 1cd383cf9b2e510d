"""benchmarks/device_check.py --tiny: every row of the accelerator check runs at tiny sizes on the CPU and
prints one table of measured numbers (or "skipped: reason")."""

import pytest
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.py")


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1800)


@pytest.mark.slow  # every row of the GPU script on the CPU (2 min); run before a device session
def test_tiny_runs_every_row(tmp_path):
    out = tmp_path / "check.json"
    r = _run("--tiny", "--json", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())["rows"]}
    for name in ("matmul peak", "tests", "paper1", "paper1 MFU", "paper3-adam", "paper3-sgd", "paper3-relu",
                 "sweep4", "llm-tiny-32", "llm-tiny-64", "prec-highest", "prec-tf32", "prec-bf16", "total"):
        assert name in rows, (name, sorted(rows))
        res = rows[name]["result"]
        assert not res.startswith("FAILED"), (name, res)
        assert res.startswith("skipped: ") or re.search(r"\d", res), (name, res)  # a measurement or a reason
    assert re.search(r"\d+ passed", rows["tests"]["result"]) and "failed" not in rows["tests"]["result"]
    assert rows["paper1"]["loss_last"] < rows["paper1"]["loss_first"]
    assert rows["llm-tiny-64"]["probe_tokens_per_s"] > 0 and rows["llm-tiny-64"]["plain_tokens_per_s"] > 0
    # the one table on stdout, one line per row
    table = r.stdout
    assert "device check --tiny" in table and all(f"\n{n}" in table for n in ("paper1 ", "sweep4 ", "prec-bf16 "))


def test_full_size_refuses_a_cpu():
    r = _run("--only", "tests")  # full sizes on the CPU would take hours
    assert r.returncode == 2 and "use --tiny" in r.stderr


def test_tiny_pretrain_row(tmp_path):
    """The pretrain row (issue: the GPU configuration of `toybb pretrain`) at its tiny size: a measured rate, a
    held-out loss that falls, and the last evaluation's emergence metrics per layer."""
    out = tmp_path / "check.json"
    r = _run("--tiny", "--only", "pretrain", "--json", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    row = {row["check"]: row for row in json.loads(out.read_text())["rows"]}["pretrain"]
    assert row["tokens_per_s"] > 0 and row["seconds_training"] > 0, row
    assert re.search(r"held-out loss (\d+\.\d+) -> (\d+\.\d+)", row["result"]), row["result"]
    first, last = map(float, re.search(r"held-out loss (\d+\.\d+) -> (\d+\.\d+)", row["result"]).groups())
    assert last < first and row["heldout_loss"] == pytest.approx(last, abs=0.006)
    assert row["last_eval"]["step"] == "20"
    assert re.search(r"Sink\^eps \d\.\d\d/\d\.\d\d, attention on the first token \d\.\d\d/\d\.\d\d,", row["note"]), row["note"]
