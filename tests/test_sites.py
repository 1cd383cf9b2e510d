"""The declared site table and interventions at any site, on the toy model and every pretrained family."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.models.config import ModelConfig
from toybb.errors import ConfigError
from toybb.models.transformer import Transformer
from toybb.models.capture import Capture, resolve_edits, run_with_capture
from toybb.models.sites import Edit, SiteError

TOKS = jnp.asarray(np.random.RandomState(0).randint(0, 40, (2, 7)), jnp.int32)
B, T = TOKS.shape

_BASE = dict(vocab_size=41, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=24)
FAMILIES = {  # one tiny random config per pretrained family, with the family's distinctive options
    "llama": dict(arch="llama"),
    "qwen2": dict(arch="qwen2", qkv_bias=True),
    "olmo": dict(arch="olmo", norm="layer_noparam", clip_qkv=0.5, n_kv_heads=2),
    "olmo2": dict(arch="olmo2", placement="post", qk_norm="full"),
    "gpt2": dict(arch="gpt2", position="learned", norm="layer", mlp="plain", act="gelu_tanh", qkv_bias=True,
                 o_bias=True, mlp_bias=True, n_kv_heads=2, tie_embeddings=True),
    "gpt_neox": dict(arch="gpt_neox", parallel_residual=True, rope_dim=4, norm="layer", mlp="plain", act="gelu",
                     n_kv_heads=2),
    "gemma2": dict(arch="gemma2", placement="sandwich", norm_plus_one=True, attn_softcap=5.0, final_softcap=30.0,
                   embed_scale=True, sliding_window=4, layer_types=("sliding", "full"), act="gelu_tanh"),
    "gemma3": dict(arch="gemma3", placement="sandwich", norm_plus_one=True, qk_norm="head", embed_scale=True,
                   sliding_window=4, layer_types=("sliding", "full"), rope_local_theta=10.0, act="gelu_tanh"),
}


@pytest.fixture(scope="module")
def toy():
    return Transformer(ModelConfig(vocab_size=41, d_model=16, n_heads=2, n_layers=2, max_len=16), rngs=nnx.Rngs(0))


def _check_all_sites(model):
    logits, cap = run_with_capture(model, TOKS, capture=Capture("*"))
    sites = model.sites()
    assert set(cap) == set(sites.names())  # every declared site is captured, nothing undeclared
    for name, arr in cap.items():
        assert tuple(arr.shape) == sites.shape(name, B, T), name
    np.testing.assert_allclose(np.asarray(cap["logits"]), np.asarray(logits), atol=1e-6)
    return cap


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_site_of_each_pretrained_family(family):
    cap = _check_all_sites(Transformer(ModelConfig(**{**_BASE, **FAMILIES[family]}), rngs=nnx.Rngs(1)))
    # the residual stream is the sum of what the sub-layers add
    np.testing.assert_allclose(np.asarray(cap["blocks.1.resid_post"]),
                               np.asarray(cap["blocks.1.resid_mid"] + cap["blocks.1.mlp.out"]), atol=1e-4)
    if not FAMILIES[family].get("parallel_residual"):
        np.testing.assert_allclose(np.asarray(cap["blocks.0.resid_mid"]),
                                   np.asarray(cap["blocks.0.resid_pre"] + cap["blocks.0.attn.out"]), atol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"position": "rope", "n_kv_heads": 1}, {"attn_bias": True, "sink_token": True},
                                {"no_mlp": (1,), "no_attention": (0,)}])
def test_every_site_of_the_toy_model(kw):
    cfg = ModelConfig(vocab_size=41, d_model=16, n_heads=2, n_layers=2, max_len=16, **kw)
    cap = _check_all_sites(Transformer(cfg, rngs=nnx.Rngs(0)))
    if kw.get("sink_token"):  # the slot is a key of every real query besides the real keys and k'
        np.testing.assert_allclose(np.asarray(cap["blocks.1.attn.pattern"].sum(-1) + cap["blocks.1.attn.pattern_slot"]
                                              + cap["blocks.1.attn.pattern_bias"]), 1.0, atol=1e-5)


def test_unknown_site_names_the_closest(toy):
    with pytest.raises(SiteError, match=r"no site matches 'blocks.\*.attn.patern' \(closest: blocks.\*.attn.pattern"):
        run_with_capture(toy, TOKS, capture=Capture("blocks.*.attn.patern"))
    with pytest.raises(SiteError, match="no site matches 'blocks.5.resid_post'"):
        toy(TOKS, capture=Capture(("blocks.5.resid_post@norm",)))
    with pytest.raises(SiteError, match="hook_resid_post"):
        run_with_capture(toy, TOKS, capture=Capture(["blocks.0.hook_resid_post"]))  # lists are accepted too


def _cap(model, site, edits=None):
    return np.asarray(run_with_capture(model, TOKS, capture=Capture(site), edits=edits)[1][site])


def test_each_op_against_a_hand_computation(toy):
    site = "blocks.0.resid_post"
    x = _cap(toy, site)
    sel = np.zeros_like(x, bool)
    sel[:, 2, 3:5] = True  # position 2, features 3 and 4
    vec = np.arange(16, dtype=np.float32)
    for op, value, want in (("zero", None, 0.0), ("scale", 2.5, x * 2.5), ("set", 1.5, 1.5), ("add", 0.5, x + 0.5),
                            ("set", vec, np.broadcast_to(vec, x.shape))):
        got = _cap(toy, site, Edit(site, op, value=value, position=2, feature="3:5"))
        np.testing.assert_allclose(got, np.where(sel, want, x), rtol=1e-6, atol=1e-6, err_msg=op)
    # min_abs: only entries at least that large
    got = _cap(toy, site, Edit(site, "zero", min_abs=1.0))
    np.testing.assert_allclose(got, np.where(np.abs(x) >= 1.0, 0.0, x))
    # a value per selected feature
    got = _cap(toy, site, Edit(site, "set", value=[7.0, 8.0], feature=[3, 9]))
    want = x.copy()
    want[..., 3], want[..., 9] = 7.0, 8.0
    np.testing.assert_allclose(got, want)


def test_head_and_key_selectors_change_the_forward(toy):
    z = _cap(toy, "blocks.1.attn.z")
    zed = _cap(toy, "blocks.1.attn.z", Edit("blocks.1.attn.z", "zero", head=1))
    assert (zed[:, :, 1] == 0).all() and np.array_equal(zed[:, :, 0], z[:, :, 0])
    # zeroing a head's z equals zeroing its rows of W_O
    manual = nnx.clone(toy)
    wo = np.array(manual.blocks[1].attn.wo.get_value())
    wo[1] = 0.0
    manual.blocks[1].attn.wo.set_value(jnp.asarray(wo))
    np.testing.assert_allclose(np.asarray(toy(TOKS, edits=[Edit("blocks.1.attn.z", "zero", head=1)])),
                               np.asarray(manual(TOKS)), atol=1e-5)
    # all attention of head 0 on key 0: z of that head is the value at key 0
    edits = [Edit("blocks.0.attn.pattern", "set", value=1.0, head=0, key=0),
             Edit("blocks.0.attn.pattern", "zero", head=0, key="1:")]
    _, cap = run_with_capture(toy, TOKS, capture=Capture(("blocks.0.attn.z", "blocks.0.attn.v", "blocks.0.attn.pattern")),
                              edits=edits)
    np.testing.assert_allclose(np.asarray(cap["blocks.0.attn.z"])[:, :, 0],
                               np.broadcast_to(np.asarray(cap["blocks.0.attn.v"])[:, :1, 0], (B, T, 8)), atol=1e-6)
    assert np.asarray(cap["blocks.0.attn.pattern"])[:, 0, :, 0].min() == 1.0


def test_position_selectors(toy):
    x = _cap(toy, "embed")
    toks = TOKS.at[:, 4:].set(40).at[0, 2].set(40)  # token 40 first at position 2 in row 0, 4 in row 1
    got = np.asarray(run_with_capture(toy, toks, capture=Capture("embed"),
                                      edits=Edit("embed", "zero", position="first:40"))[1]["embed"])
    zero_rows = [np.flatnonzero((got[b] == 0).all(-1)).tolist() for b in range(B)]
    assert zero_rows == [[2], [4]]
    with pytest.raises(SiteError, match="token 39 is missing"):
        run_with_capture(toy, toks, capture=Capture(), edits=Edit("embed", "zero", position="first:39"))
    np.testing.assert_array_equal(_cap(toy, "embed", Edit("embed", "zero", position="bos"))[:, 1:], x[:, 1:])
    assert (_cap(toy, "embed", Edit("embed", "zero", position="last"))[:, -1] == 0).all()
    assert (_cap(toy, "embed", Edit("embed", "zero", position="2:4"))[:, 2:4] == 0).all()


def test_patching_with_own_activations_changes_nothing_and_clean_to_corrupted_moves_the_output(toy):
    base = np.asarray(toy(TOKS))
    same = run_with_capture(toy, TOKS, capture=Capture(), edits=Edit("blocks.*.resid_post", "patch", source=TOKS))[0]
    np.testing.assert_allclose(np.asarray(same), base, atol=1e-6)
    other = (TOKS + 1) % 41
    # patching the last residual stream from the other run gives the other run's output
    patched = run_with_capture(toy, TOKS, capture=Capture(), edits=Edit("blocks.1.resid_post", "patch", source=other))[0]
    np.testing.assert_allclose(np.asarray(patched), np.asarray(toy(other)), atol=1e-5)
    # only the patched position changes there (position 3 of layer 1's output)
    part = run_with_capture(toy, TOKS, capture=Capture(),
                            edits=Edit("blocks.1.resid_post", "patch", source=other, position=3))[0]
    diff = np.abs(np.asarray(part) - base).max(-1)
    assert (diff[:, 3] > 1e-4).all() and np.allclose(np.delete(diff, 3, axis=1), 0.0, atol=1e-6)


def test_mean_over_a_reference_batch(toy):
    ref = jnp.asarray(np.random.RandomState(3).randint(0, 40, (5, T)), jnp.int32)
    want = _cap(toy, "blocks.0.mlp.out") * 0 + np.asarray(
        run_with_capture(toy, ref, capture=Capture("blocks.0.mlp.out"))[1]["blocks.0.mlp.out"]).mean(0)
    _, cap = run_with_capture(toy, TOKS, capture=Capture("blocks.0.mlp.out"),
                              edits=Edit("blocks.0.mlp.out", "mean", source=ref))
    np.testing.assert_allclose(np.asarray(cap["blocks.0.mlp.out"]), want, atol=1e-5)


def test_ablate_is_a_zero_edit_of_the_sublayer_output(toy):
    a = np.asarray(toy(TOKS, ablate=frozenset({"blocks.0.mlp"})))
    b = np.asarray(toy(TOKS, edits=[Edit("blocks.0.mlp.out", "zero")]))
    np.testing.assert_array_equal(a, b)


def test_one_compilation_serves_every_head_and_layer(toy):
    import jax

    graphdef, state = nnx.split(toy)
    traces = []

    @jax.jit
    def f(state, edits):
        traces.append(1)
        return nnx.merge(graphdef, state)(TOKS, edits=edits)

    outs = [f(state, resolve_edits(toy, Edit("blocks.*.attn.z", "zero", layer=l, head=h), TOKS))
            for l in range(2) for h in range(2)]
    assert len(traces) == 1 and len({float(jnp.sum(o)) for o in outs}) == 4


@pytest.mark.parametrize("edit, match", [
    (Edit("blocks.*.attn.zz", "zero"), "no site matches"),
    (Edit("blocks.0.attn.z", "zero", head=2), r"head 2 is out of range \(0..1\)"),
    (Edit("blocks.0.resid_post", "zero", head=0), "selector head does not fit site resid_post"),
    (Edit("blocks.0.attn.v_out", "zero"), "read-only"),
    (Edit("blocks.0.resid_post", "set", value=np.ones(5)), "does not broadcast"),
    (Edit("blocks.0.resid_post", "patch", source=np.zeros((2, 5), np.int32)), "same shape"),
    (Edit("embed", "zero", layer=0), "has no layer"),
])
def test_bad_edits_are_one_line_errors(toy, edit, match):
    with pytest.raises(SiteError, match=match):
        run_with_capture(toy, TOKS, capture=Capture(), edits=edit)


def test_bad_edit_specs():
    with pytest.raises(ConfigError, match="unknown intervention op 'drop'"):
        Edit("embed", "drop")
    with pytest.raises(ConfigError, match="needs a value"):
        Edit("embed", "scale")
    with pytest.raises(ConfigError, match="needs source token ids"):
        Edit("embed", "patch")
    with pytest.raises(SiteError, match="position selector 'middle'"):  # refused when built, not when used
        Edit("embed", "zero", position="middle")


def test_position_schemes_work_on_both_families():
    """ALiBi (once toy-only) on a pretrained model, the sink cache (once pretrained-only) on the toy model."""
    llm = Transformer(ModelConfig(**{**_BASE, "arch": "llama", "position": "alibi"}), rngs=nnx.Rngs(1))
    full = np.asarray(llm(TOKS))
    np.testing.assert_allclose(np.asarray(llm(TOKS[:, :4])), full[:, :4], atol=1e-5)  # causal
    assert not np.allclose(full, np.asarray(Transformer(ModelConfig(**{**_BASE, "arch": "llama", "position": "none"}), rngs=nnx.Rngs(1))(TOKS)))
    cfg = ModelConfig(vocab_size=41, d_model=16, n_heads=2, n_layers=1, max_len=16, position="rope", sink_cache=(1, 3))
    pat = _cap(Transformer(cfg, rngs=nnx.Rngs(0)), "blocks.0.attn.pattern")
    seen = pat[0, 0] > 0
    assert seen[6, 0] and seen[6, 4:7].all() and not seen[6, 1:4].any()  # the first key and the last 3
    with pytest.raises(ConfigError, match="sink cache"):
        ModelConfig(sink_cache=(1, 0))


def test_the_documented_site_table_is_what_the_modules_declare():
    """The table in `toybb.models.sites` documents the sites the modules declare where they emit them."""
    import re

    import toybb.models.sites as S
    from toybb.models.attention import Attention
    from toybb.models.trunk import MLP, Block

    documented = set()
    for row in S.__doc__.splitlines():
        if row.startswith("| `"):
            documented |= {re.sub(r"^blocks\.\{l\}\.", "", n) for n in re.findall(r"`([^`]+)`", row.split("|")[1])}
    declared = set(Transformer.SITES) | set(Block.SITES) | set(Attention.SITES) | set(MLP.SITES)
    assert documented == declared
