import jax
import pytest

# Silent broadcasting hides shape bugs; make it an error in every test.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Float64 inside the test: finite differences need it to be exact enough."""
    # jax.enable_x64 replaced jax.experimental.enable_x64 (jax >= 0.7).
    enable = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
    with enable(True):
        yield
