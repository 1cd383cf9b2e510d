"""The capture API shared by toy and pretrained models.

Sites are declared, with their shapes, in `toybb.models.sites` (embed, blocks.{l}.resid_post,
blocks.{l}.attn.pattern, ...). A request is an fnmatch pattern over these names (a pattern that
matches no site of the model is an error naming the closest ones), optionally with a reduction
computed inside the compiled function so the full tensor is never materialised on the host:
  "@norm"  L2 norm over the last axis         ("blocks.*.resid_post@norm" -> [batch, seq])
  "@key0"  the slice on key position 0         ("blocks.*.attn.pattern@key0" -> [batch, heads, q_seq])
  "@key1"  the slice on key position 1
  "@absmax" max |x| over the last axis and its argmax (two arrays: name@absmax, name@absmax_idx)
  "@qmean" mean over queries of a pattern      ("blocks.*.attn.pattern@qmean" -> [batch, heads, k_seq])
Modules pass every site through a `Tap` (capture + interventions); values are collected with
`nnx.capture`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.models.sites import NO_EDITS, Edits, ModelSites, SiteError, ablation_edits, resolve

REDUCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "norm": lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)),
    "key0": lambda x: x[..., 0],
    "key1": lambda x: x[..., 1],
    "absmax": lambda x: jnp.max(jnp.abs(x), axis=-1),
    "absmax_idx": lambda x: jnp.argmax(jnp.abs(x), axis=-1),
    "qmean": lambda x: jnp.mean(x.astype(jnp.float32), axis=-2),
}
_SEP = "__"  # stands for "@" in sown attribute names


@dataclass(frozen=True)
class Capture:
    """A static (hashable) set of requested capture sites."""

    sites: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        elif not isinstance(self.sites, tuple):
            object.__setattr__(self, "sites", tuple(self.sites))
        for s in self.sites:
            if not isinstance(s, str):
                raise SiteError(f"capture sites must be strings (site patterns), got {s!r}")
            base, _, red = s.partition("@")
            if "@" in s and red not in REDUCTIONS:  # 'embed@' too: not a silent whole capture
                raise SiteError(f"unknown capture reduction '@{red}' in {s!r}; known: {', '.join(sorted(REDUCTIONS))}")

    def __bool__(self) -> bool:
        return bool(self.sites)

    @classmethod
    def of(cls, request) -> "Capture":
        """A `Capture` from a request: a Capture, a site pattern or a sequence of them."""
        return request if isinstance(request, Capture) else cls(request)

    @lru_cache(maxsize=4096)
    def requests_for(self, name: str) -> tuple[str, ...]:
        """Reductions requested for site `name` ('' for the full tensor)."""
        out = []
        for s in self.sites:
            base, _, red = s.partition("@")
            if fnmatch.fnmatchcase(name, base):
                out.append(red)
                if red == "absmax":
                    out.append("absmax_idx")
        return tuple(dict.fromkeys(out))

    @lru_cache(maxsize=256)
    def check(self, sites: ModelSites) -> None:
        """Every requested pattern must match a site of the model (SiteError naming the closest)."""
        for s in self.sites:
            sites.match(s.partition("@")[0])

    def wants(self, name: str) -> bool:
        return bool(self.requests_for(name))

    def sow(self, module: nnx.Module, name: str, value: jax.Array) -> None:
        """Record `value` for site `name` on `module` under every requested reduction."""
        leaf = name.rsplit(".", 1)[-1]
        for red in self.requests_for(name):
            v = REDUCTIONS[red](value) if red else value
            module.sow(nnx.Intermediate, leaf + (_SEP + red if red else ""), v)


    def sow_reduced(self, module: nnx.Module, name: str, red: str, value: jax.Array) -> None:
        """Record `value`, already reduced by `red` elsewhere (e.g. key columns of blocked attention), as
        site `name@red`."""
        module.sow(nnx.Intermediate, name.rsplit(".", 1)[-1] + _SEP + red, value)


NO_CAPTURE = Capture()


class Tap(NamedTuple):
    """What a forward does at each site: apply the interventions (`Edits`), then capture."""

    capture: Capture = NO_CAPTURE
    edits: Edits = NO_EDITS

    def __bool__(self) -> bool:
        return bool(self.capture) or bool(self.edits)

    @staticmethod
    def of(sites: ModelSites, capture: Capture, edits, ablate, shape) -> "Tap":
        """The tap of one forward of a model with `sites` on inputs of `shape`: the capture checked against
        the sites, `Edit` specs resolved, `ablate` names ({"blocks.0.mlp"}) added as zero edits."""
        capture = Capture.of(capture)
        capture.check(sites)
        edits = resolve(sites, edits, tuple(shape))  # specs given straight to the model; `Edits` pass through
        if ablate:
            edits = edits + ablation_edits(sites, ablate, shape)
        return Tap(capture, edits)

    def __call__(self, module: nnx.Module, layer: int | None, kind: str, x: jax.Array) -> jax.Array:
        """Site `kind` of layer `layer` (None: a model-level site) with value x -> the edited x."""
        if self.edits.touches(kind):
            x = self.edits.apply(kind, layer, x)
        if self.capture:
            self.capture.sow(module, kind if layer is None else f"blocks.{layer}.{kind}", x)
        return x

    def part(self, module: nnx.Module, layer: int | None, kind: str, x: jax.Array, index: tuple) -> jax.Array:
        """Like calling the tap on x[index] (the real positions of a model with a sink slot), the edited
        part written back into x."""
        if not self:
            return x
        if self.edits.touches(kind):
            return x.at[index].set(self(module, layer, kind, x[index]))
        self(module, layer, kind, x[index])
        return x

    def editor(self, layer: int, kind: str, index: tuple = ()) -> Callable[[jax.Array], jax.Array] | None:
        """x -> x with this site's edits applied to x[index] (for edits inside the attention core), or None."""
        if not self.edits.touches(kind):
            return None
        if not index:
            return lambda x: self.edits.apply(kind, layer, x)
        return lambda x: x.at[index].set(self.edits.apply(kind, layer, x[index]))


NO_TAP = Tap()


def flatten_captured(state: Any) -> dict[str, jax.Array]:
    """nnx.capture's State -> {"blocks.0.attn.pattern": array, ...}."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        val = var.get_value() if hasattr(var, "get_value") else var.value
        if isinstance(val, tuple):  # sow appends; one call per forward
            val = val[-1]
        out[".".join(str(p) for p in path).replace(_SEP, "@")] = val
    return out


def run_with_capture(model: nnx.Module, *args, capture: Capture, edits=None, **kwargs
                     ) -> tuple[Any, dict[str, jax.Array]]:
    """Call `model(*args, capture=capture, **kwargs)`, returning (output, {site name: array}).
    edits: `Edit`s (or resolved `Edits`) applied inside the forward before capture (see
    `toybb.models.sites`); mean / patch edits run the model on their source first."""
    if edits is not None:
        edits = resolve_edits(model, edits, args[0])
    return capture_call(model, *args, capture=capture, edits=edits, **kwargs)


def capture_call(model: nnx.Module, *args, capture, edits=None, **kwargs) -> tuple[Any, dict[str, jax.Array]]:
    """`run_with_capture` for edits already resolved (`Edits`, e.g. inside a compiled function): nothing is
    resolved again; no edits (None or empty) calls the model without `edits=`."""
    if edits:
        kwargs["edits"] = edits
    out, state = nnx.capture(model, nnx.Intermediate)(*args, capture=Capture.of(capture), **kwargs)
    return out, flatten_captured(state)


def resolve_edits(model: nnx.Module, edits, tokens) -> Edits:
    """`Edit` specs -> `Edits` for `model` on inputs `tokens` [batch, seq] (runs the model on the sources
    of mean / patch edits). Pass the result to a jitted forward as `edits=`."""
    if isinstance(edits, Edits):
        return edits
    if not hasattr(model, "sites"):
        raise SiteError(f"{type(model).__name__} declares no sites; interventions need the toy transformer "
                        "or a pretrained model")
    shape = tuple(tokens.shape)

    def activations(names, source):
        _, cap = run_with_capture(model, jax.numpy.asarray(source), capture=Capture(tuple(names)))
        return cap

    return resolve(model.sites(), edits, shape, tokens=tokens, activations=activations)
