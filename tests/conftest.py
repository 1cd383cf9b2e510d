import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache folder shared by the tests that run the same tiny programs in
    this process and in `toybb` subprocesses (tests/_shared.py: persistent_compile_cache, cache_env)."""
    return tmp_path_factory.mktemp("xla_cache")
