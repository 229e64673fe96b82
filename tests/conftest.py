import jax
import pytest

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
    from lamina._src.testing.check import enable_x64  # here: lamina.testing loads lazily

    with enable_x64(True):
        yield


def pytest_ignore_collect(collection_path, config):
    # tests/multidevice needs 8 devices, which only a process started with
    # XLA_FLAGS=--xla_force_host_platform_device_count=8 has; test_sharding.py
    # runs it in such a subprocess.
    if "multidevice" in collection_path.parts and jax.device_count() < 8:
        return True
    return None
