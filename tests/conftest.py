import os
import shutil
import tempfile

# The suite compiles thousands of tiny programs and runs each a few times:
# XLA's quickest compile (no LLVM optimisation passes) takes the suite's time
# down by a third and changes no result. Set before JAX starts its backend;
# subprocesses (examples, the 8-device suite) inherit it.
os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]).strip()

# One compilation cache for the run, shared by the pytest-xdist workers and
# the subprocesses (examples, the killed and resumed runs), which compile the
# same programs. Made here by the first process, empty, so every run starts
# cold; removed when that process ends.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lamina-tests-jax-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# Silent broadcasting hides shape bugs; make it an error in every test.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def allow_rank_promotion():
    """Implicit broadcasting allowed: the benchmarks' other libraries rely on it, as users' code does."""
    with jax.numpy_rank_promotion("allow"):
        yield


@pytest.fixture
def x64():
    """Float64 inside the test: finite differences need it to be exact enough."""
    from lamina._src.testing.case import enable_x64  # here: lamina.testing loads lazily

    with enable_x64(True):
        yield


def pytest_ignore_collect(collection_path, config):
    # tests/multidevice needs 8 devices, which only a process started with
    # XLA_FLAGS=--xla_force_host_platform_device_count=8 has; test_sharding.py
    # runs it in such a subprocess.
    if "multidevice" in collection_path.parts and jax.device_count() < 8:
        return True
    return None
