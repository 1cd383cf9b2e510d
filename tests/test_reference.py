"""Built-in references (the authors' trajectories) and `toybb compare`."""

import csv
import sys

import pytest

from toybb.cli import main
from toybb.config import paper_preset
from toybb.reference import REFERENCES, config_differences, load_reference, matching_reference



def test_packaged_tables_cover_the_paper_numbers():
    one = load_reference("one_layer_adam")
    i = {s: k for k, s in enumerate(one.steps)}
    # SPEC §3 reference trajectory (step: Attn<s>, ||W_O v<s>||, ||Res<s>||, back-copy risk)
    for step, attn, val, res in ((0, 0.023, 5.2, 24.4), (200, 0.22, 8.7, 28.3), (1000, 0.78, 3.5, 27.0),
                                 (10_000, 0.81, 1.42, 72)):
        row = i[step]
        assert one.values["sink_attention_l0"][row] == pytest.approx(attn, rel=0.05)
        assert one.values["value_drain_l0"][row] == pytest.approx(val, rel=0.05)
        assert one.values["residual_peak_l0"][row] == pytest.approx(res, rel=0.05)
    three = {n: load_reference(f"three_layer_{n}") for n in ("adam", "sgd", "relu_attention")}
    last = {n: t.values["residual_peak_l0"][list(t.steps).index(10_000)] for n, t in three.items()}
    assert last["adam"] == pytest.approx(141, rel=0.05) and last["sgd"] == pytest.approx(20, rel=0.1)


def test_builder_columns_come_from_the_vocabulary(tmp_path):
    """A packaged table, written back under the authors' column names (plus one they have that toybb does
    not define), rebuilds byte for byte: the builder's renaming is the vocabulary's `authors` field."""
    from toybb.names import METRICS
    from toybb.reference.build import convert

    packaged = REFERENCES["one_layer_adam"].path
    authors = {m.column(0): m.authors_columns[0] for m in METRICS if m.authors}
    rows = list(csv.reader(packaged.open()))
    src = tmp_path / "authors.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([rows[0][0], *(authors[c] for c in rows[0][1:]), "res_seq0_pos1"])
        w.writerows([*r, "1.0"] for r in rows[1:])
    convert(src, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_bytes() == packaged.read_bytes()


def test_reference_configs_match_the_paper_preset():
    paper = paper_preset()
    assert matching_reference(paper, 3e-4).name == "one_layer_adam"
    assert matching_reference(paper, 1e-3) is None
    three = paper.replace(model={"n_layers": 3})
    assert matching_reference(three.replace(optim={"name": "sgd", "lr": 0.03}), 0.03).name == "three_layer_sgd"
    assert matching_reference(three.replace(model={"attention": "relu"}), 3e-4).name == "three_layer_relu_attention"
    d = config_differences(REFERENCES["one_layer_adam"], paper.replace(model={"d_model": 64}), 3e-4)
    # the head width and the MLP width follow d_model
    assert d == ["model.d_model 64 (reference 256)", "model.head_dim 64 (reference 256)",
                 "model.mlp_dim 256 (reference 1024)"]
    assert config_differences(REFERENCES["one_layer_adam"], paper.replace(train={"precision": "tf32"}), 3e-4)


def _tiny_run(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--d-model", "16", "--seq-len", "8", "--batch", "8", "--eval-batch", "8", "--steps", "20",
            "--eval-every", "10", "--seeds", "2", "--no-progress", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("cmp"))


def _write_ref(path, rows, header=("step", "sink_attention_l0", "backcopy_risk", "not_a_toybb_metric")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_compare_hand_made_reference(tiny_run, tmp_path, capsys):
    run_rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    at10 = sorted(float(r["sink_attention_l0"]) for r in run_rows if r["step"] == "10")
    inside = (at10[0] + at10[1]) / 2
    ref = _write_ref(tmp_path / "ref.csv", [[0, 0.5, "", 1], [10, inside, 100.0, 1], [15, 0.3, 1.0, 1], [20, -1.0, 1.0, 1]])
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_run), "--reference", str(ref), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "configuration unknown" in text and "Attn<s>" in text
    rows = {(int(r["step"]), r["metric"]): r for r in csv.DictReader(open(out / "compare.csv"))}
    # steps both have (15 is not logged by the run); a reference cell left empty is skipped
    assert {s for s, _ in rows} == {0, 10, 20} and (0, "backcopy_risk") not in rows
    assert {m for _, m in rows} == {"sink_attention_l0", "backcopy_risk"}
    r = rows[(10, "sink_attention_l0")]
    assert r["inside"] == "True" and float(r["outside_rel"]) == 0 and int(r["seeds"]) == 2
    assert float(r["min"]) == pytest.approx(at10[0], rel=1e-6) and float(r["max"]) == pytest.approx(at10[1], rel=1e-6)
    r = rows[(10, "backcopy_risk")]  # far above the band: the relative distance to its upper edge
    assert r["inside"] == "False" and float(r["outside_rel"]) == pytest.approx((100 - float(r["max"])) / float(r["max"]), rel=1e-5)
    assert (out / "compare.png").stat().st_size > 10_000


def test_compare_refuses_another_configuration_unless_asked(tiny_run, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sys.exit(main(["compare", str(tiny_run)]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matches no reference" in err[0] and "one_layer_adam" in err[0]
    assert main(["compare", str(tiny_run), "--reference", "one_layer_adam", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "another configuration" in text and "model.d_model 16 (reference 256)" in text
    # the dynamics figure draws a reference only where asked (the run's configuration is not the paper's)
    assert main(["plot", str(tiny_run), "--reference", "one_layer_adam", "--out", str(tmp_path / "d.png")]) == 0


@pytest.mark.parametrize("case, needle", [
    ("unknown", "unknown reference"),
    ("missing", "does not exist"),
    ("no_step", "malformed"),
    ("text_cell", "not a number"),
    ("ragged", "malformed"),
    ("no_common_metric", "none of the metrics"),
])
def test_compare_bad_references_one_line_exit_2(case, needle, tiny_run, tmp_path, capsys):
    ref = {"unknown": "two_layer_lion", "missing": str(tmp_path / "absent.csv"),
           "no_step": str(_write_ref(tmp_path / "a.csv", [[1, 2]], header=("x", "y"))),
           "text_cell": str(_write_ref(tmp_path / "b.csv", [[0, "high", 1, 1]])),
           "ragged": str(_write_ref(tmp_path / "c.csv", [[0, 1]])),
           "no_common_metric": str(_write_ref(tmp_path / "d.csv", [[0, 1]], header=("step", "zzz")))}[case]
    with pytest.raises(SystemExit) as e:
        sys.exit(main(["compare", str(tiny_run), "--reference", ref, "--out", str(tmp_path / "o")]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_paper_preset_relu_uses_the_papers_learning_rate():
    from toybb.cli import make_parser
    from toybb.commands.train import build_config

    def cfg(*a):
        return build_config(make_parser().parse_args(["train", *a]))

    assert cfg("--preset", "paper", "--attention", "relu").learning_rates == (3e-3,)
    assert cfg("--preset", "paper", "--attention", "relu", "--layers", "3").learning_rates == (3e-4,)
    assert cfg("--preset", "paper", "--attention", "relu", "--lr", "1e-4").learning_rates == (1e-4,)
    assert cfg("--preset", "paper").learning_rates == (3e-4,)
    assert cfg("--preset", "paper").train.precision == "highest"
    assert cfg("--precision", "bf16").train.precision == "bf16"


def test_compare_pools_the_seeds_of_several_run_folders(tiny_run, tmp_path, capsys):
    import json
    import shutil

    other = tmp_path / "other_seeds"  # the same configuration, seeds 5 and 6 trained as another job
    shutil.copytree(tiny_run, other)
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    for r in rows:
        r["seed"] = str(int(r["seed"]) + 5)
        r["sink_attention_l0"] = "0.9"
    with open(other / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["train"]["seeds"] = [5, 6]
    (other / "config.json").write_text(json.dumps(meta))
    ref = _write_ref(tmp_path / "ref.csv", [[10, 0.5, 1, 1]])
    assert main(["compare", str(tiny_run), str(other), "--reference", str(ref), "--out", str(tmp_path / "o")]) == 0
    (row,) = [r for r in csv.DictReader(open(tmp_path / "o" / "compare.csv")) if r["metric"] == "sink_attention_l0"]
    assert int(row["seeds"]) == 4 and float(row["max"]) == pytest.approx(0.9)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the same seeds twice
        sys.exit(main(["compare", str(tiny_run), str(tiny_run), "--reference", str(ref), "--out", str(tmp_path / "o")]))
    assert e.value.code == 2 and "give each seed once" in capsys.readouterr().err
