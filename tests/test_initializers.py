"""Initializers read fan-in/fan-out from the (out, in) axes: variance vs closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm
from lamina import initializers as init

OUT, IN = 512, 128  # non-square, so swapping the axes changes every variance


@pytest.mark.parametrize(
    "make, variance, uniform",
    [
        (init.torch_linear, 1 / (3 * IN), True),
        (init.glorot_uniform, 2 / (IN + OUT), True),
        (init.xavier_uniform, 2 / (IN + OUT), True),
        (init.glorot_normal, 2 / (IN + OUT), False),
        (init.xavier_normal, 2 / (IN + OUT), False),
        (init.he_uniform, 2 / IN, True),
        (init.kaiming_uniform, 2 / IN, True),
        (init.he_normal, 2 / IN, False),
        (init.kaiming_normal, 2 / IN, False),
        (init.lecun_uniform, 1 / IN, True),
        (init.lecun_normal, 1 / IN, False),
        (lambda: init.normal(0.02), 0.02**2, False),
    ],
)
def test_variance_matches_closed_form(make, variance, uniform):
    W = np.asarray(make()(jax.random.key(3), (OUT, IN), jnp.float32), np.float64)
    assert W.shape == (OUT, IN)
    np.testing.assert_allclose(W.var(), variance, rtol=0.04)
    assert abs(W.mean()) < 0.05 * np.sqrt(variance)
    if uniform:
        bound = np.sqrt(3 * variance)
        assert np.abs(W).max() <= bound
        assert np.abs(W).max() > 0.99 * bound


def test_constants():
    np.testing.assert_array_equal(init.zeros(jax.random.key(0), (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.ones(jax.random.key(0), (2,)), np.ones(2))
    np.testing.assert_array_equal(init.constant(-1.5)(jax.random.key(0), (2,)), np.full(2, -1.5))


def test_torch_bias_bound():
    b = np.asarray(init.torch_bias(16)(jax.random.key(0), (4000,)))
    assert np.abs(b).max() <= 0.25 and np.abs(b).max() > 0.249
    np.testing.assert_allclose(b.var(), 0.25**2 / 3, rtol=0.06)


def test_dtype_is_respected():
    assert init.he_normal()(jax.random.key(0), (3, 2), jnp.bfloat16).dtype == jnp.bfloat16


def test_dense_uses_fan_in_of_in_axis(key):
    # He init on a (out=512, in=8) layer: variance 2/8, not 2/512.
    _, params = lm.Dense(512, w_init=init.he_normal()).init(key, (8,))
    np.testing.assert_allclose(np.var(np.asarray(params["W"])), 2 / 8, rtol=0.05)
