import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run: pytest-xdist workers and the `toybb`
# subprocesses the tests start inherit it, so a program compiled once (the tiny train step, the
# SmolLM2 forward) is loaded from disk everywhere else. Same executable, same numbers; the folder is
# removed when the run ends. Set JAX_COMPILATION_CACHE_DIR yourself to keep one between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="toybb-test-xla-")
    os.environ["TOYBB_TEST_OWNS_XLA_CACHE"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Hypothesis draws the same examples in every run (derandomized): CI is repeatable, and a failure is found again by
# rerunning. Run with TOYBB_HYPOTHESIS_RANDOM=1 to search new examples.
if not os.environ.get("TOYBB_HYPOTHESIS_RANDOM"):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("toybb", derandomize=True)
    _hypothesis_settings.load_profile("toybb")


def pytest_sessionfinish(session):
    if os.environ.get("TOYBB_TEST_OWNS_XLA_CACHE") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)



# The longest files first: each file runs whole on one worker (--dist loadfile), in collection order, so a long
# file collected last would run alone at the end.
LONGEST_FIRST = ("test_phenomena.py", "test_theory_experiment.py", "test_forward.py", "test_pretrain.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
