"""Atomic checkpoints of a training state (or of any pytree of arrays): every leaf of the pytree as one array
of an .npz file, with the step and the leaf count, checked leaf by leaf against the state a config expects
when read back. Written by `toybb.train` and `toybb.pretrain`, read by them and by `toybb.llm`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import CheckpointError
from toybb.records import atomic_write

CKPT_NAME = "checkpoint.npz"  # the state a run folder resumes from


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at `path` without reading its arrays; None if missing or unreadable
    (loading it then says what is wrong)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["__step__"])
    except Exception:
        return None


def save_checkpoint(path: Path, state, step: int) -> None:
    """Write the leaves of `state` and `step` to `path` (atomically: a reader sees the old file or the new)."""
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["__step__"] = np.array(step, np.int64)
    arrays["__n_leaves__"] = np.array(len(leaves), np.int64)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: Path, template):
    """(state shaped like `template` (a pytree of arrays or ShapeDtypeStructs), step) from `path`; a
    missing, unreadable or mismatching file is a CheckpointError saying what to do."""
    leaves, treedef = jax.tree.flatten(template)
    try:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["__n_leaves__"])
            step = int(z["__step__"])
            if n != len(leaves):
                raise CheckpointError(
                    f"checkpoint {path} holds {n} arrays but this config needs {len(leaves)}; "
                    "it was written by a different model or optimiser: use another --out"
                )
            new = []
            for i, t in enumerate(leaves):
                a = z[f"leaf_{i:05d}"]
                if a.shape != t.shape or a.dtype != t.dtype:
                    raise CheckpointError(
                        f"checkpoint {path}: array {i} has shape {a.shape} {a.dtype}, expected {t.shape} {t.dtype}; "
                        "it does not match this config: use another --out"
                    )
                new.append(a)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to start over") from None
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in new]), step
