"""Figure gallery: the registry names every figure; figures render from a tiny trained run with
labelled axes (the gallery's own runs are far too long for a test)."""

from pathlib import Path

import numpy as np
import pytest

from toybb import gallery as F
from toybb import style
from toybb.cli import main
from toybb.train.loop import train

from _shared import TINY, trainer


def test_registry_lists_the_gallery(capsys):
    expected = {"dynamics_1layer", "interventions", "residual_peaks", "active_dormant", "attention_maps", "theory"}
    assert expected <= set(F.FIGURES)
    assert all(f.caption.endswith(")") or f.caption.endswith(".") for f in F.FIGURES.values())
    assert main(["figures", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in expected)


def test_register_figure_rejects_duplicates():
    with pytest.raises(ValueError, match="twice"):
        F.register_figure("theory", "again")(lambda ctx: [])


def test_unknown_figure_or_scale_is_one_line_exit_2(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "unknown figure(s) ['nope']" in capsys.readouterr().err
    assert main(["figures", "--out", str(tmp_path), "--scale", "huge"]) == 2
    assert "unknown scale" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(TINY, run, progress=False, write_figure=False, trainer=trainer(TINY))

    class Ctx(F.FigureContext):  # every panel reads the tiny 2-layer run
        def one_layer(self):
            return run

        def peaks(self):
            return run.parent, {"Adam, softmax": run, "SGD, softmax": run}

        def variant(self, name):
            return run

    return Ctx(tmp_path_factory.mktemp("figs"), log=lambda s: None)


@pytest.mark.parametrize("name", ["interventions", "residual_peaks", "active_dormant", "attention_maps", "sink_variants"])
def test_figure_renders_with_labelled_axes(tiny_ctx, monkeypatch, name):
    seen = []
    real = style.save

    def save(fig, path):
        for ax in fig.axes:
            if ax.get_title():  # data panels (colour bars have none)
                seen.append((ax.get_title(), ax.get_xlabel(), ax.get_ylabel()))
        return real(fig, path)

    monkeypatch.setattr(style, "save", save)
    paths = F.FIGURES[name].make(tiny_ctx)
    assert len(paths) == 1 and paths[0].suffix == ".png"
    assert 5_000 < paths[0].stat().st_size < 300_000
    assert seen and all(x and y for _, x, y in seen), seen
    import matplotlib.image

    img = matplotlib.image.imread(paths[0])
    assert img.ndim == 3 and np.std(img[..., :3]) > 0.05  # not blank


def test_cached_figures_reuse_a_finished_run_and_copy_its_files(tmp_path):
    """Figures drawn by another experiment (LLM probes, long context): a cached run folder is copied, not
    made again; a missing file runs the experiment's library function into the cache."""
    ctx = F.FigureContext(tmp_path / "out", "cpu", tmp_path / "runs", progress=False, log=lambda s: None)
    run = tmp_path / "runs" / "cpu_demo"
    run.mkdir(parents=True)
    (run / "a.png").write_bytes(b"png")
    made = []
    got = ctx.cached("demo", {"a.png": "demo_a.png"}, made.append)
    assert got == [tmp_path / "out" / "demo_a.png"] and got[0].read_bytes() == b"png" and not made
    got = ctx.cached("demo", {"b.png": "demo_b.png"}, lambda d: made.append(d) or (d / "b.png").write_bytes(b"b"))
    assert made == [run] and got[0].read_bytes() == b"b"
    assert {"probe_smollm2", "longctx_toy"} <= set(F.FIGURES)


def test_pretrain_figure_trains_what_the_default_command_trains(tmp_path, monkeypatch):
    """The gallery's pretraining figure is `toybb pretrain --out DIR --bb-run <the 1-layer BB run>`: the same
    configuration and model as the command's defaults, the figure drawn with the BB curves beside it (also
    from a cached run that is finished but has no figure)."""
    from types import SimpleNamespace

    import toybb.commands.pretrain as cmd
    import toybb.gallery.pretrain as G

    seen = {}
    fake = SimpleNamespace(train=np.zeros(4, np.int32), distinct=3)

    def capture(who):
        def pretrain(cfg, model, data, out, progress, write_figure, bb_run=None, write=True):
            seen[who] = (cfg, model)
            return {"step": cfg.steps, "heldout_loss": 0.0, "tokens_per_second": 1.0, "seconds_training": 0.0}
        return pretrain

    def plot(out, bb_run):
        seen["plot"] = bb_run
        (Path(out) / "emergence.png").write_bytes(b"png")

    for mod, who in ((cmd, "command"), (G, "gallery")):
        monkeypatch.setattr(mod, "prepare_data",
                            lambda cfg, d, **kw: (Path(d).mkdir(parents=True, exist_ok=True), fake, None)[1:])
        monkeypatch.setattr(mod, "pretrain", capture(who))
    monkeypatch.setattr(G, "plot_emergence", plot)
    bb = tmp_path / "bb"

    class Ctx(F.FigureContext):
        def one_layer(self):
            return bb

    assert main(["pretrain", "--out", str(tmp_path / "cmd"), "--no-progress"]) == 0
    paths = F.FIGURES["pretrain_emergence"].make(Ctx(tmp_path / "out", runs=tmp_path / "runs", log=lambda s: None))
    assert [p.name for p in paths] == ["pretrain_emergence_cpu.png"] and paths[0].read_bytes() == b"png"
    assert seen["gallery"] == seen["command"] and seen["plot"] == bb
