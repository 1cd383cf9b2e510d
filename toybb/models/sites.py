"""The declared site table of toybb's models, and interventions at any site.

Every activation a model exposes is a *site*, named the same way on the toy models and on every
pretrained family. Each module declares the sites it emits, with their axes, where it emits them (the
`SITES` of `Transformer`, `Block`, `MLP`, `Attention`, the SimpleModel's modules); a model's `sites()`
collects them into its `ModelSites`. Per-layer sites carry the prefix `blocks.{l}.`:

| site | axes | what |
|---|---|---|
| `embed` | batch, pos, d_model | token (+ learned position) embedding, scaled as the model does |
| `blocks.{l}.resid_pre` / `resid_mid` / `resid_post` | batch, pos, d_model | residual stream before the block, after its attention, after its MLP |
| `blocks.{l}.attn.q_pre` / `attn.k_pre` | batch, pos, head / kv_head, d_head | queries / keys before any rotary embedding (after q/k norm) |
| `blocks.{l}.attn.q` / `attn.k` | batch, pos, head / kv_head, d_head | queries / keys as the attention sees them (after RoPE) |
| `blocks.{l}.attn.v` | batch, pos, kv_head, d_head | values |
| `blocks.{l}.attn.logits` | batch, head, pos, key | pre-softmax scores (after scale, soft-cap and position bias) |
| `blocks.{l}.attn.pattern` | batch, head, pos, key | attention weights (0 on masked keys) |
| `blocks.{l}.attn.z` | batch, pos, head, d_head | attention-weighted values per head |
| `blocks.{l}.attn.v_out` | batch, pos, head, d_model | W_O^h v_t per head and position, not weighted by attention (read-only; not TransformerLens' hook_result) |
| `blocks.{l}.attn.out` | batch, pos, d_model | what the attention adds to the residual stream |
| `blocks.{l}.mlp.hidden` | batch, pos, d_mlp | MLP hidden activations (after the nonlinearity / gate) |
| `blocks.{l}.mlp.out` | batch, pos, d_model | what the MLP adds to the residual stream |
| `final_norm` | batch, pos, d_model | the final norm's output |
| `logits` | batch, pos, vocab | output logits |

Models with a sink that is not an input token (toy `model.attn_bias`, `model.sink_token`) add sites of
their own; every other site then covers the real positions only:
| `blocks.{l}.attn.pattern_bias` | batch, head, pos | attention on the learned key k' (read-only) |
| `blocks.{l}.attn.pattern_slot` | batch, head, pos | attention on the learned sink slot (read-only) |
| `embed_slot`, `blocks.{l}.resid_pre_slot` / `resid_mid_slot` / `resid_post_slot`, `final_norm_slot` | batch, d_model | the residual stream at the slot |

An `Edit` names a site (a pattern such as `blocks.*.attn.z`), an operation and selectors:
- op: `zero`; `scale` (by `value`); `set` (to `value`, broadcast to the site); `add` (`value`); `mean`
  (the site's mean over a reference batch, `source`); `patch` (the site's activation in another run,
  `source` tokens of the same shape: activation patching).
- selectors: `layer` (int, list, "a:b" slice), `head`, `position` (int, list, slice, "bos" = position 0,
  "first:ID" = the first occurrence of token ID in each sequence, "last"), `key` (pattern/logits
  only), `feature` (the last axis of residual, MLP and head-output sites), `min_abs` (only entries with
  |x| >= min_abs, e.g. massive activations).
Selectors, values and sources become arrays (`Edits`), so one compilation serves every layer, head,
position or value of the same structure. Edits are applied inside the compiled forward, in order,
before the site is captured; an edit of `attn.logits` or `attn.pattern` changes the attention output.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ArgumentTypeError, ConfigError
from toybb.names import renamed_site

RESID = ("batch", "pos", "d_model")
SLOT = ("batch", "d_model")
OPS = ("zero", "scale", "set", "add", "mean", "patch")


class SiteError(ConfigError):
    """A site name, selector or edit that does not fit the model."""


@dataclass(frozen=True)
class ModelSites:
    """The concrete sites of one model, as its modules declare them (each module class names the sites it
    emits and their axes in `SITES`, the read-only ones in `READ_ONLY`), and the sizes of their axes
    (`pos` and `key` are the input's)."""

    n_layers: int
    size_items: tuple  # ((axis name, size), ...) for head, kv_head, d_head, d_model, d_mlp, vocab
    table: tuple  # ((site name, axes), ...) in the order the forward emits them
    read_only: frozenset = frozenset()  # site kinds computed for inspection, not used by the forward

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.size_items)

    def names(self) -> dict[str, tuple[str, ...]]:
        """{concrete site name: axes}."""
        return dict(self.table)

    def shape(self, name: str, batch: int, seq: int) -> tuple[int, ...]:
        """The documented shape of site `name` for an input [batch, seq]."""
        sizes = dict(self.sizes, batch=batch, pos=seq, key=seq)
        return tuple(sizes[a] for a in self.names()[name])

    def match(self, pattern: str) -> list[str]:
        """Concrete sites matching an fnmatch pattern; none is a SiteError naming the closest sites."""
        names = self.names()
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            hint = renamed_site(pattern)
            raise SiteError(f"no site matches {pattern!r}" + (f" ({hint})" if hint else _closest(pattern, names))
                            + "; the sites are listed in toybb.models.sites")
        return hits


def declared(modules_and_kinds, layer: int | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """((site name, axes), ...) of the site kinds `kinds` each module class declares in its `SITES`, named
    for `layer` (None: model-level sites)."""
    out = []
    for cls, kinds in modules_and_kinds:
        out += [(_name(k, layer), cls.SITES[k]) for k in kinds]
    return tuple(out)


def _closest(pattern: str, names) -> str:
    generic = sorted({re.sub(r"^blocks\.\d+\.", "blocks.*.", n) for n in names})
    close = difflib.get_close_matches(re.sub(r"^blocks\.\d+\.", "blocks.*.", pattern), generic, n=3, cutoff=0.4)
    return f" (closest: {', '.join(close)})" if close else ""


def split_name(name: str) -> tuple[int | None, str]:
    """'blocks.3.attn.z' -> (3, 'attn.z'); 'embed' -> (None, 'embed')."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


# ---------------------------------------------------------------------------------------------------
# interventions


@dataclass(frozen=True)
class Edit:
    """One intervention: `op` at the sites matching `site`, on the selected entries (see module doc).
    value: a number or array (scale/set/add). source: token ids [batch, seq] of the reference run
    (mean: averaged over its batch; patch: the same shape as the edited input)."""

    site: str
    op: str
    value: Any = None
    layer: Any = None
    head: Any = None
    position: Any = None
    key: Any = None
    feature: Any = None
    min_abs: float | None = None
    source: Any = field(default=None, compare=False)

    def __post_init__(self):  # every field checked here, not when the edit is first used
        if not isinstance(self.site, str) or not self.site.strip():
            raise ArgumentTypeError(f"Edit site must be a site pattern such as 'blocks.*.attn.z', got "
                                    f"{self.site!r:.60}")
        if not isinstance(self.op, str) or self.op not in OPS:
            raise SiteError(f"unknown intervention op {self.op!r:.60}; use one of {', '.join(OPS)}")
        if self.op in ("scale", "set", "add") and self.value is None:
            raise SiteError(f"op {self.op!r} needs a value (e.g. value=0.5)")
        if self.op in ("mean", "patch") and self.source is None:
            raise SiteError(f"op {self.op!r} needs source token ids (the reference run's input)")
        for name in ("value", "min_abs"):
            v = getattr(self, name)
            if v is not None and not _of_kind(v, jnp.number):
                raise ArgumentTypeError(f"Edit {name} must be a number or a numeric array, got {v!r:.60}")
        if self.min_abs is not None and np.ndim(self.min_abs) != 0:
            raise ArgumentTypeError(f"Edit min_abs must be one number, got an array of shape {np.shape(self.min_abs)}")
        for name in ("layer", *(n for n, _ in _SELECTORS)):
            check_selector(getattr(self, name), name)


def _of_kind(v, kind) -> bool:
    """v is a number or an array (NumPy, JAX, a nested list) whose dtype is a `kind` (jnp.number, jnp.integer)."""
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
    except (ValueError, TypeError):  # a ragged list
        return False
    return bool(jnp.issubdtype(dtype, kind))


_SELECTOR_TEXT = {True: re.compile(r"bos|first|last|first:\d+|-?\d*:-?\d*(:-?\d+)?|-?\d+(,-?\d+)*"),
                  False: re.compile(r"-?\d*:-?\d*(:-?\d+)?|-?\d+(,-?\d+)*")}  # position or another selector


def check_selector(sel, what: str) -> None:
    """A selector: None, an integer, integers (a list or an array), a slice, or its text (see the module doc)."""
    if sel is None or isinstance(sel, slice) or isinstance(sel, (list, tuple)) and not sel:
        return
    if isinstance(sel, str):
        if not _SELECTOR_TEXT[what == "position"].fullmatch(sel.strip()):
            raise SiteError(f"{what} selector {sel!r:.60}: use an integer, a list 'a,b', a slice 'a:b'"
                            + (", 'bos', 'last' or 'first:TOKEN_ID'" if what == "position" else ""))
        return
    if not _of_kind(sel, jnp.integer) or np.ndim(sel) > 1:
        raise ArgumentTypeError(f"Edit {what} must be an integer, a list of integers, a slice or a text such as "
                                f"'0:2', got {sel!r:.60}")


@jax.tree_util.register_pytree_node_class
class Edits:
    """Resolved edits: per edit, the static (site kind, op, axes, which selectors) and dynamic arrays
    (layer mask [n_layers] or None, per-axis masks, min_abs, value). Pass to a model as `edits=`."""

    def __init__(self, static: tuple = (), arrays: tuple = ()):
        self.static, self.arrays = static, arrays

    def tree_flatten(self):
        return self.arrays, self.static

    @classmethod
    def tree_unflatten(cls, static, arrays):
        return cls(static, tuple(arrays))

    def __bool__(self) -> bool:
        return bool(self.static)

    def __add__(self, other: "Edits") -> "Edits":
        return Edits(self.static + other.static, self.arrays + other.arrays)

    def touches(self, kind: str) -> bool:
        return any(s[0] == kind for s in self.static)

    def apply(self, kind: str, layer: int | None, x: jax.Array) -> jax.Array:
        """x (site `kind` of layer `layer`) with every edit of that site applied in order."""
        for (k, op, axes, sel), (lmask, masks, min_abs, value) in zip(self.static, self.arrays):
            if k != kind:
                continue
            m = jnp.ones((), bool) if lmask is None else lmask[layer if layer is not None else 0]
            for ax, mask in zip(sel, masks):
                m = m & _along(mask, axes, ax, x.ndim)
            if min_abs is not None:
                m = m & (jnp.abs(x) >= min_abs.astype(x.dtype))
            if value is not None and lmask is not None and value.ndim == x.ndim + 1:
                value = value[layer]  # per-layer values (mean / patch over several layers)
            if op == "zero":
                new = jnp.zeros_like(x)
            elif op == "scale":
                new = x * value.astype(x.dtype)
            elif op == "add":
                new = x + value.astype(x.dtype)
            else:  # set, mean, patch
                new = jnp.broadcast_to(value.astype(x.dtype), x.shape)
            x = jnp.where(m, new, x)
        return x


NO_EDITS = Edits()


def _along(mask: jax.Array, axes: tuple[str, ...], ax: str, ndim: int) -> jax.Array:
    """A selector mask reshaped to broadcast against a site with `axes`. Position masks are [batch, pos]
    (batch may be 1); the others are 1-D over their axis."""
    if ax == "pos":
        i = axes.index("pos")
        shape = [1] * ndim
        shape[0], shape[i] = mask.shape
        return mask.reshape(shape)
    shape = [1] * ndim
    shape[axes.index(ax)] = mask.shape[0]
    return mask.reshape(shape)


def selector_mask(sel, n: int, what: str, tokens: np.ndarray | None = None) -> np.ndarray:
    """A selector -> boolean mask [n] (positions with token-dependent selectors: [batch, n])."""
    check_selector(sel, what)
    if isinstance(sel, str):
        s = sel.strip()
        if what == "position" and s in ("bos", "first"):
            sel = 0
        elif what == "position" and s == "last":
            sel = n - 1
        elif what == "position" and s.startswith("first:"):
            if tokens is None:
                raise SiteError(f"position {sel!r} needs the input tokens")
            tok = int(s.split(":", 1)[1])
            hit = np.asarray(tokens) == tok
            if not hit.any(axis=1).all():
                raise SiteError(f"position {sel!r}: token {tok} is missing from some sequences")
            return np.eye(n, dtype=bool)[hit.argmax(axis=1)]
        elif re.fullmatch(r"-?\d*:-?\d*(:-?\d+)?", s):
            parts = [int(p) if p else None for p in s.split(":")]
            sel = slice(*parts)
        else:  # a list 'a,b' (the syntax is checked above)
            sel = [int(p) for p in s.split(",")]
    mask = np.zeros(n, bool)
    if isinstance(sel, slice):
        mask[sel] = True
        if not mask.any():
            raise SiteError(f"{what} slice {sel} selects nothing of 0..{n - 1}")
        return mask
    for i in np.atleast_1d(np.asarray(sel)).tolist():
        if not isinstance(i, int) or not -n <= i < n:
            raise SiteError(f"{what} {i!r} is out of range (0..{n - 1})")
        mask[i] = True
    return mask


_SELECTORS = (("head", "head"), ("position", "pos"), ("key", "key"), ("feature", None))


def resolve(sites: ModelSites, edits, tokens_shape: tuple[int, int], tokens=None, activations=None) -> Edits:
    """Edit specs -> `Edits` for inputs of shape [batch, seq]. `activations(site_pattern, source)` returns
    {site name: array} of the model run on `source` (needed by mean / patch)."""
    if isinstance(edits, Edits):
        return edits
    if isinstance(edits, Edit):
        edits = [edits]
    batch, seq = tokens_shape
    out = NO_EDITS
    for e in edits:
        if not isinstance(e, Edit):
            raise SiteError(f"edits must be Edit objects, got {type(e).__name__}")
        names = sites.match(e.site)
        by_kind: dict[str, list[int | None]] = {}
        for n in names:
            l, k = split_name(n)
            by_kind.setdefault(k, []).append(l)
        for kind, layers in by_kind.items():
            out = out + _resolve_one(sites, e, kind, layers, batch, seq, tokens, activations)
    return out


def _resolve_one(sites, e: Edit, kind, layers, batch, seq, tokens, activations) -> Edits:
    if kind in sites.read_only:
        raise SiteError(f"site {kind} is read-only on this model (computed for inspection, not used by its "
                        "forward); edit attn.z, attn.v or attn.out instead")
    axes = sites.names()[_name(kind, layers[0])]
    sizes = dict(sites.sizes, batch=batch, pos=seq, key=seq)
    lmask = None
    if layers[0] is not None:
        chosen = np.zeros(sites.n_layers, bool)
        chosen[layers] = True
        if e.layer is not None:
            chosen &= selector_mask(e.layer, sites.n_layers, "layer")
            if not chosen.any():
                raise SiteError(f"layer {e.layer!r} selects no layer with site {kind}")
        lmask = jnp.asarray(chosen)
    elif e.layer is not None:
        raise SiteError(f"site {kind} has no layer; drop the layer selector")
    sel, masks, feat = [], [], None
    for name, ax in _SELECTORS:
        v = getattr(e, name)
        if v is None:
            continue
        ax = ax or axes[-1]
        if name == "head" and "kv_head" in axes:
            ax = "kv_head"
        if ax not in axes or (name == "feature" and ax in ("head", "kv_head", "pos", "key", "batch")):
            raise SiteError(f"selector {name} does not fit site {kind} (axes {', '.join(axes)})")
        m = selector_mask(v, sizes[ax], name if name != "head" else ax, tokens)
        if ax == "pos":
            m = m.reshape(-1, seq)
            if m.shape[0] not in (1, batch):
                raise SiteError(f"position selector gives {m.shape[0]} rows for a batch of {batch}")
        sel.append(ax)
        masks.append(jnp.asarray(m))
        if name == "feature":
            feat = np.flatnonzero(m)
    min_abs = None if e.min_abs is None else jnp.float32(e.min_abs)
    value = _value(sites, e, kind, layers, axes, batch, seq, activations, feat)
    return Edits(((kind, e.op, axes, tuple(sel)),), ((lmask, tuple(masks), min_abs, value),))


def _value(sites, e: Edit, kind, layers, axes, batch, seq, activations, feat=None):
    if e.op == "zero":
        return None
    if e.op in ("scale", "set", "add"):
        v = jnp.asarray(e.value, jnp.float32)
        n_feat = sites.sizes.get(axes[-1], seq)
        if feat is not None and v.ndim >= 1 and v.shape[-1] == len(feat) != n_feat:
            # one value per selected feature, in the order of the selector's sorted indices
            v = jnp.zeros(v.shape[:-1] + (n_feat,), jnp.float32).at[..., jnp.asarray(feat)].set(v)
        shape = sites.shape(_name(kind, layers[0]), batch, seq)
        if layers[0] is not None and v.ndim == len(shape) + 1:  # one value per layer: [n_layers, ...]
            if v.shape[0] != sites.n_layers:
                raise SiteError(f"per-layer value needs {sites.n_layers} rows, got {v.shape[0]}")
            shape = (sites.n_layers,) + tuple(np.broadcast_shapes(v.shape[1:], shape))
        try:
            fits = np.broadcast_shapes(v.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise SiteError(f"value of shape {v.shape} does not broadcast to site {kind} {shape}")
        return v
    if activations is None:
        raise SiteError(f"op {e.op!r} needs the model to run on the source; resolve it with "
                        "toybb.models.capture.resolve_edits")
    src = np.asarray(e.source)
    if src.ndim != 2:
        raise SiteError(f"source tokens must be [batch, seq], got shape {src.shape}")
    if e.op == "patch" and src.shape != (batch, seq):
        raise SiteError(f"patching needs a source run of the same shape: source {src.shape}, edited input "
                        f"{(batch, seq)}")
    if e.op == "mean" and src.shape[1] != seq and "pos" in axes:
        raise SiteError(f"mean over a reference batch needs its sequences to be as long as the input "
                        f"({seq}), got {src.shape[1]}")
    acts = activations([_name(kind, l) for l in layers], src)
    per = [acts[_name(kind, l)] for l in layers]
    if e.op == "mean":
        per = [jnp.mean(a.astype(jnp.float32), axis=0, keepdims=True) for a in per]
    if layers[0] is None:
        return per[0]
    full = [jnp.zeros_like(per[0])] * sites.n_layers
    for l, a in zip(layers, per):
        full[l] = a
    return jnp.stack(full)  # [n_layers, ...]: the model takes value[l] at layer l


def _name(kind: str, layer: int | None) -> str:
    return kind if layer is None else f"blocks.{layer}.{kind}"


def ablation_edits(sites: ModelSites, ablate, shape) -> Edits:
    """`ablate` names ({"blocks.0.attn", "blocks.1.mlp"}) as zero edits of the sub-layers' outputs
    (`attn.out` / `mlp.out`: what they add to the residual stream)."""
    for name in ablate:
        if not re.fullmatch(r"blocks\.\d+\.(attn|mlp)", name):
            raise SiteError(f"ablate {name!r}: name a sub-layer, e.g. blocks.0.attn or blocks.1.mlp")
    return resolve(sites, [Edit(f"{name}.out", "zero") for name in sorted(ablate)], tuple(shape))


def residual_add(sites: ModelSites, delta: dict, shape) -> Edits:
    """{layer: [seq, d_model] or [batch, seq, d_model]} added to the residual stream after those blocks
    (positional-vector removal / replacement) as one `add` edit of `resid_post`."""
    if not delta:
        return NO_EDITS
    layers = sorted(int(l) for l in delta)
    first = jnp.asarray(delta[layers[0]], jnp.float32)
    full = jnp.zeros((sites.n_layers,) + (1,) * (3 - first.ndim) + first.shape, jnp.float32)
    for l in layers:
        full = full.at[l].set(jnp.asarray(delta[l], jnp.float32).reshape(full.shape[1:]))
    return resolve(sites, [Edit("blocks.*.resid_post", "add", value=full, layer=layers)], tuple(shape))


def value_scaling(sites: ModelSites, scale, shape) -> Edits:
    """scale [n_layers, seq]: multiplies the value vector of key t in layer l (0 removes that token's value
    there, the attention pattern unchanged) as one `scale` edit of `attn.v`."""
    scale = jnp.asarray(scale, jnp.float32)
    if scale.shape != (sites.n_layers, shape[1]):
        raise SiteError(f"value scale must have shape [n_layers, seq] = {(sites.n_layers, shape[1])}, got {scale.shape}")
    return resolve(sites, [Edit("blocks.*.attn.v", "scale", value=scale[:, None, :, None, None])], tuple(shape))
