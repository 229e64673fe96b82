"""LayerNorm against the NumPy formula (as torch.nn.LayerNorm computes it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lamina as lm


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_matches_numpy(key, wrap):
    layer = lm.LayerNorm()
    out_shape, params = layer.init(key, (3, 6))
    assert out_shape == (3, 6)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "offset": jnp.linspace(-1.0, 1.0, 6)}
    x = jax.random.normal(jax.random.key(1), (3, 6)) * 4 + 2
    xn = np.asarray(x, np.float64)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    ref = ref * np.asarray(params["scale"]) + np.asarray(params["offset"])
    np.testing.assert_allclose(wrap(layer.apply)(params, x), ref, rtol=1e-5, atol=1e-5)


def test_init_is_ones_and_zeros(key):
    _, params = lm.LayerNorm().init(key, (4,))
    np.testing.assert_array_equal(params["scale"], np.ones(4))
    np.testing.assert_array_equal(params["offset"], np.zeros(4))


def test_keeps_low_precision_dtype(key):
    _, params = lm.LayerNorm().init(key, (4,))
    assert lm.LayerNorm().apply(params, jnp.ones(4, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.slow
def test_gradients(key, x64):
    layer = lm.LayerNorm()
    _, params = layer.init(key, (5,))
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jnp.asarray([0.1, 2.0, -1.0, 0.5, 0.3], jnp.float64)
    check_grads(lambda p, x: jnp.sum(layer.apply(p, x) * jnp.arange(5.0)), (p, x), order=1, modes=["rev"])


def test_errors(key):
    _, params = lm.LayerNorm().init(key, (4,))
    with pytest.raises(ValueError, match=r"LayerNorm\(\): expected input with last dimension 4 \(scale has shape \(4,\)\), got x with shape \(5,\)"):
        lm.LayerNorm().apply(params, jnp.ones(5))
    with pytest.raises(ValueError, match=r"LayerNorm\(\): expected params \{'scale'"):
        lm.LayerNorm().apply({"W": 1}, jnp.ones(4))
    with pytest.raises(ValueError, match=r"LayerNorm: eps must be > 0"):
        lm.LayerNorm(eps=0)
