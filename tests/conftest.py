import jax
import pytest

# Silent broadcasting hides shape bugs; make it an error in every test.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
