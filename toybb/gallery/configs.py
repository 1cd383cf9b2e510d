"""The gallery's run configurations at two scales: `cpu` (minutes on 2 cores) and `paper` (SPEC §2 sizes,
for a GPU), and the equal-support bigram table of the theory runs."""

from __future__ import annotations

from pathlib import Path

from toybb.config import RunConfig, cpu_preset, paper_learning_rate, paper_preset
from toybb.errors import ConfigError
from toybb.task.bb import load_bigram_table
from toybb.task.build_bigram import mix_uniform, save_table

SCALES = ("cpu", "paper")


def base_config(scale: str) -> RunConfig:
    """The gallery's 1-layer softmax Adam run. cpu: the CPU default itself (d 64, sequence 64, so the
    active/dormant probe holds every non-trigger; batch 64, lr 4e-3, 5,000 steps, 4 seeds)."""
    if scale == "cpu":  # exactly `toybb train`'s default run, so runs/default can seed the cache
        return cpu_preset()
    if scale == "paper":
        return paper_preset().replace(train={"seeds": (0, 1, 2, 3), "ckpt_every": 1000})
    raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def small_config(scale: str, n_layers: int = 1) -> RunConfig:
    """The shorter runs of the 3-layer comparison and of the sink variants. cpu: d 64, sequence 64,
    batch 32, 2,000 steps, 2 seeds (Adam lr 4e-3 for 1 layer, 1e-3 for 3); paper: the SPEC §2 runs."""
    if scale == "cpu":
        return cpu_preset().replace(
            model={"n_layers": n_layers}, optim={"lr": 4e-3 if n_layers == 1 else 1e-3},
            train={"steps": 2000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 500,
                   "eval_schedule": ((20, 200), (50, 1000), (100, 0))})
    if scale == "paper":
        return paper_preset().replace(model={"n_layers": n_layers}, train={"seeds": (0, 1), "ckpt_every": 1000})
    raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def variant_configs(scale: str) -> dict[str, RunConfig]:
    """The sink variants, each beside the plain model of the same size: ReLU attention, no BOS (the first
    token should become the sink), a learned sink token (does it take the sink from the BOS?), and the
    explicit attention bias k', v' in the 3-layer model (the sink on BOS and the residual peak should
    disappear). The ReLU run uses the paper's 3e-3 at the paper scale. At the CPU scale the attention-bias
    pair is the CPU preset with 3 layers (batch 64, lr 4e-3, 1,500 steps): at the 3-layer comparison's
    1e-3 the bias does not take the sink within 2,000 steps (measured)."""
    one, three = small_config(scale, 1), small_config(scale, 3)
    relu_lr = paper_learning_rate(one.replace(model={"attention": "relu"})) if scale == "paper" else None
    if scale == "cpu":
        bias_plain = cpu_preset().replace(model={"n_layers": 3}, train={
            "steps": 1500, "seeds": (0, 1), "ckpt_every": 500, "eval_schedule": ((20, 200), (50, 1000), (100, 0))})
    else:
        bias_plain = three
    return {"1layer": one,
            "1layer_relu": one.replace(model={"attention": "relu"}, optim={"lr": relu_lr or one.optim.lr}),
            "1layer_no_bos": one.replace(task={"bos": False}),
            "1layer_sink_token": one.replace(model={"sink_token": True}),
            "3layer_bias_plain": bias_plain,
            "3layer_attn_bias": bias_plain.replace(model={"attn_bias": True}),
            "3layer_no_bos": bias_plain.replace(task={"bos": False})}


def peaks_sweep(scale: str) -> dict:
    """3-layer models: Adam vs SGD (SPEC lr 0.03) vs ReLU attention (Adam), one sweep of 3 groups."""
    base = small_config(scale, 3)
    lr = base.optim.learning_rate
    sections = base.to_dict()
    sections["train"].pop("seeds")
    return {"base": sections, "seeds": list(base.train.seeds), "list": [
        {"label": "Adam, softmax", "optim.name": "adam", "optim.lr": lr, "model.attention": "softmax"},
        {"label": "SGD, softmax", "optim.name": "sgd", "optim.lr": 0.03, "model.attention": "softmax"},
        {"label": "Adam, ReLU attention", "optim.name": "adam", "optim.lr": lr, "model.attention": "relu"},
    ]}


EQUAL_SUPPORT_MIX = 0.05  # weight of the uniform row mixed into every bigram row (theory/07, equal support)


def equal_support_path(table_dir: Path) -> Path:
    return Path(table_dir) / f"tinyshakespeare_mix{EQUAL_SUPPORT_MIX:g}.npz"


def equal_support_table(table_dir: Path) -> Path:
    """The Tiny Shakespeare table with every row mixed with the uniform distribution (weight
    EQUAL_SUPPORT_MIX), so all rows share one support; written once under `table_dir`."""
    p = equal_support_path(table_dir)
    if not p.is_file():
        save_table(mix_uniform(load_bigram_table("tinyshakespeare"), EQUAL_SUPPORT_MIX), p)
    return p


def theory_trained_configs(scale: str, table_dir: Path | None = None) -> dict[str, RunConfig]:
    """Runs fitted against the theory (theory/07): `tf3_adam`/`tf3_sgd`, 3-layer transformers (residual
    peak read after layer 0, sink and drain in layer 1; SPEC §3), Adam vs SGD (SPEC lr 0.03, momentum
    0.9); `tf1_long`, a 1-layer Adam run over a long horizon for the sink and drain rates; with
    `table_dir`, also `simple_equal_sgd`: the SimpleModel (SGD) on the equal-support table.
    cpu: d 64 for the 3-layer pair (at d 32 no peak forms), 5k steps; d 32 for the 30k-step 1-layer run."""
    if scale == "cpu":
        three = cpu_preset().replace(
            model={"n_layers": 3, "d_model": 64, "max_positions": 64}, task={"seq_len": 64},
            train={"steps": 5000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 1000,
                   "eval_schedule": ((25, 250), (100, 2000), (250, 0))})
        one = cpu_preset().replace(
            model={"d_model": 32, "max_positions": 32}, task={"seq_len": 32}, optim={"lr": 1e-3},
            train={"steps": 30_000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 5000,
                   "eval_schedule": ((20, 200), (100, 2000), (500, 0))})
    elif scale == "paper":
        three = paper_preset().replace(model={"n_layers": 3}, train={"seeds": (0, 1), "ckpt_every": 1000})
        one = paper_preset().replace(train={"steps": 100_000, "seeds": (0, 1), "ckpt_every": 5000})
    else:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    lr = 1e-3 if scale == "cpu" else 3e-4
    cfgs = {"tf3_adam": three.replace(optim={"name": "adam", "lr": lr}),
            "tf3_sgd": three.replace(optim={"name": "sgd", "lr": 0.03}),
            "tf1_long": one}
    if table_dir is not None:
        simple = cpu_preset().replace(
            model={"arch": "simple"}, task={"table": str(equal_support_path(table_dir))},
            optim={"name": "sgd", "lr": 0.5},
            train={"steps": 20_000 if scale == "cpu" else 100_000, "seeds": (0, 1), "ckpt_every": 5000,
                   "eval_schedule": ((20, 200), (100, 2000), (500, 0))})
        cfgs["simple_equal_sgd"] = simple
        # the same without weight decay (theory/03: decay caps the SGD sink logit at 1/2 W(2 sigma^2 / lam))
        cfgs["simple_equal_sgd_wd0"] = simple.replace(optim={"weight_decay": 0.0}, train={
            "steps": 6000 if scale == "cpu" else 100_000, "ckpt_every": 1000, "eval_schedule": ((100, 0),)})
    return cfgs
