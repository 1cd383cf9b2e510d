"""SimpleModel: the reduced one-layer model of SPEC §4, trainable on the BB task by the core loop.

Structure (residual width = vocabulary size; embeddings and unembedding are frozen identities):
  x_i = e_{tok_i}                                     frozen one-hot embedding
  attention logits of query i on key j <= i (one head):
    non-trigger query token v:  logit on key 0 (BOS) = y_bos[v]      (trainable), all others 0
    trigger query token v:      logit on key i-1     = y_prev[v]     (trainable), all others 0
  value state of key j: W_O v_j = COPY_SCALE * e_{tok_j}   frozen for non-BOS keys (the copy map
                                                        that makes the back-copy possible; these are
                                                        the context-dependent values z of SPEC §4)
                        W_O v_BOS = s                  trainable [vocab] (the BOS value; centred over
                                                        the characters, 0 on BOS/delimiter: see sink_value)
  MLP on the one-hot input: relu(x W_in) W_out         (trainable)
  output logits = x + attn_out + mlp_out               (resid_post, unembedding = identity)

The attention output is computed in O(seq * vocab) from a running sum of the values (all keys but
BOS and the previous position carry logit 0); the full logits/pattern [batch, 1, q, k] are only
built when a capture asks for them. This closed form is the theory's model, not a configuration of the
transformer; it declares its sites like every model (same names as the transformer's, so probes, capture
and interventions work unchanged): embed, blocks.0.resid_pre | resid_mid | resid_post,
blocks.0.attn.logits | pattern | v_out (read-only: the closed form does not use them) | out,
blocks.0.mlp.hidden | out, final_norm, logits. Edits act at any other site.

The trigger set and BOS id are not part of ModelConfig: by default they are those of the default task
(BBTask(n_triggers=3): the three most frequent characters, BOS = 65); pass `triggers=` / `bos_id=`
for another task. Trainable: y_bos, y_prev [vocab], s [vocab], the MLP; d_model is not used.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.models.config import ModelConfig
from toybb.errors import ConfigError
from toybb.models.capture import NO_CAPTURE, NO_TAP, Capture, Tap
from toybb.models.sites import NO_EDITS, RESID, Edits, ModelSites, declared
from toybb.task import BBTask

DEFAULT_N_TRIGGERS = 3
COPY_SCALE = 10.0  # frozen non-BOS value states COPY_SCALE * e_tok: back-copy floor ~ 66 e^-10 nats


@lru_cache(maxsize=8)
def default_task_ids(n_triggers: int = DEFAULT_N_TRIGGERS, table: str = "tinyshakespeare") -> tuple[tuple[int, ...], int]:
    """(trigger ids, BOS id) of the BB task with these settings."""
    task = BBTask(n_triggers=n_triggers, table=table)
    return tuple(int(t) for t in task.triggers), int(task.bos_id)


def _uniform(rngs: nnx.Rngs, shape, fan_in: int) -> nnx.Param:
    b = fan_in**-0.5
    return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -b, b))


class SimpleAttention(nnx.Module):
    """Per-query-token sink / previous-position logits and per-token value states."""

    # the closed form never forms the pattern: logits and pattern are computed for capture only
    SITES = {"attn.logits": ("batch", "head", "pos", "key"), "attn.pattern": ("batch", "head", "pos", "key"),
             "attn.v_out": ("batch", "pos", "head", "d_model"), "attn.out": RESID}
    READ_ONLY = frozenset({"attn.logits", "attn.pattern", "attn.v_out"})

    def __init__(self, vocab: int, bos_id: int, *, rngs: nnx.Rngs):
        self.vocab, self.bos_id = vocab, bos_id
        self.bos_logit = nnx.Param(jnp.zeros((vocab,), jnp.float32))  # y_v for non-trigger queries
        self.prev_logit = nnx.Param(jnp.zeros((vocab,), jnp.float32))  # trigger queries' logit on i-1
        # the BOS value s, N(0, 1/vocab) per entry (norm ~ 1)
        self.bos_value = nnx.Param(jax.random.normal(rngs.params(), (vocab,), jnp.float32) * vocab**-0.5)

    def sink_value(self) -> jax.Array:
        """s [vocab]: the parameter centred over the output support (the characters, ids < BOS) and 0 on
        BOS / delimiter. Shifting s by a constant never changes the output distribution (softmax), so
        this is the function-preserving gauge in which ||s|| is the theory's ||s - mean s|| (theory/03);
        without it Adam's per-coordinate steps move the invisible mean and the never-target coordinates."""
        u = self.bos_value[...]
        sup = jnp.arange(self.vocab) < self.bos_id
        mean = jnp.sum(jnp.where(sup, u, 0.0)) / jnp.sum(sup)
        return jnp.where(sup, u - mean, 0.0)

    def values(self) -> jax.Array:
        """[vocab, vocab] value states W_O v per token: COPY_SCALE * identity with row BOS = s."""
        eye = COPY_SCALE * jnp.eye(self.vocab, dtype=jnp.float32)
        return eye.at[self.bos_id].set(self.sink_value())

    def __call__(self, tokens, trig, tap: Tap = NO_TAP):
        """tokens [b, t] int, trig [b, t] bool -> attention output [b, t, vocab] (site attn.out)."""
        b, t = tokens.shape
        vals = self.values()[tokens]  # [b, t, V]  (W_O v_j per position)
        pos = jnp.arange(t)[None, :]
        a = self.bos_logit[...][tokens]
        p = self.prev_logit[...][tokens]
        has_prev = trig & (pos >= 1)
        # logit on key 0 and on key i-1 (only for trigger queries with i >= 2; at i = 1 the previous
        # position is key 0 itself and gets the trigger logit there)
        l0 = jnp.where(trig, jnp.where(pos == 1, p, 0.0), a)
        lp = jnp.where(has_prev & (pos >= 2), p, 0.0)
        m = jnp.maximum(jnp.maximum(l0, lp), 0.0)
        w0, wp, w1 = jnp.exp(l0 - m), jnp.exp(lp - m), jnp.exp(-m)  # weights of key 0, key i-1, the rest
        extra_p = (pos >= 2).astype(jnp.float32)  # key i-1 is distinct from key 0
        csum = jnp.cumsum(vals, axis=1)  # sum_{j <= i} value_j
        prev_vals = jnp.concatenate([vals[:, :1], vals[:, :-1]], axis=1)
        num = (w1[..., None] * (csum - vals[:, :1] - extra_p[..., None] * prev_vals)
               + w0[..., None] * vals[:, :1] + (extra_p * wp)[..., None] * prev_vals)
        n_rest = (pos + 1 - 1 - extra_p).astype(jnp.float32)  # keys other than 0 and i-1
        den = w1 * n_rest + w0 + extra_p * wp
        out = num / den[..., None]
        cap, prefix = tap.capture, "blocks.0.attn"
        if cap.wants(f"{prefix}.logits") or cap.wants(f"{prefix}.pattern"):
            k = jnp.arange(t)[None, None, :]
            q = pos[..., None]
            logits = jnp.where(k == 0, l0[..., None], 0.0)
            logits = jnp.where((k == q - 1) & (q >= 2), lp[..., None], logits)
            logits = jnp.where(k <= q, logits, -jnp.inf)[:, None]  # [b, 1, q, k]
            tap(self, 0, "attn.logits", logits)
            tap(self, 0, "attn.pattern", jax.nn.softmax(logits, axis=-1))
        tap(self, 0, "attn.v_out", vals[:, :, None, :])
        return tap(self, 0, "attn.out", out)


class SimpleMLP(nnx.Module):
    SITES = {"mlp.hidden": ("batch", "pos", "d_mlp"), "mlp.out": RESID}

    def __init__(self, vocab: int, hidden: int, *, rngs: nnx.Rngs):
        self.w_in = _uniform(rngs, (vocab, hidden), vocab)
        self.w_out = _uniform(rngs, (hidden, vocab), hidden)

    def __call__(self, tokens, tap: Tap = NO_TAP):
        h = tap(self, 0, "mlp.hidden", jax.nn.relu(self.w_in[...][tokens]))  # one-hot input: a row of W_in
        return tap(self, 0, "mlp.out", h @ self.w_out[...])


class SimpleBlock(nnx.Module):
    SITES = {"resid_pre": RESID, "resid_mid": RESID, "resid_post": RESID}

    def __init__(self, cfg: ModelConfig, bos_id: int, *, rngs: nnx.Rngs):
        V = cfg.vocab_size
        self.attn = SimpleAttention(V, bos_id, rngs=rngs) if cfg.has_attention(0) else None
        self.mlp = SimpleMLP(V, cfg.mlp_dim, rngs=rngs) if cfg.mlp_kind(0) != "none" else None


class SimpleModel(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, triggers: tuple[int, ...] | None = None,
                 bos_id: int | None = None):
        if cfg.n_layers != 1:
            raise ConfigError(f"the simple model (model.arch = simple) has exactly one layer; got model.n_layers = "
                              f"{cfg.n_layers} (use --layers 1)")
        if cfg.attention != "softmax":
            raise ConfigError(f"the simple model has softmax attention only; got model.attention = {cfg.attention!r}")
        if cfg.mlp_kind(0) == "linear":
            raise ConfigError("the simple model has a ReLU MLP or none (model.no_mlp); linear_mlp is not supported")
        self.cfg = cfg
        d_trig, d_bos = default_task_ids()
        trig = d_trig if triggers is None else tuple(int(t) for t in triggers)
        bos = d_bos if bos_id is None else int(bos_id)
        if any(not 0 <= t < cfg.vocab_size for t in (*trig, bos)):
            raise ConfigError(f"trigger ids {trig} / BOS id {bos} out of range for a vocabulary of {cfg.vocab_size}")
        self.triggers, self.bos_id = trig, bos  # static (hashable) metadata
        self.blocks = nnx.List([SimpleBlock(cfg, bos, rngs=rngs)])

    def trigger_mask(self, tokens: jax.Array) -> jax.Array:
        m = jnp.zeros((self.cfg.vocab_size,), bool).at[jnp.array(self.triggers, jnp.int32)].set(True)
        return m[tokens]

    SITES = {"embed": RESID, "final_norm": RESID, "logits": ("batch", "pos", "vocab")}

    def sites(self) -> ModelSites:
        """The model's sites, as its modules declare them (`toybb.models.sites`); the residual width is the
        vocabulary. Attention logits and pattern are read-only: the closed form does not use them."""
        block, V = self.blocks[0], self.cfg.vocab_size
        parts = [(SimpleBlock, ("resid_pre", "resid_mid", "resid_post"))]
        if block.attn is not None:
            parts.append((SimpleAttention, tuple(SimpleAttention.SITES)))
        if block.mlp is not None:
            parts.append((SimpleMLP, tuple(SimpleMLP.SITES)))
        table = declared([(SimpleModel, tuple(self.SITES))], None) + declared(parts, 0)
        return ModelSites(1, (("head", 1), ("kv_head", 1), ("d_head", V), ("d_model", V), ("d_mlp", self.cfg.mlp_dim),
                              ("vocab", V)), table, SimpleAttention.READ_ONLY)

    def __call__(self, tokens: jax.Array, *, capture: Capture = NO_CAPTURE, edits: Edits = NO_EDITS,
                 ablate: frozenset[str] = frozenset()) -> jax.Array:
        """tokens [batch, seq] -> logits [batch, seq, vocab]; capture, edits and ablate as for
        `toybb.models.transformer.Transformer` (the sites of `sites()`)."""
        tap = Tap.of(self.sites(), capture, edits, ablate, tokens.shape)
        V = self.cfg.vocab_size
        block = self.blocks[0]
        x = tap(self, None, "embed", jax.nn.one_hot(tokens, V, dtype=jnp.float32))
        x = tap(block, 0, "resid_pre", x)
        h = x
        if block.attn is not None:
            h = x + block.attn(tokens, self.trigger_mask(tokens), tap)
        h = tap(block, 0, "resid_mid", h)
        if block.mlp is not None:
            h = h + block.mlp(tokens, tap)
        h = tap(block, 0, "resid_post", h)
        return tap(self, None, "logits", tap(self, None, "final_norm", h))
