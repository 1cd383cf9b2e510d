"""Backend decisions, in one place: what toybb does differently on a CPU and on an accelerator.

Every CPU-only heuristic (micro-batches sized for the cache, run chunks, giving freed heap pages back
with `malloc_trim` in `release_host_memory`) asks `cpu_heuristics()`; the attention core asks
`fast_attention()` whether to use `jax.nn.dot_product_attention` where its options allow. Tests force either branch by monkeypatching these
functions (call them through the module, `device.cpu_heuristics()`, so the patch is seen).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toybb.errors import ConfigError


def backend() -> str:
    """The default JAX backend: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def cpu_heuristics() -> bool:
    """True when the compiled programs run on a CPU: micro-batches and run chunks sized for the CPU's
    caches (toybb.train.loop), `malloc_trim` after loading a checkpoint (toybb.llm.load). On an
    accelerator a step takes the whole batch and all runs at once, and device memory is not the C heap."""
    return backend() == "cpu"


def fast_attention() -> bool:
    """Whether the attention core uses `jax.nn.dot_product_attention` by default where the options allow
    (softmax, causal or sliding-window mask at default positions, nothing captured). Off on the CPU: there
    it is XLA's own einsum-softmax-einsum, no faster than the exact path (benchmarks/README.md,
    attention micro-benchmark); on a GPU it can be cuDNN's flash attention (see `fast_attention_impl`)."""
    return backend() != "cpu"


def fast_attention_impl(dtype) -> str:
    """`implementation` for `jax.nn.dot_product_attention`: "cudnn" (flash attention, which takes only
    16-bit inputs) on an NVIDIA GPU for bfloat16/float16 inputs, else "xla" (which honours
    `jax.default_matmul_precision`)."""
    if backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        if "nvidia" in jax.devices()[0].device_kind.lower():
            return "cudnn"
    return "xla"


def matmul_precision() -> str | None:
    """The float32 matmul precision in force where this is called (inside `jax.default_matmul_precision`
    or set globally): "highest", "tensorfloat32", "bfloat16", ... or None (the backend's default)."""
    from jax._src import config as _config

    return _config.default_matmul_precision.value


def release_host_memory() -> None:
    """Free what loading left behind: reference cycles holding the file reader (and its memory map), and
    the C heap's free pages (glibc's malloc_trim, on CPU backends only; a no-op elsewhere). Loading converts every
    tensor through transient numpy arrays, and compiling leaves XLA's scratch memory, which otherwise stay
    resident as free heap."""
    import gc

    gc.collect()
    if not cpu_heuristics():  # the weights live in device memory, not in the C heap
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def start_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None) -> tuple[int, int]:
    """Join a multi-host run (`jax.distributed.initialize`; arguments from SLURM or the TPU environment when
    None) and return (this process's index, the process count). On CPU hosts the collectives go through gloo.
    A failure is a ConfigError naming what to give."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; accelerators keep their own
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except Exception as e:  # no cluster environment found, coordinator unreachable, ...
        raise ConfigError(f"jax.distributed.initialize() failed ({str(e).splitlines()[0]}); run under srun or "
                          "on every TPU host, or give --coordinator, --num-processes and --process-id") from None
    return jax.process_index(), jax.process_count()
